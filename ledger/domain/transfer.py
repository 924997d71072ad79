"""Rules for ``CreateTransfer``: single-phase and pending transfers, and the checks every
transfer shares (fields, id, idempotency, flags). Posts and voids continue in
:mod:`ledger.domain.hold`.

This is the hot path of the ledger (one call per transfer), so it is written flat: the
checks run in precedence order (see ``RejectionCode``) as plain comparisons, UUIDs are
compared by their ``int`` (UUID ``==`` runs Python code), and the event is built the way
``events.trusted`` builds one, inline. In ``decide_batch`` the accepted transfer is also
applied here (``apply=True``), on the account records already in hand.
"""

from __future__ import annotations

from typing import Final

from pydantic import BaseModel

from ledger.domain.commands import CreateTransfer
from ledger.domain.errors import CommandRejected, RejectionCode
from ledger.domain.events import FIELDS_SET, Event, TransferCreated
from ledger.domain.evolve import EVOLVERS
from ledger.domain.hold import decide_post_or_void
from ledger.domain.money import (
    AMOUNT_MAX,
    CODE_MAX,
    TIMESTAMP_MAX_US,
    US_PER_S,
    AccountBalances,
    is_valid_ledger,
    metadata_problem,
)
from ledger.domain.state import Account, BookState, PendingStatus, Transfer

__all__ = ["create_transfer", "decide_create_transfer", "same_transfer", "transfer_field_problem"]

_R = RejectionCode
_new_balances = tuple.__new__
_B: Final = AccountBalances
_PENDING: Final = PendingStatus.pending
_NONE: Final = PendingStatus.none
_new_event = object.__new__
_set_event_dict = BaseModel.__dict__["__dict__"].__set__
_set_fields_set = BaseModel.__dict__["__pydantic_fields_set__"].__set__
_set_extra = BaseModel.__dict__["__pydantic_extra__"].__set__
_set_private = BaseModel.__dict__["__pydantic_private__"].__set__
_CREATED_FIELDS: Final = FIELDS_SET[TransferCreated]


_KNOWN_LEDGERS: set[str] = set()
_KNOWN_LEDGERS_MAX: Final = 4096


def _remember_ledger(ledger: str) -> bool:
    """Whether ``ledger`` is well-formed; remembers it if so (a set lookup is cheaper than
    the cached regex check, and a book has few ledger codes)."""
    if not is_valid_ledger(ledger):
        return False
    if len(_KNOWN_LEDGERS) < _KNOWN_LEDGERS_MAX:
        _KNOWN_LEDGERS.add(ledger)
    return True


def transfer_field_problem(command: CreateTransfer) -> str | None:
    """The first structural problem of the command, as ``at $.field: ...``; or None."""
    if command.amount_minor < 0:
        return f"at $.amount_minor: must not be negative, not {command.amount_minor}"
    if command.timeout_s < 0:
        return f"at $.timeout_s: must not be negative, not {command.timeout_s}"
    if not 0 <= command.code <= CODE_MAX:
        return f"at $.code: must be in 0..{CODE_MAX}, not {command.code}"
    if command.ledger and not is_valid_ledger(command.ledger):
        return f"at $.ledger: {command.ledger!r} is not a ledger code (A-Z, 0-9, _; 1..12)"
    return metadata_problem(command.metadata) if command.metadata else None


def decide_create_transfer(
    state: BookState, command: CreateTransfer, now_us: int
) -> tuple[Event, ...] | Transfer:
    """The events of any CreateTransfer, or the stored transfer for an identical
    resubmission (``exists``); raises CommandRejected. Does not change ``state``."""
    return create_transfer(state, command, now_us, False)


def create_transfer(
    state: BookState, command: CreateTransfer, now_us: int, apply: bool = True
) -> tuple[Event, ...] | Transfer:
    """Decide a CreateTransfer and, if ``apply`` and it is accepted, apply its events.

    With ``apply`` this is ``decide`` followed by ``evolve``, fused for the batch path:
    the accounts just checked are updated without being looked up again. The property
    tests replay every event log through ``evolve`` and compare, so the two cannot drift.
    """
    amount = command.amount_minor
    code = command.code
    ledger = command.ledger
    if (
        amount < 0
        or command.timeout_s < 0
        or code < 0
        or code > CODE_MAX
        or (command.metadata and metadata_problem(command.metadata))
        or (ledger and ledger not in _KNOWN_LEDGERS and not _remember_ledger(ledger))
    ):
        raise CommandRejected(_R.invalid_field, transfer_field_problem(command) or "")
    transfer_id = command.id
    if transfer_id.int == 0:
        raise CommandRejected(_R.id_must_not_be_zero, "transfer id is the nil UUID")
    existing = state.transfers.get(transfer_id)
    if existing is not None:
        return same_transfer(existing, command)
    if state.forbidden and transfer_id in state.forbidden:
        raise CommandRejected(
            _R.id_already_cancelled,
            f"transfer {transfer_id} was cancelled before it was created "
            f"(by {state.forbidden[transfer_id]})",
        )
    flags = command.flags
    if flags.post_pending_transfer or flags.void_pending_transfer:
        if flags.pending or (flags.post_pending_transfer and flags.void_pending_transfer):
            raise CommandRejected(_R.flags_are_mutually_exclusive, _flags_detail(command))
        events = decide_post_or_void(state, command, now_us)
        if apply:
            for event in events:
                EVOLVERS[event.type](state, event)
        return events
    return (_single_phase_or_pending(state, command, now_us, apply),)


def _single_phase_or_pending(
    state: BookState, command: CreateTransfer, now_us: int, apply: bool
) -> Event:
    debit_id = command.debit_account_id
    credit_id = command.credit_account_id
    if debit_id.int == 0:
        raise CommandRejected(_R.debit_account_id_must_not_be_zero, "no debit account")
    if credit_id.int == 0:
        raise CommandRejected(_R.credit_account_id_must_not_be_zero, "no credit account")
    if debit_id.int == credit_id.int:
        raise CommandRejected(
            _R.accounts_must_be_different, f"debit and credit account are both {debit_id}"
        )
    if command.pending_id is not None:
        raise CommandRejected(
            _R.pending_id_must_not_be_set,
            f"pending_id {command.pending_id} on a transfer that neither posts nor voids",
        )
    if command.timeout_s and not command.flags.pending:
        raise CommandRejected(
            _R.timeout_reserved_for_pending_transfer,
            f"timeout_s {command.timeout_s} on a transfer that is not pending",
        )
    ledger = command.ledger
    if not ledger:
        raise CommandRejected(_R.ledger_must_not_be_empty, "transfer has no ledger code")
    if command.code == 0:
        raise CommandRejected(_R.code_must_not_be_zero, "transfer code is 0")
    amount = command.amount_minor
    if amount == 0:
        raise CommandRejected(_R.amount_must_not_be_zero, "amount_minor is 0")
    if amount > AMOUNT_MAX:
        raise CommandRejected(
            _R.amount_exceeds_maximum, f"amount {amount} above AMOUNT_MAX {AMOUNT_MAX}"
        )
    accounts = state.accounts
    debit = accounts.get(debit_id)
    if debit is None:
        raise CommandRejected(_R.debit_account_not_found, f"no account {debit_id}")
    credit = accounts.get(credit_id)
    if credit is None:
        raise CommandRejected(_R.credit_account_not_found, f"no account {credit_id}")
    if (
        debit.ledger != ledger
        or credit.ledger != ledger
        or debit.scale != credit.scale
        or debit.closed
        or credit.closed
    ):
        _reject_ledgers_or_closed(debit, credit, ledger)
    return _transfer_created(state, command, debit, credit, now_us, apply)


def _reject_ledgers_or_closed(debit: Account, credit: Account, ledger: str) -> None:
    if debit.ledger != credit.ledger or debit.scale != credit.scale:
        raise CommandRejected(
            _R.accounts_must_have_the_same_ledger,
            f"debit account {debit.id} is {debit.ledger} (scale {debit.scale}), "
            f"credit account {credit.id} is {credit.ledger} (scale {credit.scale})",
        )
    if ledger != debit.ledger:
        raise CommandRejected(
            _R.transfer_must_have_the_same_ledger_as_accounts,
            f"transfer is {ledger}, accounts are {debit.ledger}",
        )
    if debit.closed:
        raise CommandRejected(_R.account_closed, f"debit account {debit.id} is closed")
    if credit.closed:
        raise CommandRejected(_R.account_closed, f"credit account {credit.id} is closed")
    raise AssertionError("unreachable: called only when a ledger or closed check fails")


def _check_balances(
    command: CreateTransfer, debit: Account, credit: Account, now_us: int
) -> int | None:
    """Reject a transfer that would overflow a balance or the deadline, or break a limit;
    return its deadline (None: it never expires)."""
    amount = command.amount_minor
    d_pending = debit.debits_pending
    d_posted = debit.debits_posted
    c_pending = credit.credits_pending
    c_posted = credit.credits_posted
    if command.flags.pending:
        if d_pending + amount > AMOUNT_MAX:
            raise _overflow(_R.overflows_debits_pending, debit, "debits_pending", d_pending, amount)
        if c_pending + amount > AMOUNT_MAX:
            raise _overflow(
                _R.overflows_credits_pending, credit, "credits_pending", c_pending, amount
            )
    else:
        if d_posted + amount > AMOUNT_MAX:
            raise _overflow(_R.overflows_debits_posted, debit, "debits_posted", d_posted, amount)
        if c_posted + amount > AMOUNT_MAX:
            raise _overflow(_R.overflows_credits_posted, credit, "credits_posted", c_posted, amount)
    debits = d_pending + d_posted
    credits = c_pending + c_posted
    if debits + amount > AMOUNT_MAX:
        raise _overflow(_R.overflows_debits, debit, "debits", debits, amount)
    if credits + amount > AMOUNT_MAX:
        raise _overflow(_R.overflows_credits, credit, "credits", credits, amount)
    expires_at_us = None
    if command.timeout_s:
        expires_at_us = now_us + command.timeout_s * US_PER_S
        if expires_at_us > TIMESTAMP_MAX_US:
            raise CommandRejected(
                _R.overflows_timeout,
                f"now_us {now_us} + timeout_s {command.timeout_s} is past {TIMESTAMP_MAX_US} us",
            )
    # The limits count pending debits (credits): a hold reserves funds it may later post.
    if debit.flags.debits_must_not_exceed_credits and debits + amount > debit.credits_posted:
        raise CommandRejected(
            _R.exceeds_credits,
            f"credits_posted {debit.credits_posted}, debits {d_posted} posted + {d_pending} "
            f"pending, amount {amount} (debit account {debit.id})",
        )
    if credit.flags.credits_must_not_exceed_debits and credits + amount > credit.debits_posted:
        raise CommandRejected(
            _R.exceeds_debits,
            f"debits_posted {credit.debits_posted}, credits {c_posted} posted + {c_pending} "
            f"pending, amount {amount} (credit account {credit.id})",
        )
    return expires_at_us


def _transfer_created(
    state: BookState,
    command: CreateTransfer,
    debit: Account,
    credit: Account,
    now_us: int,
    apply: bool,
) -> Event:
    expires_at_us = _check_balances(command, debit, credit, now_us)
    amount = command.amount_minor
    pending = command.flags.pending
    d_pending = debit.debits_pending
    d_posted = debit.debits_posted
    c_pending = credit.credits_pending
    c_posted = credit.credits_posted
    if pending:
        d_pending += amount
        c_pending += amount
    else:
        d_posted += amount
        c_posted += amount
    metadata = command.metadata
    event = _new_event(TransferCreated)  # trusted(), inlined: this runs once per transfer
    _set_event_dict(
        event,
        {
            "type": "TransferCreated",
            "schema_version": 1,
            "transfer_id": command.id,
            "debit_account_id": debit.id,
            "credit_account_id": credit.id,
            "amount_minor": amount,
            "ledger": command.ledger,
            "code": command.code,
            "flags": command.flags,
            "timeout_s": command.timeout_s,
            "expires_at_us": expires_at_us,
            "metadata": dict(metadata) if metadata else {},
            "timestamp_us": now_us,
            "debit_account_after": _new_balances(
                _B, (d_pending, d_posted, debit.credits_pending, debit.credits_posted)
            ),
            "credit_account_after": _new_balances(
                _B, (credit.debits_pending, credit.debits_posted, c_pending, c_posted)
            ),
        },
    )
    _set_fields_set(event, _CREATED_FIELDS)
    _set_extra(event, None)
    _set_private(event, None)
    if apply:
        debit.debits_pending = d_pending
        debit.debits_posted = d_posted
        credit.credits_pending = c_pending
        credit.credits_posted = c_posted
        # The same record as evolve's transfer_of_created(event), built from locals.
        transfer = Transfer(
            command.id,
            debit.id,
            credit.id,
            amount,
            command.ledger,
            command.code,
            command.flags,
            None,
            command.timeout_s,
            event.metadata,
            now_us,
            expires_at_us,
            _PENDING if pending else _NONE,
        )
        state.transfers[command.id] = transfer
        if expires_at_us is not None:
            state.index_expiry(transfer)
    return event


def _overflow(
    code: RejectionCode, account: Account, balance: str, value: int, amount: int
) -> CommandRejected:
    return CommandRejected(
        code,
        f"{balance} {value} + amount {amount} exceeds AMOUNT_MAX {AMOUNT_MAX} "
        f"(account {account.id})",
    )


def _flags_detail(command: CreateTransfer) -> str:
    f = command.flags
    names = [
        name
        for name, value in (
            ("pending", f.pending),
            ("post_pending_transfer", f.post_pending_transfer),
            ("void_pending_transfer", f.void_pending_transfer),
        )
        if value
    ]
    return f"{' and '.join(names)} are set; at most one of them may be"


def same_transfer(existing: Transfer, command: CreateTransfer) -> Transfer:
    """``existing`` if ``command`` resubmits it, else reject with the first field that
    differs. ``linked`` is not compared (it describes the batch, not the transfer); on a
    post or void, fields left to default ("as in the pending transfer") match anything."""
    f = command.flags
    g = existing.flags
    resolving = f.post_pending_transfer or f.void_pending_transfer
    checks = (
        (
            "flags",
            (g.pending, g.post_pending_transfer, g.void_pending_transfer),
            (f.pending, f.post_pending_transfer, f.void_pending_transfer),
            True,
        ),
        ("pending_id", existing.pending_id, command.pending_id, True),
        ("timeout_s", existing.timeout_s, command.timeout_s, True),
        (
            "debit_account_id",
            existing.debit_account_id,
            command.debit_account_id,
            not resolving or command.debit_account_id.int != 0,
        ),
        (
            "credit_account_id",
            existing.credit_account_id,
            command.credit_account_id,
            not resolving or command.credit_account_id.int != 0,
        ),
        (
            "amount_minor",
            existing.amount_minor,
            command.amount_minor,
            not resolving or command.amount_minor != 0,
        ),
        ("ledger", existing.ledger, command.ledger, not resolving or command.ledger != ""),
        ("code", existing.code, command.code, not resolving or command.code != 0),
        ("metadata", existing.metadata, command.metadata, True),
    )
    for name, stored, given, compared in checks:
        if compared and stored != given:
            raise CommandRejected(
                _R.id_already_used_with_different_fields,
                f"transfer {existing.id} exists with {name} {stored!r}, not {given!r}",
            )
    return existing
