"""The stream filter: never "not stored" for a stream that was added, rarely "maybe" for
one that was not.

A wrong negative would let a used id through idempotency, so every test that adds ids
checks that each of them is still reported, including ids that differ only in their
last digits (clients may number their ids) and ids added after the filter grew.
"""

from __future__ import annotations

import uuid

import pytest

from ledger.application.loading import StreamFilter

BASE = uuid.UUID("12345678-1234-4234-8234-000000000000").int


def sequential(first: int, n: int) -> list[uuid.UUID]:
    return [uuid.UUID(int=BASE + first + i) for i in range(n)]


@pytest.mark.parametrize("kind", ["random", "sequential"])
def test_every_added_id_may_be_stored_and_few_others_do(kind: str) -> None:
    n = 50_000
    streams = StreamFilter(n)
    added = [uuid.uuid4() for _ in range(n)] if kind == "random" else sequential(0, n)
    for t in added:
        streams.add_transfer(t)
    assert streams.transfers_maybe_stored(added) == set(added)
    assert all(streams.may_contain_transfer(t) for t in added)
    others = [uuid.uuid4() for _ in range(50_000)] if kind == "random" else sequential(n, 50_000)
    false_positives = len(streams.transfers_maybe_stored(others))
    assert false_positives / len(others) < 0.005  # about 1e-3 expected when full


def test_accounts_and_transfers_are_distinct_keys() -> None:
    streams = StreamFilter(1000)
    shared = [uuid.uuid4() for _ in range(1000)]
    for a in shared:
        streams.add_account(a)
    assert streams.accounts_maybe_stored(shared) == set(shared)
    assert len(streams.transfers_maybe_stored(shared)) < 20
    for t in shared:
        streams.add_transfer(t)
    assert streams.transfers_maybe_stored(shared) == set(shared)


def test_growing_past_capacity_keeps_every_id() -> None:
    streams = StreamFilter(100)
    added = sequential(0, 1000)
    for i, t in enumerate(added):
        streams.add_transfer(t)
        assert streams.may_contain_transfer(added[i // 2])
    assert streams.slices == 4  # 100 + 200 + 400 + 800 ids of capacity
    assert streams.capacity == 1500 and streams.count == 1000
    assert streams.transfers_maybe_stored(added) == set(added)
    assert streams.size_bytes == 8 * sum(-(-c * 24 // 64) for c in (100, 200, 400, 800))


def test_stream_ids_added_in_bulk_fill_slices_exactly_and_grow() -> None:
    streams = StreamFilter(10)
    first = sequential(0, 10)
    assert streams.add_stream_ids([f"transfer-{t}" for t in first]) == 10
    assert streams.slices == 1 and streams.count == 10  # full, and no empty slice after
    more = sequential(10, 25)
    accounts = [uuid.uuid4() for _ in range(5)]
    page = [f"transfer-{t}" for t in more] + [f"account-{a}" for a in accounts]
    assert streams.add_stream_ids(page) == 30
    assert streams.slices == 3 and streams.capacity == 70 and streams.count == 40
    assert streams.transfers_maybe_stored(first + more) == set(first + more)
    assert streams.accounts_maybe_stored(accounts) == set(accounts)


def test_stream_ids_from_the_store_are_the_same_keys_as_the_ids() -> None:
    streams = StreamFilter(1000)
    t, a, upper, braced = uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    added = streams.add_stream_ids(
        [
            f"transfer-{t}",
            f"account-{a}",
            f"transfer-{str(upper).upper()}",
            f"transfer-{{{braced}}}",
            "transfer-not-a-uuid",
            "$watermark",
            "saga-1",
        ]
    )
    assert added == 4
    assert streams.may_contain_transfer(t) and not streams.may_contain_account(t)
    assert streams.may_contain_account(a) and not streams.may_contain_transfer(a)
    assert streams.may_contain_transfer(upper) and streams.may_contain_transfer(braced)


def test_an_empty_filter_rules_everything_out() -> None:
    streams = StreamFilter(10)
    ids = [uuid.uuid4() for _ in range(100)]
    assert streams.transfers_maybe_stored(ids) == set()
    assert streams.accounts_maybe_stored(ids) == set()
    with pytest.raises(ValueError):
        StreamFilter(0)
