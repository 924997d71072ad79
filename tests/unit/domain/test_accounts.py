"""OpenAccount and CloseAccount."""

from __future__ import annotations

import pytest

from ledger.domain import (
    NIL_ID,
    Account,
    AccountClosed,
    AccountFlags,
    AccountOpened,
    CloseAccount,
    CreateTransfer,
    OpenAccount,
    RejectionCode,
)
from tests.unit.domain.support import NO_OVERDRAFT, NOW_US, PENDING, Book, uid

R = RejectionCode


@pytest.fixture
def book() -> Book:
    return Book()


class TestOpenAccount:
    def test_opens_an_account_with_zero_balances(self, book: Book) -> None:
        command = OpenAccount(uid(1), "EUR", 7, NO_OVERDRAFT, {"owner": "ada"}, scale=3)
        (event,) = book.ok(command)
        assert isinstance(event, AccountOpened)
        assert (event.account_id, event.ledger, event.scale, event.code) == (uid(1), "EUR", 3, 7)
        assert event.flags == NO_OVERDRAFT and event.metadata == {"owner": "ada"}
        assert (event.stream_id, event.stream_version) == (f"account-{uid(1)}", 1)
        account = book.state.accounts[uid(1)]
        assert account.balances() == (0, 0, 0, 0)
        assert (account.timestamp_us, account.closed) == (NOW_US, False)

    def test_the_event_does_not_share_the_commands_metadata(self, book: Book) -> None:
        metadata = {"owner": "ada"}
        (event,) = book.ok(OpenAccount(uid(1), "EUR", 7, metadata=metadata))
        metadata["owner"] = "eve"
        assert event.metadata == {"owner": "ada"}  # type: ignore[attr-defined]

    def test_same_id_and_fields_returns_exists_even_after_balances_moved(self, book: Book) -> None:
        command = OpenAccount(uid(1), "USD", 1)
        book.ok(command)
        book.transfer(uid(1), book.open(), 5)
        (outcome,) = book.run(command)
        assert outcome.status == "exists"
        assert isinstance(outcome.record, Account) and outcome.record.debits_posted == 5

    @pytest.mark.parametrize(
        ("field", "command"),
        [
            ("ledger", OpenAccount(uid(1), "EUR", 1)),
            ("scale", OpenAccount(uid(1), "USD", 1, scale=0)),
            ("code", OpenAccount(uid(1), "USD", 2)),
            ("flags", OpenAccount(uid(1), "USD", 1, NO_OVERDRAFT)),
            ("metadata", OpenAccount(uid(1), "USD", 1, metadata={"a": "b"})),
        ],
    )
    def test_same_id_with_different_fields_is_rejected(
        self, book: Book, field: str, command: OpenAccount
    ) -> None:
        book.ok(OpenAccount(uid(1), "USD", 1))
        code, detail = book.reject(command)
        assert code == R.id_already_used_with_different_fields
        assert f" {field} " in detail

    def test_linked_is_not_part_of_the_account(self, book: Book) -> None:
        book.ok(OpenAccount(uid(1), "USD", 1))
        outcomes = book.run(
            OpenAccount(uid(1), "USD", 1, linked=True), OpenAccount(uid(2), "USD", 1)
        )
        assert [o.status for o in outcomes] == ["exists", "created"]

    @pytest.mark.parametrize(
        ("command", "where"),
        [
            (OpenAccount(uid(1), "usd", 1), "at $.ledger:"),
            (OpenAccount(uid(1), "TOO_LONG_CODE", 1), "at $.ledger:"),
            (OpenAccount(uid(1), "USD", 65_536), "at $.code:"),
            (OpenAccount(uid(1), "USD", 1, scale=19), "at $.scale:"),
            (OpenAccount(uid(1), "USD", 1, metadata={"k": "v" * 300}), "at $.metadata.k:"),
        ],
    )
    def test_rejects_out_of_range_fields(
        self, book: Book, command: OpenAccount, where: str
    ) -> None:
        code, detail = book.reject(command)
        assert code == R.invalid_field and detail.startswith(where)

    def test_precedence_nil_id_before_mutually_exclusive_flags(self, book: Book) -> None:
        both = AccountFlags(
            debits_must_not_exceed_credits=True, credits_must_not_exceed_debits=True
        )
        assert book.code_of(OpenAccount(NIL_ID, "", 0, both)) == R.id_must_not_be_zero
        assert book.code_of(OpenAccount(uid(1), "", 0, both)) == R.flags_are_mutually_exclusive
        assert book.code_of(OpenAccount(uid(1), "", 0)) == R.ledger_must_not_be_empty


class TestCloseAccount:
    def test_closes_an_account_recording_its_balances(self, book: Book) -> None:
        a, b = book.open(), book.open()
        book.transfer(a, b, 5)
        (event,) = book.ok(CloseAccount(a))
        assert isinstance(event, AccountClosed)
        assert event.account_after == (0, 5, 0, 0)
        assert (event.stream_id, event.stream_version) == (f"account-{a}", 2)
        assert book.state.accounts[a].closed

    def test_closing_a_closed_account_returns_exists(self, book: Book) -> None:
        a = book.open()
        book.ok(CloseAccount(a))
        (outcome,) = book.run(CloseAccount(a))
        assert outcome.status == "exists"
        assert isinstance(outcome.record, Account) and outcome.record.closed

    def test_rejects_unknown_and_nil_accounts(self, book: Book) -> None:
        assert book.code_of(CloseAccount(uid(404))) == R.account_not_found
        assert book.code_of(CloseAccount(NIL_ID)) == R.id_must_not_be_zero

    def test_a_closed_account_takes_no_new_transfers_either_way(self, book: Book) -> None:
        a, b = book.open(), book.open()
        book.ok(CloseAccount(a))
        assert book.code_of(CreateTransfer(uid(1), a, b, 1, "USD", 1)) == R.account_closed
        assert book.code_of(CreateTransfer(uid(1), b, a, 1, "USD", 1, PENDING)) == R.account_closed
