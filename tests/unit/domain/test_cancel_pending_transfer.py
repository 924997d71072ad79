"""CancelPendingTransfer: the TCC cancel, which acts as the barrier against the anomalies.

Confirm/cancel are idempotent; a cancel before its try records an empty cancellation and
the late try is refused (no hanging hold); a cancel after the post is refused.
"""

from __future__ import annotations

from ledger.domain import (
    CancelPendingTransfer,
    CreateTransfer,
    PendingStatus,
    PendingTransferForbidden,
    PendingTransferVoided,
    RejectionCode,
)
from tests.unit.domain.support import NOW_US, PENDING, POST, Book, uid

R = RejectionCode


def test_cancel_before_try_forbids_the_try() -> None:
    book = Book()
    a, b = book.open(), book.open()
    try_id, cancel_id = uid(1), uid(2)
    [event] = book.ok(CancelPendingTransfer(cancel_id, pending_id=try_id))
    assert isinstance(event, PendingTransferForbidden)
    assert event.stream_id == f"transfer-{try_id}"
    code, detail = book.reject(CreateTransfer(try_id, a, b, 5, "USD", 1, flags=PENDING))
    assert code == R.id_already_cancelled and str(cancel_id) in detail
    assert book.balances(a) == (0, 0, 0, 0)


def test_two_cancels_before_a_late_try_change_nothing_more() -> None:
    book = Book()
    a, b = book.open(), book.open()
    book.ok(CancelPendingTransfer(uid(2), pending_id=uid(1)))
    assert book.ok(CancelPendingTransfer(uid(2), pending_id=uid(1))) == ()
    assert book.ok(CancelPendingTransfer(uid(3), pending_id=uid(1))) == ()
    assert book.code_of(CreateTransfer(uid(1), a, b, 5, "USD", 1, flags=PENDING)) == (
        R.id_already_cancelled
    )
    assert [e.type for e in book.log].count("PendingTransferForbidden") == 1


def test_cancel_voids_a_pending_transfer_and_repeats_as_exists() -> None:
    book = Book()
    a, b = book.open(), book.open()
    hold = book.hold(a, b, 40)
    assert book.balances(a) == (40, 0, 0, 0)
    [event] = book.ok(CancelPendingTransfer(uid(9), pending_id=hold))
    assert isinstance(event, PendingTransferVoided) and event.amount_minor == 40
    assert book.balances(a) == (0, 0, 0, 0)
    assert book.state.transfers[hold].pending_status == PendingStatus.voided
    [again] = book.run(CancelPendingTransfer(uid(9), pending_id=hold))
    assert again.status == "exists" and again.events == ()
    assert book.ok(CancelPendingTransfer(uid(10), pending_id=hold)) == ()


def test_cancel_after_post_is_refused() -> None:
    book = Book()
    a, b = book.open(), book.open()
    hold = book.hold(a, b, 40)
    book.ok(CreateTransfer(uid(5), pending_id=hold, flags=POST))
    assert book.code_of(CancelPendingTransfer(uid(6), pending_id=hold)) == (
        R.pending_transfer_already_posted
    )


def test_cancel_of_an_expired_hold_succeeds_without_events() -> None:
    book = Book()
    a, b = book.open(), book.open()
    hold = book.hold(a, b, 40, timeout_s=1)
    later = NOW_US + 2_000_000
    assert book.ok(CancelPendingTransfer(uid(7), pending_id=hold), now_us=later) == ()


def test_cancel_of_a_plain_transfer_is_refused() -> None:
    book = Book()
    a, b = book.open(), book.open()
    plain = book.transfer(a, b, 5)
    assert book.code_of(CancelPendingTransfer(uid(8), pending_id=plain)) == (
        R.pending_transfer_not_pending
    )


def test_cancel_checks_its_ids() -> None:
    book = Book()
    assert book.code_of(CancelPendingTransfer(uid(0), pending_id=uid(1))) == R.id_must_not_be_zero
    assert book.code_of(CancelPendingTransfer(uid(1), pending_id=uid(0))) == (
        R.pending_id_must_be_set
    )
    assert book.code_of(CancelPendingTransfer(uid(1), pending_id=uid(1))) == (
        R.pending_id_must_be_different
    )


def test_a_cancel_whose_own_id_an_earlier_cancel_forbade_is_refused() -> None:
    # uid(1) is spent by the empty cancellation; a later cancel under that id must not
    # become a void on the stream the cancellation holds.
    book = Book()
    a, b = book.open(), book.open()
    hold = book.hold(a, b, 40)
    book.ok(CancelPendingTransfer(uid(2), pending_id=uid(1)))
    code, detail = book.reject(CancelPendingTransfer(uid(1), pending_id=hold))
    assert code == R.id_already_cancelled and str(uid(2)) in detail
    assert book.state.transfers[hold].pending_status == PendingStatus.pending
    assert book.balances(a) == (40, 0, 0, 0)
