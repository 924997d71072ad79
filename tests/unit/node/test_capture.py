"""A snapshot capture keeps the state as of its watermark, however long it waits to be
turned into rows: the node takes the records' values under the state lock and builds the
rows later, on the thread that saves them, while the decider goes on changing the records."""

from __future__ import annotations

import uuid
from typing import Any

from ledger import domain
from ledger.adapters.memory import MemoryDatabase, MemoryEventStore
from ledger.application.cache import BookCache

NOW_US = 1_700_000_000_000_000


def decide(cache: BookCache, commands: list[domain.Command], now_us: int) -> None:
    for outcome in domain.decide_batch(cache.state, commands, now_us):
        assert outcome.status == "created", outcome.detail
        for event in outcome.events:
            cache.mark_dirty(event)


def usd(
    a: domain.OpenAccount, b: domain.OpenAccount, amount: int, **kw: Any
) -> domain.CreateTransfer:
    return domain.CreateTransfer(
        id=uuid.uuid4(),
        debit_account_id=a.id,
        credit_account_id=b.id,
        amount_minor=amount,
        ledger="USD",
        code=1,
        **kw,
    )


def test_rows_are_the_state_at_the_capture_not_when_they_are_built() -> None:
    cache = BookCache(MemoryEventStore("t", MemoryDatabase()))
    a, b = (
        domain.OpenAccount(id=uuid.uuid4(), ledger="USD", code=1, metadata={"k": "v"})
        for _ in range(2)
    )

    hold = usd(a, b, 40, timeout_s=60, flags=domain.TransferFlags(pending=True))
    single = usd(a, b, 5)
    decide(cache, [a, b, hold, single], NOW_US)
    expected = {
        f"account-{a.id}": cache.state.accounts[a.id].to_snapshot(),
        f"account-{b.id}": cache.state.accounts[b.id].to_snapshot(),
        f"transfer-{hold.id}": cache.state.transfers[hold.id].to_snapshot(),
    }  # the single-phase transfer never changes: it has no snapshot row

    capture = cache.capture_snapshots()
    assert len(capture) == 3
    assert not cache.dirty_accounts and not cache.dirty_transfers
    post = domain.CreateTransfer(
        id=uuid.uuid4(),
        pending_id=hold.id,
        amount_minor=30,
        flags=domain.TransferFlags(post_pending_transfer=True),
    )
    decide(cache, [post], NOW_US + 1)  # changes both accounts and the hold in place
    assert cache.state.transfers[hold.id].to_snapshot() != expected[f"transfer-{hold.id}"]
    assert cache.state.accounts[b.id].to_snapshot() != expected[f"account-{b.id}"]

    pauses = []
    rows = capture.rows(every=2, pause=lambda: pauses.append(1))
    assert {r.stream_id: r.data for r in rows} == expected
    assert all(r.stream_version == 1 for r in rows)
    assert len(pauses) == 1  # after the second of three rows

    later = {r.stream_id: r.data for r in cache.capture_snapshots().rows()}
    assert later[f"transfer-{hold.id}"]["pending_status"] == "posted"
    assert later[f"transfer-{hold.id}"]["amount_posted_minor"] == 30
    assert later[f"account-{b.id}"]["credits_posted"] == 5 + 30


def test_a_resolved_hold_is_taken_as_it_is_and_a_pending_one_by_value() -> None:
    """A hold that is posted, voided or expired never changes again: the capture keeps the
    record itself (no copy under the lock); a hold still pending is copied, since a later
    post changes it in place."""
    cache = BookCache(MemoryEventStore("t", MemoryDatabase()))
    a, b = (domain.OpenAccount(id=uuid.uuid4(), ledger="USD", code=1) for _ in range(2))

    def hold(amount: int) -> domain.CreateTransfer:
        return usd(a, b, amount, timeout_s=60, flags=domain.TransferFlags(pending=True))

    def resolve(pending: domain.CreateTransfer, flag: str) -> domain.CreateTransfer:
        return domain.CreateTransfer(
            id=uuid.uuid4(), pending_id=pending.id, flags=domain.TransferFlags(**{flag: True})
        )

    posted, voided, still = hold(10), hold(20), hold(30)
    decide(cache, [a, b, posted, voided, still], NOW_US)
    decide(
        cache,
        [resolve(posted, "post_pending_transfer"), resolve(voided, "void_pending_transfer")],
        NOW_US + 1,
    )
    transfers = cache.state.transfers
    expected = {f"transfer-{h.id}": transfers[h.id].to_snapshot() for h in (posted, voided)}
    expected[f"transfer-{still.id}"] = transfers[still.id].to_snapshot()

    capture = cache.capture_snapshots()
    assert len(capture) == 5  # two accounts, three holds
    kept = capture._resolved
    assert sorted(t.id for t in kept) == sorted([posted.id, voided.id])
    assert all(t is transfers[t.id] for t in kept)  # by reference

    decide(cache, [resolve(still, "post_pending_transfer")], NOW_US + 2)
    rows = {r.stream_id: r.data for r in capture.rows() if r.stream_id.startswith("transfer-")}
    assert rows == expected
    assert rows[f"transfer-{still.id}"]["pending_status"] == "pending"
    assert rows[f"transfer-{posted.id}"]["pending_status"] == "posted"
    assert rows[f"transfer-{voided.id}"]["pending_status"] == "voided"
