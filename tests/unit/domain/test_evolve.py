"""evolve: applies events in place, re-checks the balances they carry, and refuses events
that cannot follow the state (a bug or a corrupted log)."""

from __future__ import annotations

import pytest

from ledger.domain import (
    AccountBalances,
    BookState,
    CreateTransfer,
    Event,
    ExpirePendingTransfers,
    InvariantViolated,
    decide,
    decide_batch,
    evolve,
)
from tests.unit.domain.support import NOW_US, POST, VOID, Book, replay, uid


def test_evolve_returns_the_same_state_object() -> None:
    book = Book()
    book.open()
    state = BookState()
    assert evolve(state, book.log[0]) is state


def test_decide_then_evolve_equals_decide_batch() -> None:
    book = Book()
    a, b = book.open(), book.open()
    state = replay(book.log)
    command = CreateTransfer(uid(1), a, b, 5, "USD", 1)
    for event in decide(state, command, NOW_US):
        evolve(state, event)
    book.ok(command)
    assert state == book.state


def _with(event: Event, **changes: object) -> Event:
    return event.model_copy(update=changes)


@pytest.fixture
def book() -> Book:
    book = Book()
    a, b = book.open(), book.open()
    book.transfer(a, b, 5)
    return book


def test_refuses_balances_after_that_do_not_add_up(book: Book) -> None:
    state = replay(book.log[:-1])
    wrong = _with(book.log[-1], debit_account_after=AccountBalances(0, 6, 0, 0))
    with pytest.raises(InvariantViolated, match="balances after"):
        evolve(state, wrong)


def test_refuses_a_transfer_id_applied_twice(book: Book) -> None:
    state = replay(book.log)
    again = _with(
        book.log[-1],
        debit_account_after=AccountBalances(0, 10, 0, 0),
        credit_account_after=AccountBalances(0, 0, 0, 10),
    )
    with pytest.raises(InvariantViolated, match="already exists"):
        evolve(state, again)


def test_refuses_an_event_for_an_unknown_account(book: Book) -> None:
    with pytest.raises(InvariantViolated, match="does not fit"):
        evolve(BookState(), book.log[-1])


def test_refuses_an_account_opened_twice(book: Book) -> None:
    with pytest.raises(InvariantViolated, match="already exists"):
        evolve(replay(book.log), book.log[0])


def test_refuses_resolving_a_hold_that_is_not_pending() -> None:
    book = Book()
    a, b = book.open(), book.open()
    hold = book.hold(a, b, 5, timeout_s=1)
    (posted,) = book.ok(CreateTransfer(uid(1), pending_id=hold, flags=POST))
    state = replay(book.log)
    voided = decide(
        replay(book.log[:-1]), CreateTransfer(uid(2), pending_id=hold, flags=VOID), NOW_US
    )
    with pytest.raises(InvariantViolated, match="not pending"):
        evolve(state, voided[0])
    expired = decide(replay(book.log[:-1]), ExpirePendingTransfers(NOW_US + 1_000_000), NOW_US)
    with pytest.raises(InvariantViolated):
        evolve(state, expired[0])
    assert posted.type == "PendingTransferPosted"


def test_deciding_something_that_is_not_a_command_is_a_bug() -> None:
    with pytest.raises(InvariantViolated, match="not a ledger command"):
        decide_batch(BookState(), ["CreateTransfer"], NOW_US)  # type: ignore[list-item]
    with pytest.raises(InvariantViolated, match="not a ledger command"):
        decide(BookState(), object(), NOW_US)  # type: ignore[arg-type]


def test_a_batch_time_that_is_not_a_timestamp_is_a_bug() -> None:
    with pytest.raises(InvariantViolated, match="batch time"):
        decide_batch(BookState(), [], -1)
