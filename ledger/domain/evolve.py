"""evolve: apply one event to the state.

``evolve`` **mutates the state in place and returns the same object**: copying the book
for every transfer would cost more than deciding it. It recomputes every balance from the
event's amounts and checks the result against the balances after that the event carries,
so replaying a log re-verifies it; a mismatch, or an event that does not fit the state
(unknown account, id already used, hold not pending), raises InvariantViolated.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from ledger.domain.errors import InvariantViolated
from ledger.domain.events import Event, TransferCreated
from ledger.domain.state import Account, BookState, PendingStatus, Transfer

__all__ = ["EVOLVERS", "evolve", "transfer_of_created"]

_PENDING: Final = PendingStatus.pending
_NONE: Final = PendingStatus.none


def evolve(state: BookState, event: Event) -> BookState:
    """Apply ``event`` to ``state`` in place and return ``state``.

    Balances are recomputed from the amounts and checked against the event's
    ``*_after`` balances; a mismatch, or an event that does not fit the state (unknown
    account, id already used), raises InvariantViolated.
    """
    try:
        EVOLVERS[event.type](state, event)
    except KeyError as error:
        raise InvariantViolated(f"{event.type} does not fit the state: {error!r}") from error
    return state


def _opened(state: BookState, e: Any) -> None:
    account = Account(
        id=e.account_id,
        ledger=e.ledger,
        code=e.code,
        flags=e.flags,
        metadata=e.metadata,
        timestamp_us=e.timestamp_us,
        scale=e.scale,
    )
    if state.accounts.setdefault(e.account_id, account) is not account:
        raise InvariantViolated(f"AccountOpened: account {e.account_id} already exists")


def _closed(state: BookState, e: Any) -> None:
    account = state.accounts[e.account_id]
    if account.closed or account.balances() != e.account_after:
        raise InvariantViolated(f"AccountClosed does not match account {e.account_id}")
    account.closed = True


def _mismatch(event: Any, account: Account) -> InvariantViolated:
    return InvariantViolated(
        f"{event.type} {event.stream_id}: balances after do not match account {account.id} "
        f"({account.balances()} before the event)"
    )


def transfer_of_created(e: TransferCreated) -> Transfer:
    """The transfer record a TransferCreated event creates."""
    return Transfer(
        e.transfer_id,
        e.debit_account_id,
        e.credit_account_id,
        e.amount_minor,
        e.ledger,
        e.code,
        e.flags,
        None,
        e.timeout_s,
        e.metadata,
        e.timestamp_us,
        e.expires_at_us,
        _PENDING if e.flags.pending else _NONE,
    )


def _created(state: BookState, e: Any) -> None:
    accounts = state.accounts
    debit = accounts[e.debit_account_id]
    credit = accounts[e.credit_account_id]
    amount = e.amount_minor
    da = e.debit_account_after
    ca = e.credit_account_after
    pending = e.flags.pending
    if pending:
        if (
            debit.debits_pending + amount != da[0]
            or debit.debits_posted != da[1]
            or credit.credits_pending + amount != ca[2]
            or credit.credits_posted != ca[3]
        ):
            raise _mismatch(e, debit)
        debit.debits_pending = da[0]
        credit.credits_pending = ca[2]
    else:
        if (
            debit.debits_posted + amount != da[1]
            or debit.debits_pending != da[0]
            or credit.credits_posted + amount != ca[3]
            or credit.credits_pending != ca[2]
        ):
            raise _mismatch(e, debit)
        debit.debits_posted = da[1]
        credit.credits_posted = ca[3]
    if (
        debit.credits_pending != da[2]
        or debit.credits_posted != da[3]
        or credit.debits_pending != ca[0]
        or credit.debits_posted != ca[1]
    ):
        raise _mismatch(e, credit)
    transfer = transfer_of_created(e)
    if state.transfers.setdefault(e.transfer_id, transfer) is not transfer:
        raise InvariantViolated(f"TransferCreated: transfer {e.transfer_id} already exists")
    if e.expires_at_us is not None:
        state.index_expiry(transfer)


def _release(state: BookState, e: Any, posted_minor: int, status: PendingStatus) -> Transfer:
    """Release pending transfer ``e.pending_id``'s hold, post ``posted_minor`` of it, mark
    it ``status`` and check the balances after."""
    pending = state.transfers[e.pending_id]
    if pending.pending_status is not _PENDING:
        raise InvariantViolated(f"{e.type}: transfer {e.pending_id} is not pending")
    debit = state.accounts[pending.debit_account_id]
    credit = state.accounts[pending.credit_account_id]
    held = pending.amount_minor
    da = e.debit_account_after
    ca = e.credit_account_after
    if (
        debit.id.int != e.debit_account_id.int
        or credit.id.int != e.credit_account_id.int
        or debit.debits_pending - held != da[0]
        or debit.debits_posted + posted_minor != da[1]
        or (debit.credits_pending, debit.credits_posted) != (da[2], da[3])
        or credit.credits_pending - held != ca[2]
        or credit.credits_posted + posted_minor != ca[3]
        or (credit.debits_pending, credit.debits_posted) != (ca[0], ca[1])
    ):
        raise _mismatch(e, debit)
    debit.debits_pending, debit.debits_posted = da[0], da[1]
    credit.credits_pending, credit.credits_posted = ca[2], ca[3]
    pending.pending_status = status
    if status is PendingStatus.posted:
        pending.amount_posted_minor = posted_minor
    return pending


def _resolving_transfer(state: BookState, e: Any, pending: Transfer) -> None:
    transfer = Transfer(
        e.transfer_id,
        pending.debit_account_id,
        pending.credit_account_id,
        e.amount_minor,
        pending.ledger,
        pending.code,
        e.flags,
        pending.id,
        0,
        e.metadata,
        e.timestamp_us,
        None,
        _NONE,
    )
    if state.transfers.setdefault(e.transfer_id, transfer) is not transfer:
        raise InvariantViolated(f"{e.type}: transfer {e.transfer_id} already exists")


def _posted(state: BookState, e: Any) -> None:
    pending = state.transfers[e.pending_id]
    if pending.amount_minor != e.pending_amount_minor or e.amount_minor > pending.amount_minor:
        raise InvariantViolated(f"PendingTransferPosted does not match {e.pending_id}")
    _resolving_transfer(state, e, _release(state, e, e.amount_minor, PendingStatus.posted))


def _voided(state: BookState, e: Any) -> None:
    pending = state.transfers[e.pending_id]
    if pending.amount_minor != e.amount_minor:
        raise InvariantViolated(f"PendingTransferVoided does not match {e.pending_id}")
    _resolving_transfer(state, e, _release(state, e, 0, PendingStatus.voided))


def _expired(state: BookState, e: Any) -> None:
    pending = state.transfers[e.pending_id]
    if pending.amount_minor != e.amount_minor or pending.expires_at_us != e.expires_at_us:
        raise InvariantViolated(f"PendingTransferExpired does not match {e.pending_id}")
    _release(state, e, 0, PendingStatus.expired)
    state.drop_stale_expiries()


def _forbidden(state: BookState, e: Any) -> None:
    if e.pending_id in state.transfers:
        raise InvariantViolated(f"PendingTransferForbidden for existing transfer {e.pending_id}")
    state.forbidden[e.pending_id] = e.transfer_id


EVOLVERS: Final[dict[str, Callable[[BookState, Any], None]]] = {
    "PendingTransferForbidden": _forbidden,
    "TransferCreated": _created,
    "PendingTransferPosted": _posted,
    "PendingTransferVoided": _voided,
    "PendingTransferExpired": _expired,
    "AccountOpened": _opened,
    "AccountClosed": _closed,
}
