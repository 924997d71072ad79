"""Pending transfers (holds): reserve, post in full or in part, void, expire."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import pytest

from ledger.domain import (
    NIL_ID,
    AccountBalances,
    BookState,
    CloseAccount,
    CreateTransfer,
    ExpirePendingTransfers,
    PendingStatus,
    PendingTransferExpired,
    PendingTransferPosted,
    PendingTransferVoided,
    RejectionCode,
    Transfer,
    TransferCreated,
    TransferFlags,
    decide_batch,
)
from tests.unit.domain.support import NO_OVERDRAFT, NOW_US, PENDING, POST, VOID, Book, uid

R = RejectionCode
S = 1_000_000  # microseconds per second


@pytest.fixture
def book() -> Book:
    return Book()


def post(pending_id: UUID, amount: int = 0, **fields: Any) -> CreateTransfer:
    return CreateTransfer(
        uid(500), pending_id=pending_id, flags=POST, amount_minor=amount, **fields
    )


def void(pending_id: UUID, amount: int = 0, **fields: Any) -> CreateTransfer:
    return CreateTransfer(
        uid(600), pending_id=pending_id, flags=VOID, amount_minor=amount, **fields
    )


class TestReserve:
    def test_reserves_the_amount_in_pending_balances(self, book: Book) -> None:
        a, b = book.open(), book.open()
        book.hold(a, b, 30)
        assert book.balances(a) == (30, 0, 0, 0)
        assert book.balances(b) == (0, 0, 30, 0)

    def test_event_carries_the_deadline_from_the_batch_time(self, book: Book) -> None:
        a, b = book.open(), book.open()
        command = CreateTransfer(uid(1), a, b, 30, "USD", 1, PENDING, timeout_s=60)
        (event,) = book.ok(command)
        assert isinstance(event, TransferCreated)
        assert event.expires_at_us == NOW_US + 60 * S
        assert event.debit_account_after == AccountBalances(30, 0, 0, 0)

    def test_timeout_zero_never_expires(self, book: Book) -> None:
        a, b = book.open(), book.open()
        hold = book.hold(a, b, 30)
        assert book.state.transfers[hold].expires_at_us is None
        assert book.state.next_expiry_us() is None
        book.ok(ExpirePendingTransfers(now_us=2**62))
        assert book.state.transfers[hold].pending_status == PendingStatus.pending

    def test_reservation_cannot_exceed_the_funds(self, book: Book) -> None:
        funding, capped, other = book.open(), book.open(flags=NO_OVERDRAFT), book.open()
        book.transfer(funding, capped, 10)
        assert book.code_of(CreateTransfer(uid(1), capped, other, 11, "USD", 1, PENDING)) == (
            R.exceeds_credits
        )


class TestPost:
    def test_posts_the_full_amount_when_amount_is_zero(self, book: Book) -> None:
        a, b = book.open(), book.open()
        hold = book.hold(a, b, 30)
        (event,) = book.ok(post(hold))
        assert isinstance(event, PendingTransferPosted)
        assert (event.amount_minor, event.pending_amount_minor) == (30, 30)
        assert book.balances(a) == (0, 30, 0, 0)
        assert book.balances(b) == (0, 0, 0, 30)
        assert event.debit_account_after == AccountBalances(0, 30, 0, 0)
        assert (event.stream_id, event.stream_version) == (f"transfer-{uid(500)}", 1)

    def test_a_partial_post_releases_the_rest(self, book: Book) -> None:
        a, b = book.open(), book.open()
        hold = book.hold(a, b, 30)
        book.ok(post(hold, 12))
        assert book.balances(a) == (0, 12, 0, 0)
        assert book.balances(b) == (0, 0, 0, 12)
        record = book.state.transfers[hold]
        assert (record.pending_status, record.amount_posted_minor) == (PendingStatus.posted, 12)

    def test_records_the_posting_transfer_with_the_pending_fields(self, book: Book) -> None:
        a, b = book.open(), book.open()
        hold = book.hold(a, b, 30)
        book.ok(post(hold, 12, metadata={"why": "capture"}))
        record = book.state.transfers[uid(500)]
        assert (record.debit_account_id, record.credit_account_id) == (a, b)
        assert (record.amount_minor, record.ledger, record.code) == (12, "USD", 1)
        assert (record.pending_id, record.pending_status) == (hold, PendingStatus.none)
        assert record.metadata == {"why": "capture"}

    def test_accepts_the_pending_fields_when_given(self, book: Book) -> None:
        a, b = book.open(), book.open()
        hold = book.hold(a, b, 30)
        book.ok(post(hold, 30, debit_account_id=a, credit_account_id=b, ledger="USD", code=1))

    def test_rejects_more_than_the_pending_amount(self, book: Book) -> None:
        a, b = book.open(), book.open()
        hold = book.hold(a, b, 30)
        code, detail = book.reject(post(hold, 31))
        assert code == R.exceeds_pending_transfer_amount
        assert "post of 31 exceeds pending amount 30" in detail

    def test_a_pending_transfer_is_posted_once(self, book: Book) -> None:
        a, b = book.open(), book.open()
        hold = book.hold(a, b, 30)
        book.ok(post(hold, 10))
        again = CreateTransfer(uid(501), pending_id=hold, flags=POST, amount_minor=10)
        assert book.code_of(again) == R.pending_transfer_already_posted

    def test_rejects_a_post_at_or_after_the_deadline_before_expiry_ran(self, book: Book) -> None:
        a, b = book.open(), book.open()
        hold = book.hold(a, b, 30, timeout_s=10)
        assert book.code_of(post(hold), now_us=NOW_US + 10 * S) == R.pending_transfer_expired
        book.ok(post(hold), now_us=NOW_US + 10 * S - 1)

    def test_rejects_a_post_into_a_closed_account(self, book: Book) -> None:
        a, b = book.open(), book.open()
        hold = book.hold(a, b, 30)
        book.ok(CloseAccount(b))
        assert book.code_of(post(hold)) == R.account_closed

    def test_resubmitting_a_post_returns_exists(self, book: Book) -> None:
        a, b = book.open(), book.open()
        hold = book.hold(a, b, 30)
        book.ok(post(hold))
        (outcome,) = book.run(post(hold))
        assert outcome.status == "exists"
        assert isinstance(outcome.record, Transfer) and outcome.record.amount_minor == 30
        (outcome,) = book.run(post(hold, 30, debit_account_id=a))
        assert outcome.status == "exists"

    def test_resubmitting_a_post_with_another_amount_is_rejected(self, book: Book) -> None:
        a, b = book.open(), book.open()
        hold = book.hold(a, b, 30)
        book.ok(post(hold, 10))
        assert book.code_of(post(hold, 11)) == R.id_already_used_with_different_fields

    @pytest.mark.parametrize(
        ("fields", "code"),
        [
            ({"debit_account_id": uid(9)}, R.pending_transfer_has_different_debit_account_id),
            ({"credit_account_id": uid(9)}, R.pending_transfer_has_different_credit_account_id),
            ({"ledger": "EUR"}, R.pending_transfer_has_different_ledger),
            ({"code": 9}, R.pending_transfer_has_different_code),
        ],
    )
    def test_rejects_fields_that_differ_from_the_pending_transfer(
        self, book: Book, fields: dict[str, Any], code: RejectionCode
    ) -> None:
        a, b = book.open(), book.open()
        hold = book.hold(a, b, 30)
        assert book.code_of(post(hold, **fields)) == code


class TestVoid:
    def test_releases_the_reservation(self, book: Book) -> None:
        a, b = book.open(), book.open()
        hold = book.hold(a, b, 30)
        (event,) = book.ok(void(hold))
        assert isinstance(event, PendingTransferVoided)
        assert event.amount_minor == 30
        assert book.balances(a) == (0, 0, 0, 0) == book.balances(b)
        assert book.state.transfers[hold].pending_status == PendingStatus.voided

    def test_accepts_the_pending_amount_but_no_other(self, book: Book) -> None:
        a, b = book.open(), book.open()
        hold = book.hold(a, b, 30)
        assert book.code_of(void(hold, 29)) == R.pending_transfer_has_different_amount
        book.ok(void(hold, 30))

    def test_is_allowed_on_a_closed_account(self, book: Book) -> None:
        a, b = book.open(), book.open()
        hold = book.hold(a, b, 30)
        book.ok(CloseAccount(a))
        book.ok(void(hold))
        assert book.balances(a) == (0, 0, 0, 0)

    def test_cannot_void_a_posted_transfer_nor_post_a_voided_one(self, book: Book) -> None:
        a, b = book.open(), book.open()
        posted, voided = book.hold(a, b, 30), book.hold(a, b, 30)
        book.ok(post(posted))
        book.ok(void(voided))
        void_posted = CreateTransfer(uid(601), pending_id=posted, flags=VOID)
        assert book.code_of(void_posted) == R.pending_transfer_already_posted
        again = CreateTransfer(uid(502), pending_id=voided, flags=POST)
        assert book.code_of(again) == R.pending_transfer_already_voided


class TestReferences:
    def test_rejects_a_post_without_pending_id(self, book: Book) -> None:
        assert book.code_of(CreateTransfer(uid(1), flags=POST)) == R.pending_id_must_be_set
        nil = CreateTransfer(uid(1), flags=POST, pending_id=NIL_ID)
        assert book.code_of(nil) == R.pending_id_must_be_set

    def test_rejects_a_plain_transfer_posting_nothing(self, book: Book) -> None:
        a, b = book.open(), book.open()
        plain = book.transfer(a, b, 5)
        assert book.code_of(post(plain)) == R.pending_transfer_not_pending

    def test_rejects_a_timeout_on_a_post(self, book: Book) -> None:
        a, b = book.open(), book.open()
        hold = book.hold(a, b, 30)
        assert book.code_of(post(hold, timeout_s=5)) == R.timeout_reserved_for_pending_transfer

    def test_rejects_pending_together_with_post(self, book: Book) -> None:
        flags = TransferFlags(pending=True, post_pending_transfer=True)
        code, detail = book.reject(CreateTransfer(uid(1), uid(2), uid(3), 1, "USD", 1, flags))
        assert code == R.flags_are_mutually_exclusive
        assert "pending and post_pending_transfer" in detail

    def test_rejects_post_together_with_void(self, book: Book) -> None:
        flags = TransferFlags(post_pending_transfer=True, void_pending_transfer=True)
        assert book.code_of(CreateTransfer(uid(1), pending_id=uid(2), flags=flags)) == (
            R.flags_are_mutually_exclusive
        )

    def test_status_is_reported_before_differing_fields(self, book: Book) -> None:
        a, b = book.open(), book.open()
        hold = book.hold(a, b, 30)
        book.ok(void(hold))
        assert book.code_of(post(hold, 99, code=7)) == R.pending_transfer_already_voided


class TestExpire:
    def test_expires_holds_at_their_deadline_and_releases_them(self, book: Book) -> None:
        a, b = book.open(), book.open()
        early, late = book.hold(a, b, 10, timeout_s=5), book.hold(a, b, 20, timeout_s=9)
        assert book.state.next_expiry_us() == NOW_US + 5 * S
        assert book.ok(ExpirePendingTransfers(now_us=NOW_US + 5 * S - 1)) == ()
        (event,) = book.ok(ExpirePendingTransfers(now_us=NOW_US + 5 * S))
        assert isinstance(event, PendingTransferExpired)
        assert (event.pending_id, event.amount_minor) == (early, 10)
        assert (event.stream_id, event.stream_version) == (f"transfer-{early}", 2)
        assert event.debit_account_after == AccountBalances(20, 0, 0, 0)
        assert book.state.transfers[early].pending_status == PendingStatus.expired
        assert book.state.transfers[late].pending_status == PendingStatus.pending
        assert book.state.next_expiry_us() == NOW_US + 9 * S

    def test_expires_in_deadline_order_and_tracks_shared_accounts(self, book: Book) -> None:
        a, b = book.open(), book.open()
        first = book.hold(a, b, 10, timeout_s=3)
        second = book.hold(a, b, 20, timeout_s=2)
        events = book.ok(ExpirePendingTransfers(now_us=NOW_US + 10 * S))
        assert [e.pending_id for e in events] == [second, first]  # type: ignore[attr-defined]
        afters = [e.debit_account_after for e in events]  # type: ignore[attr-defined]
        assert afters == [AccountBalances(10, 0, 0, 0), AccountBalances(0, 0, 0, 0)]

    def test_expires_at_most_limit_per_command(self, book: Book) -> None:
        a, b = book.open(), book.open()
        for _ in range(3):
            book.hold(a, b, 1, timeout_s=1)
        assert len(book.ok(ExpirePendingTransfers(now_us=NOW_US + S, limit=2))) == 2
        assert len(book.ok(ExpirePendingTransfers(now_us=NOW_US + S, limit=2))) == 1

    def test_skips_holds_already_posted_or_voided(self, book: Book) -> None:
        a, b = book.open(), book.open()
        posted, voided, live = (book.hold(a, b, 1, timeout_s=1) for _ in range(3))
        book.ok(post(posted))
        book.ok(void(voided))
        events = book.ok(ExpirePendingTransfers(now_us=NOW_US + S))
        assert [e.pending_id for e in events] == [live]  # type: ignore[attr-defined]
        assert book.state.next_expiry_us() is None
        assert book.state.expiries == []

    def test_expiry_works_on_closed_accounts(self, book: Book) -> None:
        a, b = book.open(), book.open()
        book.hold(a, b, 5, timeout_s=1)
        book.ok(CloseAccount(b))
        assert len(book.ok(ExpirePendingTransfers(now_us=NOW_US + S))) == 1

    def test_an_expired_hold_cannot_be_posted_or_voided(self, book: Book) -> None:
        a, b = book.open(), book.open()
        hold = book.hold(a, b, 5, timeout_s=1)
        book.ok(ExpirePendingTransfers(now_us=NOW_US + S))
        assert book.code_of(post(hold)) == R.pending_transfer_expired
        assert book.code_of(void(hold)) == R.pending_transfer_expired

    def test_replaying_an_old_expiry_changes_nothing(self, book: Book) -> None:
        a, b = book.open(), book.open()
        book.hold(a, b, 5, timeout_s=1)
        book.ok(ExpirePendingTransfers(now_us=NOW_US + S))
        book.now_us = NOW_US + S
        book.hold(a, b, 5, timeout_s=1)
        assert book.ok(ExpirePendingTransfers(now_us=NOW_US + S)) == ()

    @pytest.mark.parametrize(
        ("command", "where"),
        [
            (ExpirePendingTransfers(now_us=-1), "at $.now_us:"),
            (ExpirePendingTransfers(now_us=1, limit=0), "at $.limit:"),
        ],
    )
    def test_rejects_out_of_range_fields(
        self, book: Book, command: ExpirePendingTransfers, where: str
    ) -> None:
        code, detail = book.reject(command)
        assert code == R.invalid_field and detail.startswith(where)

    def test_yields_one_outcome_with_every_event(self) -> None:
        state = BookState()
        book = Book()
        a, b = book.open(), book.open()
        for _ in range(4):
            book.hold(a, b, 1, timeout_s=1)
        state = book.state
        (outcome,) = decide_batch(state, [ExpirePendingTransfers(now_us=NOW_US + S)], NOW_US + S)
        assert outcome.status == "created" and len(outcome.events) == 4
