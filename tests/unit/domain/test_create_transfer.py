"""CreateTransfer, single-phase: what is accepted, what the event carries, idempotency,
and which rule wins when several fail at once."""

from __future__ import annotations

import pytest

from ledger.domain import (
    AMOUNT_MAX,
    NIL_ID,
    AccountBalances,
    BookState,
    CloseAccount,
    CreateTransfer,
    OpenAccount,
    PendingStatus,
    RejectionCode,
    Transfer,
    TransferCreated,
    TransferFlags,
    decide,
    decide_batch,
)
from tests.unit.domain.support import (
    NO_NEGATIVE_LIABILITY,
    NO_OVERDRAFT,
    NOW_US,
    Book,
    uid,
)

R = RejectionCode


@pytest.fixture
def book() -> Book:
    return Book()


def test_moves_the_amount_from_debits_to_credits(book: Book) -> None:
    a, b = book.open(), book.open()
    book.transfer(a, b, 250)
    assert book.balances(a) == (0, 250, 0, 0)
    assert book.balances(b) == (0, 0, 0, 250)


def test_event_carries_every_field_and_both_balances_after(book: Book) -> None:
    a, b = book.open(), book.open()
    book.transfer(b, a, 7)
    command = CreateTransfer(uid(1), a, b, 40, "USD", 3, metadata={"order": "o-1"})
    (event,) = book.ok(command)
    assert isinstance(event, TransferCreated)
    assert (event.transfer_id, event.debit_account_id, event.credit_account_id) == (uid(1), a, b)
    assert (event.amount_minor, event.ledger, event.code) == (40, "USD", 3)
    assert event.flags == TransferFlags() and event.metadata == {"order": "o-1"}
    assert (event.timeout_s, event.expires_at_us, event.timestamp_us) == (0, None, NOW_US)
    assert event.debit_account_after == AccountBalances(0, 40, 0, 7)
    assert event.credit_account_after == AccountBalances(0, 7, 0, 40)
    assert (event.stream_id, event.stream_version) == (f"transfer-{uid(1)}", 1)


def test_records_the_transfer(book: Book) -> None:
    a, b = book.open(), book.open()
    transfer_id = book.transfer(a, b, 40)
    record = book.state.transfers[transfer_id]
    assert (record.amount_minor, record.pending_status) == (40, PendingStatus.none)


def test_decide_does_not_change_the_state(book: Book) -> None:
    a, b = book.open(), book.open()
    before = book.state.copy()
    events = decide(book.state, CreateTransfer(uid(1), a, b, 5, "USD", 1), NOW_US)
    assert len(events) == 1
    assert book.state == before


def test_same_id_and_fields_returns_exists_with_the_original_record(book: Book) -> None:
    a, b = book.open(), book.open()
    command = CreateTransfer(uid(1), a, b, 40, "USD", 1, metadata={"k": "v"})
    book.ok(command)
    book.transfer(b, a, 40)
    before = book.state.copy()
    (outcome,) = book.run(command)
    assert (outcome.status, outcome.code, outcome.events) == ("exists", None, ())
    assert isinstance(outcome.record, Transfer)
    assert outcome.record == book.state.transfers[uid(1)]
    assert outcome.record is not book.state.transfers[uid(1)]
    assert book.state == before


def test_exists_ignores_the_linked_flag(book: Book) -> None:
    a, b = book.open(), book.open()
    book.ok(CreateTransfer(uid(1), a, b, 40, "USD", 1))
    linked = CreateTransfer(uid(1), a, b, 40, "USD", 1, TransferFlags(linked=True))
    closing = CreateTransfer(uid(2), a, b, 1, "USD", 1)
    assert [o.status for o in book.run(linked, closing)] == ["exists", "created"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("debit_account_id", uid(3)),
        ("credit_account_id", uid(3)),
        ("amount_minor", 41),
        ("ledger", "EUR"),
        ("code", 2),
        ("flags", TransferFlags(pending=True)),
        ("metadata", {"k": "other"}),
    ],
)
def test_same_id_with_a_different_field_is_rejected_naming_it(
    book: Book, field: str, value: object
) -> None:
    a, b = book.open(), book.open()
    book.open()
    original = {"id": uid(1), "debit_account_id": a, "credit_account_id": b}
    book.ok(CreateTransfer(**original, amount_minor=40, ledger="USD", code=1, metadata={"k": "v"}))  # type: ignore[arg-type]
    fields: dict[str, object] = {
        **original,
        "amount_minor": 40,
        "ledger": "USD",
        "code": 1,
        "metadata": {"k": "v"},
        field: value,
    }
    code, detail = book.reject(CreateTransfer(**fields))  # type: ignore[arg-type]
    assert code == R.id_already_used_with_different_fields
    assert f" {field} " in detail


def test_rejects_debit_beyond_credits_with_the_numbers(book: Book) -> None:
    funding = book.open()
    capped, other = book.open(flags=NO_OVERDRAFT), book.open()
    book.transfer(funding, capped, 40)
    book.transfer(capped, other, 10)
    code, detail = book.reject(CreateTransfer(uid(1), capped, other, 60, "USD", 1))
    assert code == R.exceeds_credits
    assert detail.startswith("credits_posted 40, debits 10 posted + 0 pending, amount 60")
    assert str(capped) in detail


def test_allows_debit_up_to_credits_exactly(book: Book) -> None:
    funding, capped, other = book.open(), book.open(flags=NO_OVERDRAFT), book.open()
    book.transfer(funding, capped, 40)
    book.transfer(capped, other, 40)
    assert book.balances(capped) == (0, 40, 0, 40)


def test_rejects_credit_beyond_debits_with_the_numbers(book: Book) -> None:
    liability, other = book.open(flags=NO_NEGATIVE_LIABILITY), book.open()
    book.transfer(liability, other, 30)
    code, detail = book.reject(CreateTransfer(uid(1), other, liability, 31, "USD", 1))
    assert code == R.exceeds_debits
    assert detail.startswith("debits_posted 30, credits 0 posted + 0 pending, amount 31")


def test_pending_debits_count_against_the_limit(book: Book) -> None:
    funding, capped, other = book.open(), book.open(flags=NO_OVERDRAFT), book.open()
    book.transfer(funding, capped, 50)
    book.hold(capped, other, 30)
    code, detail = book.reject(CreateTransfer(uid(1), capped, other, 21, "USD", 1))
    assert code == R.exceeds_credits
    assert "debits 0 posted + 30 pending" in detail


def test_pending_credits_do_not_count_as_funds(book: Book) -> None:
    funding, capped, other = book.open(), book.open(flags=NO_OVERDRAFT), book.open()
    book.hold(funding, capped, 50)
    assert book.code_of(CreateTransfer(uid(1), capped, other, 1, "USD", 1)) == R.exceeds_credits


def test_rejects_accounts_with_the_same_code_but_another_scale(book: Book) -> None:
    a = book.open()
    b = book.open(scale=0)
    code, detail = book.reject(CreateTransfer(uid(1), a, b, 1, "USD", 1))
    assert code == R.accounts_must_have_the_same_ledger
    assert "scale 2" in detail and "scale 0" in detail


def test_rejects_a_transfer_between_ledgers(book: Book) -> None:
    usd, eur = book.open("USD"), book.open("EUR")
    assert book.code_of(CreateTransfer(uid(1), usd, eur, 1, "USD", 1)) == (
        R.accounts_must_have_the_same_ledger
    )


def test_accepts_amounts_up_to_the_maximum(book: Book) -> None:
    a, b = book.open(), book.open()
    book.transfer(a, b, AMOUNT_MAX)
    assert book.balances(a) == (0, AMOUNT_MAX, 0, 0)


def test_rejects_a_malformed_ledger_code_as_an_invalid_field(book: Book) -> None:
    a, b = book.open(), book.open()
    code, detail = book.reject(CreateTransfer(uid(1), a, b, 1, "usd", 1))
    assert code == R.invalid_field
    assert detail.startswith("at $.ledger:")


@pytest.mark.parametrize(
    ("fields", "where"),
    [
        ({"amount_minor": -5}, "at $.amount_minor:"),
        ({"timeout_s": -1}, "at $.timeout_s:"),
        ({"code": 70_000}, "at $.code:"),
        ({"code": -1}, "at $.code:"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "at $.metadata:"),
        ({"metadata": {"k": "v" * 257}}, "at $.metadata.k:"),
        ({"metadata": {"": "v"}}, "at $.metadata:"),
    ],
)
def test_rejects_out_of_range_fields_built_in_python_as_invalid_field(
    book: Book, fields: dict[str, object], where: str
) -> None:
    a, b = book.open(), book.open()
    values: dict[str, object] = {
        "id": uid(1),
        "debit_account_id": a,
        "credit_account_id": b,
        "amount_minor": 1,
        "ledger": "USD",
        "code": 1,
        **fields,
    }
    code, detail = book.reject(CreateTransfer(**values))  # type: ignore[arg-type]
    assert code == R.invalid_field
    assert detail.startswith(where)


class TestPrecedence:
    """When a command breaks two rules, the one listed first in RejectionCode wins."""

    def test_invalid_field_before_nil_id(self, book: Book) -> None:
        command = CreateTransfer(NIL_ID, uid(1), uid(2), -1, "USD", 1)
        assert book.code_of(command) == R.invalid_field

    def test_idempotency_before_every_rule_on_the_fields(self, book: Book) -> None:
        a, b = book.open(), book.open()
        book.ok(CreateTransfer(uid(1), a, b, 5, "USD", 1))
        assert book.code_of(CreateTransfer(uid(1), a, a, 0, "", 0)) == (
            R.id_already_used_with_different_fields
        )

    def test_accounts_must_be_different_before_not_found(self, book: Book) -> None:
        assert book.code_of(CreateTransfer(uid(1), uid(5), uid(5), 1, "USD", 1)) == (
            R.accounts_must_be_different
        )

    def test_amount_zero_before_account_not_found(self, book: Book) -> None:
        assert book.code_of(CreateTransfer(uid(1), uid(5), uid(6), 0, "USD", 1)) == (
            R.amount_must_not_be_zero
        )

    def test_debit_account_not_found_before_credit_account_not_found(self, book: Book) -> None:
        assert book.code_of(CreateTransfer(uid(1), uid(5), uid(6), 1, "USD", 1)) == (
            R.debit_account_not_found
        )

    def test_same_ledger_before_closed_and_limits(self, book: Book) -> None:
        capped = book.open(flags=NO_OVERDRAFT)
        eur = book.open("EUR")
        book.ok(CloseAccount(eur))
        assert book.code_of(CreateTransfer(uid(1), capped, eur, 1, "USD", 1)) == (
            R.accounts_must_have_the_same_ledger
        )

    def test_account_closed_before_exceeds_credits(self, book: Book) -> None:
        capped, other = book.open(flags=NO_OVERDRAFT), book.open()
        book.ok(CloseAccount(other))
        assert book.code_of(CreateTransfer(uid(1), capped, other, 1, "USD", 1)) == (
            R.account_closed
        )

    def test_overflow_before_exceeds_credits(self, book: Book) -> None:
        funding, capped, sink = book.open(), book.open(flags=NO_OVERDRAFT), book.open()
        book.transfer(funding, sink, AMOUNT_MAX)
        book.transfer(book.open(), capped, 1)
        assert book.code_of(CreateTransfer(uid(1), capped, sink, 2, "USD", 1)) == (
            R.overflows_credits_posted
        )

    def test_exceeds_credits_before_exceeds_debits(self, book: Book) -> None:
        capped, liability = book.open(flags=NO_OVERDRAFT), book.open(flags=NO_NEGATIVE_LIABILITY)
        assert book.code_of(CreateTransfer(uid(1), capped, liability, 1, "USD", 1)) == (
            R.exceeds_credits
        )


def test_an_account_opened_in_the_same_batch_can_be_used_by_a_later_command() -> None:
    state = BookState()
    outcomes = decide_batch(
        state,
        [
            OpenAccount(uid(1), "USD", 1),
            OpenAccount(uid(2), "USD", 1),
            CreateTransfer(uid(3), uid(1), uid(2), 5, "USD", 1),
        ],
        NOW_US,
    )
    assert [o.status for o in outcomes] == ["created"] * 3
