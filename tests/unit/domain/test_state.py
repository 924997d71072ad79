"""Records and their snapshots; the book state's equality, copy and expiry index."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ledger.domain import (
    Account,
    AccountFlags,
    BookState,
    CreateTransfer,
    InvariantViolated,
    PendingStatus,
    Transfer,
    TransferFlags,
)
from tests.unit.domain.support import NO_OVERDRAFT, NOW_US, POST, Book, uid


@pytest.fixture
def book() -> Book:
    book = Book()
    a, b = book.open(flags=NO_OVERDRAFT, metadata={"owner": "ada"}), book.open()
    book.transfer(b, a, 50)
    book.hold(a, b, 20, timeout_s=60)
    posted = book.hold(a, b, 10)
    book.ok(CreateTransfer(uid(1), pending_id=posted, flags=POST, amount_minor=4))
    return book


def test_every_record_round_trips_through_a_json_snapshot(book: Book) -> None:
    for record in book.state.iter_records():
        snapshot = json.loads(json.dumps(record.to_snapshot()))
        assert type(record).from_snapshot(snapshot) == record


def test_a_state_rebuilt_from_snapshots_equals_the_original(book: Book) -> None:
    rebuilt = BookState()
    for account in book.state.accounts.values():
        rebuilt.add_account(Account.from_snapshot(account.to_snapshot()))
    for transfer in book.state.transfers.values():
        rebuilt.add_transfer(Transfer.from_snapshot(transfer.to_snapshot()))
    assert rebuilt == book.state
    assert rebuilt.next_expiry_us() == NOW_US + 60_000_000


def _account_snapshot() -> dict[str, Any]:
    return Account(uid(1), "USD", 1, AccountFlags(), {}, NOW_US).to_snapshot()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"debits_posted": -1}, "debits_posted"),
        ({"credits_posted": 2**63}, "credits_posted"),
        ({"code": "1"}, "code"),
        ({"ledger": "usd"}, "ledger"),
        ({"closed": 1}, "bool"),
        ({"id": "not-a-uuid"}, "UUID"),
        (
            {
                "flags": {
                    "debits_must_not_exceed_credits": True,
                    "credits_must_not_exceed_debits": False,
                },
                "debits_posted": 5,
            },
            "despite debits_must_not_exceed_credits",
        ),
    ],
)
def test_a_corrupt_account_snapshot_is_an_invariant_violation(
    change: dict[str, Any], message: str
) -> None:
    snapshot = {**_account_snapshot(), **change}
    with pytest.raises(InvariantViolated, match=message):
        Account.from_snapshot(snapshot)


def test_a_snapshot_missing_a_field_is_an_invariant_violation() -> None:
    snapshot = _account_snapshot()
    del snapshot["credits_posted"]
    with pytest.raises(InvariantViolated, match="credits_posted"):
        Account.from_snapshot(snapshot)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"pending_status": "lost"}, "lost"),
        ({"pending_status": "none"}, "pending_status none"),
        ({"expires_at_us": None}, "timeout_s"),
        ({"amount_posted_minor": 3}, "amount_posted_minor"),
        ({"credit_account_id": str(uid(100))}, "same"),
        (
            {
                "flags": {
                    "linked": False,
                    "pending": True,
                    "post_pending_transfer": True,
                    "void_pending_transfer": False,
                }
            },
            "more than one",
        ),
    ],
)
def test_a_corrupt_transfer_snapshot_is_an_invariant_violation(
    book: Book, change: dict[str, Any], message: str
) -> None:
    hold = next(t for t in book.state.transfers.values() if t.pending_status == "pending")
    snapshot = {**hold.to_snapshot(), **change}
    if "credit_account_id" in change:
        snapshot["debit_account_id"] = str(uid(100))
    with pytest.raises(InvariantViolated, match=message):
        Transfer.from_snapshot(snapshot)


def test_states_with_the_same_records_are_equal_whatever_their_stale_index(book: Book) -> None:
    copy = book.state.copy()
    assert copy == book.state
    copy.expiries.append((1, 1, uid(12345)))
    assert copy == book.state
    copy.accounts[next(iter(copy.accounts))].debits_posted += 1
    assert copy != book.state


def test_a_copy_is_independent(book: Book) -> None:
    copy = book.state.copy()
    account_id = next(iter(copy.accounts))
    copy.accounts[account_id].credits_posted += 1
    assert (
        book.state.accounts[account_id].credits_posted + 1
        == copy.accounts[account_id].credits_posted
    )


def test_add_transfer_indexes_only_pending_holds_with_a_deadline() -> None:
    state = BookState()
    hold = Transfer(
        uid(1),
        uid(2),
        uid(3),
        5,
        "USD",
        1,
        TransferFlags(pending=True),
        None,
        1,
        {},
        NOW_US,
        NOW_US + 1_000_000,
        PendingStatus.pending,
    )
    posted = Transfer(
        uid(4),
        uid(2),
        uid(3),
        5,
        "USD",
        1,
        TransferFlags(pending=True),
        None,
        1,
        {},
        NOW_US,
        NOW_US + 1_000_000,
        PendingStatus.posted,
        5,
    )
    state.add_transfer(hold)
    state.add_transfer(posted)
    assert state.due_pending_transfers(NOW_US + 1_000_000, 10) == [hold]
    assert state.due_pending_transfers(NOW_US + 999_999, 10) == []


def test_a_hold_added_twice_is_due_once() -> None:
    state = BookState()
    hold = Transfer(
        uid(1),
        uid(2),
        uid(3),
        5,
        "USD",
        1,
        TransferFlags(pending=True),
        None,
        1,
        {},
        NOW_US,
        NOW_US + 1_000_000,
        PendingStatus.pending,
    )
    state.add_transfer(hold)
    state.add_transfer(hold)
    assert state.due_pending_transfers(NOW_US + 1_000_000, 10) == [hold]
