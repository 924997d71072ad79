"""Linked chains: consecutive commands flagged ``linked`` succeed or fail together.

The failing member gets its own code, the others ``linked_event_failed``; the state after
a failed chain is exactly the state before it, whatever the chain had done so far.
"""

from __future__ import annotations

import gc

import pytest

from ledger.domain import (
    CloseAccount,
    CreateTransfer,
    ExpirePendingTransfers,
    OpenAccount,
    RejectionCode,
    TransferFlags,
    decide_batch,
)
from tests.unit.domain.support import NO_OVERDRAFT, NOW_US, Book, uid

R = RejectionCode
LINKED = TransferFlags(linked=True)
LINKED_POST = TransferFlags(linked=True, post_pending_transfer=True)


@pytest.fixture
def book() -> Book:
    return Book()


def test_a_chain_that_succeeds_applies_every_member(book: Book) -> None:
    a, b, c = book.open(), book.open(), book.open()
    outcomes = book.run(
        CreateTransfer(uid(1), a, b, 5, "USD", 1, LINKED),
        CreateTransfer(uid(2), b, c, 5, "USD", 1, LINKED),
        CreateTransfer(uid(3), c, a, 1, "USD", 1),
    )
    assert [o.status for o in outcomes] == ["created"] * 3
    assert book.balances(b) == (0, 5, 0, 5)


def test_a_later_member_may_spend_what_an_earlier_member_credited(book: Book) -> None:
    funding, capped, other = book.open(), book.open(flags=NO_OVERDRAFT), book.open()
    outcomes = book.run(
        CreateTransfer(uid(1), funding, capped, 50, "USD", 1, LINKED),
        CreateTransfer(uid(2), capped, other, 50, "USD", 1),
    )
    assert [o.status for o in outcomes] == ["created", "created"]


def test_a_failing_member_fails_the_whole_chain_and_restores_the_state(book: Book) -> None:
    funding, capped, other, spare = (
        book.open(),
        book.open(flags=NO_OVERDRAFT),
        book.open(),
        book.open(),
    )
    hold = book.hold(funding, other, 10, timeout_s=30)
    before = book.state.copy()
    outcomes = book.run(
        OpenAccount(uid(10), "USD", 1, linked=True),
        CreateTransfer(uid(1), funding, capped, 50, "USD", 1, LINKED),
        CreateTransfer(uid(2), uid(10), capped, 1, "USD", 1, LINKED),
        CreateTransfer(uid(3), pending_id=hold, flags=LINKED_POST),
        CloseAccount(spare, linked=True),
        CreateTransfer(uid(4), capped, other, 52, "USD", 1),
    )
    assert [o.code for o in outcomes] == [R.linked_event_failed] * 5 + [R.exceeds_credits]
    assert outcomes[0].detail == "command 5 of the batch failed: exceeds_credits"
    assert all(o.events == () for o in outcomes)
    assert book.state == before
    assert uid(10) not in book.state.accounts and not book.state.accounts[spare].closed
    assert book.state.transfers[hold].pending_status == "pending"


def test_the_next_command_after_a_failed_chain_is_decided_on_its_own(book: Book) -> None:
    a, b = book.open(), book.open()
    outcomes = book.run(
        CreateTransfer(uid(1), a, b, 5, "USD", 1, LINKED),
        CreateTransfer(uid(2), a, a, 5, "USD", 1),
        CreateTransfer(uid(3), a, b, 5, "USD", 1),
    )
    assert [o.status for o in outcomes] == ["rejected", "rejected", "created"]


def test_members_after_the_failure_get_linked_event_failed(book: Book) -> None:
    a, b = book.open(), book.open()
    outcomes = book.run(
        CreateTransfer(uid(1), a, b, 0, "USD", 1, LINKED),
        CreateTransfer(uid(2), a, b, 5, "USD", 1, LINKED),
        CreateTransfer(uid(3), a, b, 5, "USD", 1),
    )
    assert [o.code for o in outcomes] == [
        R.amount_must_not_be_zero,
        R.linked_event_failed,
        R.linked_event_failed,
    ]
    assert book.state.transfers == {}


def test_a_chain_open_at_the_end_of_the_batch_is_rejected(book: Book) -> None:
    a, b = book.open(), book.open()
    outcomes = book.run(
        CreateTransfer(uid(1), a, b, 5, "USD", 1),
        CreateTransfer(uid(2), a, b, 5, "USD", 1, LINKED),
        CreateTransfer(uid(3), a, b, 5, "USD", 1, LINKED),
    )
    assert [o.code for o in outcomes] == [None, R.linked_event_failed, R.linked_event_chain_open]
    assert set(book.state.transfers) == {uid(1)}


def test_an_open_chain_reports_its_own_failure_too(book: Book) -> None:
    a, b = book.open(), book.open()
    outcomes = book.run(
        CreateTransfer(uid(1), a, b, 0, "USD", 1, LINKED),
        CreateTransfer(uid(2), a, b, 5, "USD", 1, LINKED),
    )
    assert [o.code for o in outcomes] == [R.amount_must_not_be_zero, R.linked_event_chain_open]


def test_an_expiry_cannot_join_a_chain(book: Book) -> None:
    a, b = book.open(), book.open()
    book.hold(a, b, 5, timeout_s=1)
    outcomes = book.run(
        CreateTransfer(uid(1), a, b, 5, "USD", 1, LINKED),
        ExpirePendingTransfers(now_us=NOW_US + 1_000_000),
    )
    assert [o.code for o in outcomes] == [R.linked_event_chain_open, None]
    assert len(outcomes[1].events) == 1


def test_a_resubmitted_chain_returns_exists_for_every_member(book: Book) -> None:
    a, b = book.open(), book.open()
    chain = (
        CreateTransfer(uid(1), a, b, 5, "USD", 1, LINKED),
        CreateTransfer(uid(2), a, b, 6, "USD", 1),
    )
    book.run(*chain)
    before = book.state.copy()
    assert [o.status for o in book.run(*chain)] == ["exists", "exists"]
    assert book.state == before


def test_a_chain_rolls_back_a_post_and_the_hold_stays_pending(book: Book) -> None:
    a, b = book.open(), book.open()
    hold = book.hold(a, b, 10, timeout_s=5)
    outcomes = book.run(
        CreateTransfer(uid(1), pending_id=hold, flags=LINKED_POST),
        CreateTransfer(uid(2), a, a, 1, "USD", 1),
    )
    assert [o.code for o in outcomes] == [R.linked_event_failed, R.accounts_must_be_different]
    assert book.state.transfers[hold].pending_status == "pending"
    assert book.state.next_expiry_us() == NOW_US + 5_000_000
    assert len(book.ok(ExpirePendingTransfers(now_us=NOW_US + 5_000_000))) == 1


def test_a_rolled_back_hold_leaves_no_deadline_behind(book: Book) -> None:
    a, b = book.open(), book.open()
    book.run(
        CreateTransfer(
            uid(1), a, b, 10, "USD", 1, TransferFlags(linked=True, pending=True), timeout_s=5
        ),
        CreateTransfer(uid(2), a, a, 1, "USD", 1),
    )
    assert book.state.next_expiry_us() is None
    assert book.ok(ExpirePendingTransfers(now_us=NOW_US + 5_000_000)) == ()


def test_rejections_leave_no_reference_cycles_for_the_garbage_collector(book: Book) -> None:
    """The node may run with the cyclic collector tuned down: deciding must not rely on it."""
    a, b = book.open(), book.open()
    commands = [
        CreateTransfer(uid(1), a, b, 5, "USD", 1, LINKED),
        CreateTransfer(uid(2), a, a, 5, "USD", 1),
        CreateTransfer(uid(3), a, b, 0, "USD", 1),
        CreateTransfer(uid(4), a, b, 5, "USD", 1),
    ]
    gc.collect()
    gc.disable()
    try:
        outcomes = decide_batch(book.state, commands, NOW_US)
        assert gc.collect() == 0
    finally:
        gc.enable()
    assert [o.status for o in outcomes] == ["rejected", "rejected", "rejected", "created"]
