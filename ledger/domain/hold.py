"""Rules for holds (pending transfers): post, void and expire.

A pending transfer reserves its amount: the debit account's ``debits_pending`` and the
credit account's ``credits_pending`` grow by it, and it counts against the balance limits.
It then ends exactly once:

* posted (by a transfer with ``post_pending_transfer``) for its full amount or less: the
  whole reservation is released and the posted amount moves to the posted balances;
* voided (``void_pending_transfer``): the reservation is released;
* expired, when an ``ExpirePendingTransfers`` command carries a time at or past its
  deadline. A post or void in a batch whose time is at or past the deadline is rejected
  with ``pending_transfer_expired`` even before the expiry command has run, so the
  outcome never depends on when the expirer last ran.

A closed account still lets its holds be voided or expire (the funds go back), but not
posted (TigerBeetle's rule).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final
from uuid import UUID

from ledger.domain.commands import (
    CancelPendingTransfer,
    CreateTransfer,
    ExpirePendingTransfers,
    TransferFlags,
)
from ledger.domain.errors import CommandRejected, InvariantViolated, RejectionCode
from ledger.domain.events import (
    Event,
    PendingTransferExpired,
    PendingTransferForbidden,
    PendingTransferPosted,
    PendingTransferVoided,
    trusted,
)
from ledger.domain.money import AMOUNT_MAX, EXPIRE_BATCH_MAX, AccountBalances
from ledger.domain.state import Account, BookState, PendingStatus, Transfer

__all__ = [
    "decide_cancel_pending_transfer",
    "decide_expire_pending_transfers",
    "decide_post_or_void",
]

_R = RejectionCode
_ENDED: Final = {
    PendingStatus.posted: _R.pending_transfer_already_posted,
    PendingStatus.voided: _R.pending_transfer_already_voided,
    PendingStatus.expired: _R.pending_transfer_expired,
}


def decide_post_or_void(
    state: BookState, command: CreateTransfer, now_us: int
) -> tuple[Event, ...]:
    """PendingTransferPosted or PendingTransferVoided; raises CommandRejected.

    The caller has checked the fields, the id, idempotency and that exactly one of
    post_pending_transfer / void_pending_transfer is set.
    """
    post = command.flags.post_pending_transfer
    pending = _find_pending(state, command, now_us)
    _check_same_as_pending(command, pending)
    if post:
        amount = command.amount_minor or pending.amount_minor
        if amount > pending.amount_minor:
            raise CommandRejected(
                _R.exceeds_pending_transfer_amount,
                f"post of {amount} exceeds pending amount {pending.amount_minor} "
                f"(pending transfer {pending.id})",
            )
    else:
        amount = pending.amount_minor
        if command.amount_minor not in (0, amount):
            raise CommandRejected(
                _R.pending_transfer_has_different_amount,
                f"void of {command.amount_minor}, pending amount is {amount} "
                f"(pending transfer {pending.id})",
            )
    debit = _account_of(state, pending, pending.debit_account_id)
    credit = _account_of(state, pending, pending.credit_account_id)
    if post:
        _check_can_post(debit, credit, amount)
    return (_resolved(command, pending, debit, credit, amount, post, now_us),)


def _find_pending(state: BookState, command: CreateTransfer, now_us: int) -> Transfer:
    pending_id = command.pending_id
    if pending_id is None or pending_id.int == 0:
        raise CommandRejected(_R.pending_id_must_be_set, "a post or void needs pending_id")
    if pending_id.int == command.id.int:
        raise CommandRejected(
            _R.pending_id_must_be_different, f"pending_id is the transfer's own id {pending_id}"
        )
    if command.timeout_s:
        raise CommandRejected(
            _R.timeout_reserved_for_pending_transfer,
            f"timeout_s {command.timeout_s} on a post or void",
        )
    if command.amount_minor > AMOUNT_MAX:
        raise CommandRejected(
            _R.amount_exceeds_maximum,
            f"amount {command.amount_minor} above AMOUNT_MAX {AMOUNT_MAX}",
        )
    pending = state.transfers.get(pending_id)
    if pending is None:
        raise CommandRejected(_R.pending_transfer_not_found, f"no transfer {pending_id}")
    if not pending.flags.pending:
        raise CommandRejected(
            _R.pending_transfer_not_pending, f"transfer {pending_id} was not created pending"
        )
    ended = _ENDED.get(pending.pending_status)
    if ended is not None:
        raise CommandRejected(ended, f"pending transfer {pending_id} is {pending.pending_status}")
    if pending.expires_at_us is not None and now_us >= pending.expires_at_us:
        raise CommandRejected(
            _R.pending_transfer_expired,
            f"pending transfer {pending_id} expired at {pending.expires_at_us} us, "
            f"batch time is {now_us} us",
        )
    return pending


def _check_same_as_pending(command: CreateTransfer, pending: Transfer) -> None:
    given_debit = command.debit_account_id
    if given_debit.int != 0 and given_debit.int != pending.debit_account_id.int:
        raise CommandRejected(
            _R.pending_transfer_has_different_debit_account_id,
            f"debit account {given_debit}, pending transfer {pending.id} debits "
            f"{pending.debit_account_id}",
        )
    given_credit = command.credit_account_id
    if given_credit.int != 0 and given_credit.int != pending.credit_account_id.int:
        raise CommandRejected(
            _R.pending_transfer_has_different_credit_account_id,
            f"credit account {given_credit}, pending transfer {pending.id} credits "
            f"{pending.credit_account_id}",
        )
    if command.ledger and command.ledger != pending.ledger:
        raise CommandRejected(
            _R.pending_transfer_has_different_ledger,
            f"ledger {command.ledger}, pending transfer {pending.id} is {pending.ledger}",
        )
    if command.code and command.code != pending.code:
        raise CommandRejected(
            _R.pending_transfer_has_different_code,
            f"code {command.code}, pending transfer {pending.id} has code {pending.code}",
        )


def _account_of(state: BookState, pending: Transfer, account_id: UUID) -> Account:
    account = state.accounts.get(account_id)
    if account is None:
        raise InvariantViolated(
            f"account {account_id} of pending transfer {pending.id} is not in the state: "
            "load a pending transfer's accounts with it"
        )
    return account


def _check_can_post(debit: Account, credit: Account, amount: int) -> None:
    if debit.closed:
        raise CommandRejected(_R.account_closed, f"debit account {debit.id} is closed")
    if credit.closed:
        raise CommandRejected(_R.account_closed, f"credit account {credit.id} is closed")
    # Cannot fire while debits_pending + debits_posted <= AMOUNT_MAX (which creation
    # enforces), since a post moves at most the held amount; kept so that no code path
    # can take a balance past AMOUNT_MAX.
    if debit.debits_posted + amount > AMOUNT_MAX:
        raise CommandRejected(
            _R.overflows_debits_posted,
            f"debits_posted {debit.debits_posted} + amount {amount} exceeds AMOUNT_MAX "
            f"{AMOUNT_MAX} (account {debit.id})",
        )
    if credit.credits_posted + amount > AMOUNT_MAX:
        raise CommandRejected(
            _R.overflows_credits_posted,
            f"credits_posted {credit.credits_posted} + amount {amount} exceeds AMOUNT_MAX "
            f"{AMOUNT_MAX} (account {credit.id})",
        )


def _released(account: Account, pending: Transfer, debit_side: bool) -> tuple[int, int]:
    """(pending balance after releasing the hold, posted balance before posting)."""
    held = account.debits_pending if debit_side else account.credits_pending
    if held < pending.amount_minor:
        raise InvariantViolated(
            f"account {account.id} holds {held} pending, less than pending transfer "
            f"{pending.id} of {pending.amount_minor}"
        )
    posted = account.debits_posted if debit_side else account.credits_posted
    return held - pending.amount_minor, posted


def _resolved(
    command: CreateTransfer,
    pending: Transfer,
    debit: Account,
    credit: Account,
    amount: int,
    post: bool,
    now_us: int,
) -> Event:
    d_pending, d_posted = _released(debit, pending, debit_side=True)
    c_pending, c_posted = _released(credit, pending, debit_side=False)
    if post:
        d_posted += amount
        c_posted += amount
    values = {
        "type": "PendingTransferPosted" if post else "PendingTransferVoided",
        "schema_version": 1,
        "transfer_id": command.id,
        "pending_id": pending.id,
        "debit_account_id": debit.id,
        "credit_account_id": credit.id,
        "amount_minor": amount,
        "ledger": pending.ledger,
        "code": pending.code,
        "flags": command.flags,
        "metadata": dict(command.metadata),
        "timestamp_us": now_us,
        "debit_account_after": AccountBalances(
            d_pending, d_posted, debit.credits_pending, debit.credits_posted
        ),
        "credit_account_after": AccountBalances(
            credit.debits_pending, credit.debits_posted, c_pending, c_posted
        ),
    }
    if post:
        values["pending_amount_minor"] = pending.amount_minor
        return trusted(PendingTransferPosted, values)
    return trusted(PendingTransferVoided, values)


def decide_expire_pending_transfers(
    state: BookState, command: ExpirePendingTransfers, now_us: int
) -> tuple[Event, ...]:
    """One PendingTransferExpired per pending transfer due at ``command.now_us``, earliest
    deadline first (possibly none). ``now_us`` (the batch time) is not used: the command
    carries its own time."""
    if command.now_us < 0:
        raise CommandRejected(
            _R.invalid_field, f"at $.now_us: must not be negative, not {command.now_us}"
        )
    if not 1 <= command.limit <= EXPIRE_BATCH_MAX:
        raise CommandRejected(
            _R.invalid_field, f"at $.limit: must be in 1..{EXPIRE_BATCH_MAX}, not {command.limit}"
        )
    return tuple(_expirations(state, command.now_us, command.limit))


def _expirations(state: BookState, now_us: int, limit: int) -> Iterator[Event]:
    # Several holds may share an account: track its balances as the events accumulate.
    balances: dict[UUID, list[int]] = {}
    for pending in state.due_pending_transfers(now_us, limit):
        debit = _account_of(state, pending, pending.debit_account_id)
        credit = _account_of(state, pending, pending.credit_account_id)
        debit_now = balances.setdefault(debit.id, list(debit.balances()))
        credit_now = balances.setdefault(credit.id, list(credit.balances()))
        amount = pending.amount_minor
        if debit_now[0] < amount or credit_now[2] < amount:
            raise InvariantViolated(
                f"pending transfer {pending.id} of {amount} exceeds what its accounts hold"
            )
        debit_now[0] -= amount
        credit_now[2] -= amount
        yield trusted(
            PendingTransferExpired,
            {
                "type": "PendingTransferExpired",
                "schema_version": 1,
                "pending_id": pending.id,
                "debit_account_id": debit.id,
                "credit_account_id": credit.id,
                "amount_minor": amount,
                "ledger": pending.ledger,
                "code": pending.code,
                "expires_at_us": pending.expires_at_us,
                "timestamp_us": now_us,
                "debit_account_after": AccountBalances(*debit_now),
                "credit_account_after": AccountBalances(*credit_now),
            },
        )


_VOID: Final = TransferFlags(void_pending_transfer=True)


def decide_cancel_pending_transfer(
    state: BookState, command: CancelPendingTransfer, now_us: int
) -> tuple[Event, ...] | Transfer:
    """The TCC cancel (see ``CancelPendingTransfer``): a void, an empty cancellation that
    forbids the id, nothing (the hold already ended), or the stored void (``exists``)."""
    if command.id.int == 0:
        raise CommandRejected(_R.id_must_not_be_zero, "transfer id is the nil UUID")
    pending_id = command.pending_id
    if pending_id.int == 0:
        raise CommandRejected(_R.pending_id_must_be_set, "a cancel needs pending_id")
    if pending_id.int == command.id.int:
        raise CommandRejected(
            _R.pending_id_must_be_different, f"pending_id is the cancel's own id {pending_id}"
        )
    existing = state.transfers.get(command.id)
    if existing is not None:
        if existing.flags.void_pending_transfer and existing.pending_id == pending_id:
            return existing
        raise CommandRejected(
            _R.id_already_used_with_different_fields,
            f"transfer {command.id} exists and is not the void of {pending_id}",
        )
    if command.id in state.forbidden:
        # The cancel's own id was spent by an earlier cancel that forbade it: a void under
        # that id would need the stream the empty cancellation already holds.
        raise CommandRejected(
            _R.id_already_cancelled,
            f"transfer {command.id} was cancelled before it was created "
            f"(by {state.forbidden[command.id]})",
        )
    if pending_id in state.forbidden:
        return ()
    pending = state.transfers.get(pending_id)
    if pending is None:
        forbidden = trusted(
            PendingTransferForbidden,
            {
                "type": "PendingTransferForbidden",
                "schema_version": 1,
                "transfer_id": command.id,
                "pending_id": pending_id,
                "timestamp_us": now_us,
            },
        )
        return (forbidden,)
    if not pending.flags.pending:
        raise CommandRejected(
            _R.pending_transfer_not_pending, f"transfer {pending_id} was not created pending"
        )
    status = pending.pending_status
    if status is PendingStatus.posted:
        raise CommandRejected(
            _R.pending_transfer_already_posted,
            f"pending transfer {pending_id} was posted: it can no longer be cancelled",
        )
    if status is not PendingStatus.pending or (
        pending.expires_at_us is not None and now_us >= pending.expires_at_us
    ):
        return ()  # voided or expired (or expiring now): nothing left to release
    void = CreateTransfer(id=command.id, pending_id=pending_id, flags=_VOID)
    return decide_post_or_void(state, void, now_us)
