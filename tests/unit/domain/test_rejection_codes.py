"""Every rejection code, triggered once each by the smallest command that breaks its rule.

Goal: the table in ``docs/rejection-codes.md`` is not aspirational: each code exists
because some input produces it. Method: one shared book with accounts and holds in every
interesting state; one scenario per code; a final check that the scenarios cover the enum.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from uuid import UUID

import pytest

from ledger.domain import (
    AMOUNT_MAX,
    NIL_ID,
    AccountFlags,
    CancelPendingTransfer,
    CloseAccount,
    CreateTransfer,
    ExpirePendingTransfers,
    OpenAccount,
    RejectionCode,
    TransferFlags,
    decide_batch,
)
from tests.unit.domain.support import (
    NO_NEGATIVE_LIABILITY,
    NO_OVERDRAFT,
    NOW_US,
    PENDING,
    POST,
    VOID,
    Book,
    uid,
)

R = RejectionCode


@dataclass
class World:
    """A book with one account or hold in each state the scenarios need."""

    book: Book
    a: UUID  # USD, no limits
    b: UUID  # USD, no limits
    capped: UUID  # USD, debits_must_not_exceed_credits, no credits
    liability: UUID  # USD, credits_must_not_exceed_debits, no debits
    eur: UUID
    usd_scale_0: UUID
    closed: UUID
    plain: UUID  # a single-phase transfer a -> b of 5
    hold: UUID  # a pending a -> b of 100, 60 s
    posted_hold: UUID
    voided_hold: UUID
    expired_hold: UUID

    def tid(self) -> UUID:
        return self.book.new_id()

    def transfer(self, **fields: object) -> CreateTransfer:
        values: dict[str, object] = {
            "id": self.tid(),
            "debit_account_id": self.a,
            "credit_account_id": self.b,
            "amount_minor": 1,
            "ledger": "USD",
            "code": 1,
        }
        values.update(fields)
        return CreateTransfer(**values)  # type: ignore[arg-type]

    def post(self, **fields: object) -> CreateTransfer:
        values: dict[str, object] = {"id": self.tid(), "pending_id": self.hold, "flags": POST}
        values.update(fields)
        return CreateTransfer(**values)  # type: ignore[arg-type]


@pytest.fixture
def world() -> World:
    book = Book()
    a, b = book.open(), book.open()
    closed = book.open()
    book.ok(CloseAccount(closed))
    posted_hold = book.hold(a, b, 10)
    book.ok(CreateTransfer(book.new_id(), pending_id=posted_hold, flags=POST))
    voided_hold = book.hold(a, b, 10)
    book.ok(CreateTransfer(book.new_id(), pending_id=voided_hold, flags=VOID))
    expired_hold = book.hold(a, b, 10, timeout_s=1)
    book.ok(ExpirePendingTransfers(now_us=NOW_US + 1_000_000))
    return World(
        book=book,
        a=a,
        b=b,
        capped=book.open(flags=NO_OVERDRAFT),
        liability=book.open(flags=NO_NEGATIVE_LIABILITY),
        eur=book.open("EUR"),
        usd_scale_0=book.open(scale=0),
        closed=closed,
        plain=book.transfer(a, b, 5),
        hold=book.hold(a, b, 100, timeout_s=60),
        posted_hold=posted_hold,
        voided_hold=voided_hold,
        expired_hold=expired_hold,
    )


def _chain_codes(w: World, *transfers: CreateTransfer) -> list[RejectionCode | None]:
    return [o.code for o in w.book.run(*transfers)]


def linked_event_failed(w: World) -> RejectionCode:
    first = w.transfer(flags=TransferFlags(linked=True))
    codes = _chain_codes(w, first, w.transfer(amount_minor=0))
    assert codes == [R.linked_event_failed, R.amount_must_not_be_zero]
    return R.linked_event_failed


def linked_event_chain_open(w: World) -> RejectionCode:
    codes = _chain_codes(w, w.transfer(flags=TransferFlags(linked=True)))
    assert codes == [R.linked_event_chain_open]
    return R.linked_event_chain_open


def _big_balances(w: World) -> tuple[UUID, UUID]:
    """Two fresh accounts: the first has debits_posted, the second credits_posted, at
    AMOUNT_MAX."""
    x, y = w.book.open(), w.book.open()
    w.book.transfer(x, y, AMOUNT_MAX)
    return x, y


def _big_pending(w: World) -> tuple[UUID, UUID]:
    x, y = w.book.open(), w.book.open()
    w.book.hold(x, y, AMOUNT_MAX)
    return x, y


def overflows_debits(w: World) -> RejectionCode:
    x, y = w.book.open(), w.book.open()
    w.book.transfer(x, y, AMOUNT_MAX - 1)
    return w.book.code_of(w.transfer(debit_account_id=x, amount_minor=2, flags=PENDING))


def overflows_credits(w: World) -> RejectionCode:
    x, y = w.book.open(), w.book.open()
    w.book.transfer(x, y, AMOUNT_MAX - 1)
    return w.book.code_of(w.transfer(credit_account_id=y, amount_minor=2, flags=PENDING))


def id_already_cancelled(w: World) -> RejectionCode:
    late_try = w.transfer(flags=PENDING)
    w.book.ok(CancelPendingTransfer(uid(900), pending_id=late_try.id))
    return w.book.code_of(late_try)


SCENARIOS: dict[RejectionCode, Callable[[World], RejectionCode]] = {
    R.linked_event_failed: linked_event_failed,
    R.linked_event_chain_open: linked_event_chain_open,
    R.invalid_field: lambda w: w.book.code_of(w.transfer(amount_minor=-1)),
    R.id_must_not_be_zero: lambda w: w.book.code_of(w.transfer(id=NIL_ID)),
    R.id_already_used_with_different_fields: lambda w: w.book.code_of(
        w.transfer(id=w.plain, amount_minor=6)
    ),
    R.id_already_cancelled: id_already_cancelled,
    R.flags_are_mutually_exclusive: lambda w: w.book.code_of(
        w.post(flags=TransferFlags(pending=True, post_pending_transfer=True))
    ),
    R.debit_account_id_must_not_be_zero: lambda w: w.book.code_of(
        w.transfer(debit_account_id=NIL_ID)
    ),
    R.credit_account_id_must_not_be_zero: lambda w: w.book.code_of(
        w.transfer(credit_account_id=NIL_ID)
    ),
    R.accounts_must_be_different: lambda w: w.book.code_of(w.transfer(credit_account_id=w.a)),
    R.pending_id_must_not_be_set: lambda w: w.book.code_of(w.transfer(pending_id=w.hold)),
    R.pending_id_must_be_set: lambda w: w.book.code_of(w.post(pending_id=None)),
    R.pending_id_must_be_different: lambda w: w.book.code_of(
        w.post(id=uid(77), pending_id=uid(77))
    ),
    R.timeout_reserved_for_pending_transfer: lambda w: w.book.code_of(w.transfer(timeout_s=5)),
    R.ledger_must_not_be_empty: lambda w: w.book.code_of(w.transfer(ledger="")),
    R.code_must_not_be_zero: lambda w: w.book.code_of(w.transfer(code=0)),
    R.amount_must_not_be_zero: lambda w: w.book.code_of(w.transfer(amount_minor=0)),
    R.amount_exceeds_maximum: lambda w: w.book.code_of(w.transfer(amount_minor=AMOUNT_MAX + 1)),
    R.account_not_found: lambda w: w.book.code_of(CloseAccount(uid(404))),
    R.debit_account_not_found: lambda w: w.book.code_of(w.transfer(debit_account_id=uid(404))),
    R.credit_account_not_found: lambda w: w.book.code_of(w.transfer(credit_account_id=uid(404))),
    R.accounts_must_have_the_same_ledger: lambda w: w.book.code_of(
        w.transfer(credit_account_id=w.eur)
    ),
    R.transfer_must_have_the_same_ledger_as_accounts: lambda w: w.book.code_of(
        w.transfer(ledger="EUR")
    ),
    R.pending_transfer_not_found: lambda w: w.book.code_of(w.post(pending_id=uid(404))),
    R.pending_transfer_not_pending: lambda w: w.book.code_of(w.post(pending_id=w.plain)),
    R.pending_transfer_already_posted: lambda w: w.book.code_of(w.post(pending_id=w.posted_hold)),
    R.pending_transfer_already_voided: lambda w: w.book.code_of(w.post(pending_id=w.voided_hold)),
    R.pending_transfer_expired: lambda w: w.book.code_of(w.post(pending_id=w.expired_hold)),
    R.pending_transfer_has_different_debit_account_id: lambda w: w.book.code_of(
        w.post(debit_account_id=w.capped)
    ),
    R.pending_transfer_has_different_credit_account_id: lambda w: w.book.code_of(
        w.post(credit_account_id=w.capped)
    ),
    R.pending_transfer_has_different_ledger: lambda w: w.book.code_of(w.post(ledger="EUR")),
    R.pending_transfer_has_different_code: lambda w: w.book.code_of(w.post(code=2)),
    R.exceeds_pending_transfer_amount: lambda w: w.book.code_of(w.post(amount_minor=101)),
    R.pending_transfer_has_different_amount: lambda w: w.book.code_of(
        w.post(flags=VOID, amount_minor=50)
    ),
    R.account_closed: lambda w: w.book.code_of(w.transfer(credit_account_id=w.closed)),
    R.overflows_debits_pending: lambda w: w.book.code_of(
        w.transfer(debit_account_id=_big_pending(w)[0], flags=PENDING)
    ),
    R.overflows_credits_pending: lambda w: w.book.code_of(
        w.transfer(credit_account_id=_big_pending(w)[1], flags=PENDING)
    ),
    R.overflows_debits_posted: lambda w: w.book.code_of(
        w.transfer(debit_account_id=_big_balances(w)[0])
    ),
    R.overflows_credits_posted: lambda w: w.book.code_of(
        w.transfer(credit_account_id=_big_balances(w)[1])
    ),
    R.overflows_debits: overflows_debits,
    R.overflows_credits: overflows_credits,
    R.overflows_timeout: lambda w: w.book.code_of(w.transfer(flags=PENDING, timeout_s=10**13)),
    R.exceeds_credits: lambda w: w.book.code_of(w.transfer(debit_account_id=w.capped)),
    R.exceeds_debits: lambda w: w.book.code_of(w.transfer(credit_account_id=w.liability)),
}


@pytest.mark.parametrize("code", list(SCENARIOS), ids=str)
def test_scenario_produces_its_code(world: World, code: RejectionCode) -> None:
    assert SCENARIOS[code](world) == code


def test_every_code_has_a_scenario() -> None:
    assert set(SCENARIOS) == set(RejectionCode)


def test_a_rejected_command_changes_nothing_and_emits_no_event(world: World) -> None:
    before = world.book.state.copy()
    outcomes = decide_batch(
        world.book.state, [world.transfer(debit_account_id=world.capped)], NOW_US
    )
    assert outcomes[0].status == "rejected" and outcomes[0].events == ()
    assert world.book.state == before


def test_open_account_rejections_are_codes_too(world: World) -> None:
    book = world.book
    assert book.code_of(OpenAccount(uid(900), "usd", 1)) == R.invalid_field
    assert book.code_of(OpenAccount(NIL_ID, "USD", 1)) == R.id_must_not_be_zero
    assert book.code_of(OpenAccount(world.a, "EUR", 10)) == R.id_already_used_with_different_fields
    both = AccountFlags(debits_must_not_exceed_credits=True, credits_must_not_exceed_debits=True)
    assert book.code_of(OpenAccount(uid(901), "USD", 1, both)) == R.flags_are_mutually_exclusive
    assert book.code_of(OpenAccount(uid(902), "", 1)) == R.ledger_must_not_be_empty
    assert book.code_of(OpenAccount(uid(903), "USD", 0)) == R.code_must_not_be_zero
