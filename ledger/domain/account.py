"""Rules for opening and closing accounts (the ``decide`` half for account commands)."""

from __future__ import annotations

from ledger.domain.commands import CloseAccount, OpenAccount
from ledger.domain.errors import CommandRejected, RejectionCode
from ledger.domain.events import AccountClosed, AccountOpened, Event, trusted
from ledger.domain.money import CODE_MAX, SCALE_MAX, is_valid_ledger, metadata_problem
from ledger.domain.state import Account, BookState

__all__ = ["decide_close_account", "decide_open_account", "open_account_field_problem"]

_R = RejectionCode


def open_account_field_problem(command: OpenAccount) -> str | None:
    """The first structural problem of the command, as ``at $.field: ...``; or None."""
    if not 0 <= command.code <= CODE_MAX:
        return f"at $.code: must be in 0..{CODE_MAX}, not {command.code}"
    if not 0 <= command.scale <= SCALE_MAX:
        return f"at $.scale: must be in 0..{SCALE_MAX}, not {command.scale}"
    if command.ledger and not is_valid_ledger(command.ledger):
        return f"at $.ledger: {command.ledger!r} is not a ledger code (A-Z, 0-9, _; 1..12)"
    return metadata_problem(command.metadata) if command.metadata else None


def decide_open_account(
    state: BookState, command: OpenAccount, now_us: int
) -> tuple[Event, ...] | Account:
    """AccountOpened, or the existing account when the same id was opened with the same
    fields (``exists``); raises CommandRejected otherwise."""
    problem = open_account_field_problem(command)
    if problem is not None:
        raise CommandRejected(_R.invalid_field, problem)
    if command.id.int == 0:
        raise CommandRejected(_R.id_must_not_be_zero, "account id is the nil UUID")
    existing = state.accounts.get(command.id)
    if existing is not None:
        return _same_account(existing, command)
    flags = command.flags
    if flags.debits_must_not_exceed_credits and flags.credits_must_not_exceed_debits:
        raise CommandRejected(
            _R.flags_are_mutually_exclusive,
            "debits_must_not_exceed_credits and credits_must_not_exceed_debits are both set",
        )
    if not command.ledger:
        raise CommandRejected(_R.ledger_must_not_be_empty, "account has no ledger code")
    if command.code == 0:
        raise CommandRejected(_R.code_must_not_be_zero, "account code is 0")
    event = trusted(
        AccountOpened,
        {
            "type": "AccountOpened",
            "schema_version": 1,
            "account_id": command.id,
            "ledger": command.ledger,
            "scale": command.scale,
            "code": command.code,
            "flags": flags,
            "metadata": dict(command.metadata),
            "timestamp_us": now_us,
        },
    )
    return (event,)


def _same_account(existing: Account, command: OpenAccount) -> Account:
    for name, stored, given in (
        ("ledger", existing.ledger, command.ledger),
        ("scale", existing.scale, command.scale),
        ("code", existing.code, command.code),
        ("flags", existing.flags, command.flags),
        ("metadata", existing.metadata, command.metadata),
    ):
        if stored != given:
            raise CommandRejected(
                _R.id_already_used_with_different_fields,
                f"account {existing.id} exists with {name} {stored!r}, not {given!r}",
            )
    return existing


def decide_close_account(
    state: BookState, command: CloseAccount, now_us: int
) -> tuple[Event, ...] | Account:
    """AccountClosed, or the account itself when it is already closed (``exists``)."""
    if command.id.int == 0:
        raise CommandRejected(_R.id_must_not_be_zero, "account id is the nil UUID")
    account = state.accounts.get(command.id)
    if account is None:
        raise CommandRejected(_R.account_not_found, f"no account {command.id}")
    if account.closed:
        return account
    event = trusted(
        AccountClosed,
        {
            "type": "AccountClosed",
            "schema_version": 1,
            "account_id": account.id,
            "timestamp_us": now_us,
            "account_after": account.balances(),
        },
    )
    return (event,)
