"""What the domain refuses to believe: states, events and snapshots a correct ledger cannot
produce raise InvariantViolated (a bug or corruption: stop), never a rejection code. Also
the id references the node uses to load records before deciding."""

from __future__ import annotations

import pytest

from ledger.domain import (
    AMOUNT_MAX,
    NIL_ID,
    Account,
    AccountBalances,
    AccountFlags,
    BookState,
    CloseAccount,
    CreateTransfer,
    ExpirePendingTransfers,
    InvariantViolated,
    OpenAccount,
    RejectionCode,
    decide,
    evolve,
)
from tests.unit.domain.support import NOW_US, POST, VOID, Book, replay, uid

S = 1_000_000


class TestReferences:
    def test_account_commands_reference_their_account(self) -> None:
        for command in (OpenAccount(uid(1), "USD", 1), CloseAccount(uid(1))):
            assert command.referenced_account_ids() == (uid(1),)
            assert command.referenced_transfer_ids() == ()

    def test_a_transfer_references_its_accounts_and_its_own_id(self) -> None:
        command = CreateTransfer(uid(1), uid(2), uid(3), 5, "USD", 1)
        assert command.referenced_account_ids() == (uid(2), uid(3))
        assert command.referenced_transfer_ids() == (uid(1),)

    def test_a_post_references_the_pending_transfer_and_only_given_accounts(self) -> None:
        command = CreateTransfer(uid(1), pending_id=uid(9), flags=POST)
        assert command.referenced_account_ids() == ()
        assert command.referenced_transfer_ids() == (uid(1), uid(9))

    def test_expiry_references_nothing(self) -> None:
        command = ExpirePendingTransfers(now_us=NOW_US)
        assert command.referenced_account_ids() == command.referenced_transfer_ids() == ()
        assert command.linked is False


class TestStateTheNodeMustProvide:
    def test_posting_a_hold_whose_accounts_are_not_loaded_is_a_bug(self) -> None:
        book = Book()
        a, b = book.open(), book.open()
        hold = book.hold(a, b, 5, timeout_s=1)
        state = BookState()
        state.add_transfer(book.state.transfers[hold])
        with pytest.raises(InvariantViolated, match="load a pending transfer's accounts"):
            decide(state, CreateTransfer(uid(1), pending_id=hold, flags=VOID), NOW_US)
        with pytest.raises(InvariantViolated, match="not in the state"):
            decide(state, ExpirePendingTransfers(now_us=NOW_US + S), NOW_US)

    def test_a_hold_larger_than_its_accounts_reservations_is_a_bug(self) -> None:
        book = Book()
        a, b = book.open(), book.open()
        hold = book.hold(a, b, 5, timeout_s=1)
        book.state.accounts[a].debits_pending = 4
        with pytest.raises(InvariantViolated, match="holds 4 pending"):
            decide(book.state, CreateTransfer(uid(1), pending_id=hold, flags=VOID), NOW_US)
        with pytest.raises(InvariantViolated, match="exceeds what its accounts hold"):
            decide(book.state, ExpirePendingTransfers(now_us=NOW_US + S), NOW_US)


class TestPostingChecks:
    def test_a_post_above_the_maximum_amount_is_rejected_before_the_lookup(self) -> None:
        book = Book()
        command = CreateTransfer(uid(1), pending_id=uid(9), flags=POST, amount_minor=AMOUNT_MAX + 1)
        assert book.code_of(command) == RejectionCode.amount_exceeds_maximum

    def test_a_post_from_a_closed_debit_account_is_rejected(self) -> None:
        book = Book()
        a, b = book.open(), book.open()
        hold = book.hold(a, b, 5)
        book.ok(CloseAccount(a))
        code, detail = book.reject(CreateTransfer(uid(1), pending_id=hold, flags=POST))
        assert code == RejectionCode.account_closed and "debit account" in detail


class TestEventsThatDoNotFit:
    @pytest.fixture
    def book(self) -> Book:
        book = Book()
        a, b = book.open(), book.open()
        book.hold(a, b, 10, timeout_s=1)
        return book

    def _last_event_of(self, book: Book, command: object) -> tuple[BookState, object]:
        before = replay(book.log)
        (event,) = book.ok(command)  # type: ignore[arg-type]
        return before, event

    @pytest.mark.parametrize(
        "change",
        [{"pending_amount_minor": 11}, {"amount_minor": 11}, {"debit_account_id": uid(77)}],
    )
    def test_a_post_that_does_not_match_its_hold(
        self, book: Book, change: dict[str, object]
    ) -> None:
        hold = next(iter(book.state.transfers))
        before, event = self._last_event_of(
            book, CreateTransfer(uid(1), pending_id=hold, flags=POST)
        )
        with pytest.raises(InvariantViolated):
            evolve(before, event.model_copy(update=change))  # type: ignore[attr-defined]

    def test_a_void_that_does_not_match_its_hold(self, book: Book) -> None:
        hold = next(iter(book.state.transfers))
        before, event = self._last_event_of(
            book, CreateTransfer(uid(1), pending_id=hold, flags=VOID)
        )
        with pytest.raises(InvariantViolated, match="does not match"):
            evolve(before, event.model_copy(update={"amount_minor": 9}))  # type: ignore[attr-defined]

    def test_an_expiry_that_does_not_match_its_hold(self, book: Book) -> None:
        before, event = self._last_event_of(book, ExpirePendingTransfers(now_us=NOW_US + S))
        with pytest.raises(InvariantViolated, match="does not match"):
            evolve(before, event.model_copy(update={"expires_at_us": NOW_US}))  # type: ignore[attr-defined]

    def test_a_close_with_other_balances(self, book: Book) -> None:
        account = next(iter(book.state.accounts))
        before, event = self._last_event_of(book, CloseAccount(account))
        wrong = event.model_copy(update={"account_after": AccountBalances(0, 0, 0, 1)})  # type: ignore[attr-defined]
        with pytest.raises(InvariantViolated, match="does not match"):
            evolve(before, wrong)

    def test_a_resolving_transfer_id_used_twice(self, book: Book) -> None:
        a, b = list(book.state.accounts)
        other = book.hold(a, b, 3)
        hold = next(iter(book.state.transfers))
        book.ok(CreateTransfer(uid(1), pending_id=hold, flags=VOID))
        before = replay(book.log)
        (event,) = decide(book.state, CreateTransfer(uid(2), pending_id=other, flags=VOID), NOW_US)
        with pytest.raises(InvariantViolated, match="already exists"):
            evolve(before, event.model_copy(update={"transfer_id": uid(1)}))


@pytest.mark.parametrize(
    ("account", "problem"),
    [
        (Account(uid(1), "USD", 1, AccountFlags(), {}, 0, debits_posted=-1), "outside"),
        (
            Account(
                uid(1), "USD", 1, AccountFlags(), {}, 0, debits_pending=AMOUNT_MAX, debits_posted=1
            ),
            "debits_pending \\+ debits_posted",
        ),
        (
            Account(
                uid(1),
                "USD",
                1,
                AccountFlags(),
                {},
                0,
                credits_pending=AMOUNT_MAX,
                credits_posted=1,
            ),
            "credits_pending \\+ credits_posted",
        ),
        (Account(uid(1), "USD", 1, AccountFlags(True, True), {}, 0), "both balance limit flags"),
        (
            Account(uid(1), "USD", 1, AccountFlags(False, True), {}, 0, credits_posted=1),
            "despite credits_must_not_exceed_debits",
        ),
        (Account(uid(1), "usd", 1, AccountFlags(), {}, 0), "not a ledger code"),
    ],
)
def test_an_impossible_account_fails_its_check(account: Account, problem: str) -> None:
    with pytest.raises(InvariantViolated, match=problem):
        account.check()


def test_transfer_snapshots_name_what_is_wrong() -> None:
    book = Book()
    a, b = book.open(), book.open()
    plain = book.transfer(a, b, 5)
    good = book.state.transfers[plain].to_snapshot()
    for change, problem in (
        ({"ledger": 5}, "not a string"),
        ({"ledger": "usd"}, "not a ledger code"),
        ({"metadata": []}, "not an object"),
        ({"metadata": {"k": "v" * 300}}, "at most 256"),
        ({"pending_status": "pending"}, "pending status"),
        ({"pending_id": str(uid(3))}, "pending_id must be set exactly"),
        ({"id": str(NIL_ID)[:-1]}, "not a UUID"),
    ):
        with pytest.raises(InvariantViolated, match=problem):
            type(book.state.transfers[plain]).from_snapshot({**good, **change})


def test_a_state_is_never_equal_to_something_else() -> None:
    assert BookState() != object()
    assert BookState() == BookState()
