"""Errors of the ledger domain, and the stable rejection codes.

The tree::

    Exception
    ├── DomainError                  base of everything the domain raises on purpose
    │   └── CommandRejected          expected: a command broke a rule; carries a
    │                                RejectionCode and a detail with the numbers
    └── AssertionError
        └── InvariantViolated        a bug or corrupted input (state, event, snapshot):
                                     stop, never catch-and-continue

"Conflict / unavailable" errors (retriable) belong to the application and adapters, not
here: the domain does no I/O, so it cannot be unavailable.

Rejection codes are part of the public contract: they are stored by clients, shown in
``application/problem+json`` responses and listed in ``docs/rejection-codes.md``. A code is
never renamed or reused for another rule; new codes may be added. Each code is named after
the rule that failed (TigerBeetle's convention), and the members of :class:`RejectionCode`
are declared in precedence order: when a command breaks several rules, the one declared
first is reported.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "REJECTION_RULES",
    "CommandRejected",
    "DomainError",
    "InvariantViolated",
    "RejectionCode",
    "render_rejection_table",
]


class RejectionCode(StrEnum):
    """Why a command was rejected; members are declared in precedence order."""

    linked_event_failed = "linked_event_failed"
    linked_event_chain_open = "linked_event_chain_open"
    invalid_field = "invalid_field"
    id_must_not_be_zero = "id_must_not_be_zero"
    id_already_used_with_different_fields = "id_already_used_with_different_fields"
    id_already_cancelled = "id_already_cancelled"
    flags_are_mutually_exclusive = "flags_are_mutually_exclusive"
    debit_account_id_must_not_be_zero = "debit_account_id_must_not_be_zero"
    credit_account_id_must_not_be_zero = "credit_account_id_must_not_be_zero"
    accounts_must_be_different = "accounts_must_be_different"
    pending_id_must_not_be_set = "pending_id_must_not_be_set"
    pending_id_must_be_set = "pending_id_must_be_set"
    pending_id_must_be_different = "pending_id_must_be_different"
    timeout_reserved_for_pending_transfer = "timeout_reserved_for_pending_transfer"
    ledger_must_not_be_empty = "ledger_must_not_be_empty"
    code_must_not_be_zero = "code_must_not_be_zero"
    amount_must_not_be_zero = "amount_must_not_be_zero"
    amount_exceeds_maximum = "amount_exceeds_maximum"
    account_not_found = "account_not_found"
    debit_account_not_found = "debit_account_not_found"
    credit_account_not_found = "credit_account_not_found"
    accounts_must_have_the_same_ledger = "accounts_must_have_the_same_ledger"
    transfer_must_have_the_same_ledger_as_accounts = (
        "transfer_must_have_the_same_ledger_as_accounts"
    )
    pending_transfer_not_found = "pending_transfer_not_found"
    pending_transfer_not_pending = "pending_transfer_not_pending"
    pending_transfer_already_posted = "pending_transfer_already_posted"
    pending_transfer_already_voided = "pending_transfer_already_voided"
    pending_transfer_expired = "pending_transfer_expired"
    pending_transfer_has_different_debit_account_id = (
        "pending_transfer_has_different_debit_account_id"
    )
    pending_transfer_has_different_credit_account_id = (
        "pending_transfer_has_different_credit_account_id"
    )
    pending_transfer_has_different_ledger = "pending_transfer_has_different_ledger"
    pending_transfer_has_different_code = "pending_transfer_has_different_code"
    exceeds_pending_transfer_amount = "exceeds_pending_transfer_amount"
    pending_transfer_has_different_amount = "pending_transfer_has_different_amount"
    account_closed = "account_closed"
    overflows_debits_pending = "overflows_debits_pending"
    overflows_credits_pending = "overflows_credits_pending"
    overflows_debits_posted = "overflows_debits_posted"
    overflows_credits_posted = "overflows_credits_posted"
    overflows_debits = "overflows_debits"
    overflows_credits = "overflows_credits"
    overflows_timeout = "overflows_timeout"
    exceeds_credits = "exceeds_credits"
    exceeds_debits = "exceeds_debits"


_R = RejectionCode

#: One line per code: the rule, and which commands check it. Kept next to the enum so that
#: a new code cannot be added without its documentation (a test checks both match).
REJECTION_RULES: dict[RejectionCode, tuple[str, str]] = {
    _R.linked_event_failed: (
        "batch",
        "another command of the same linked chain failed, so this one was not applied",
    ),
    _R.linked_event_chain_open: (
        "batch",
        "the last command of the batch has `linked` set, or an ExpirePendingTransfers "
        "arrived inside a chain: the chain is never terminated",
    ),
    _R.invalid_field: (
        "all",
        "a field has the wrong type or is out of its range (negative amount or timeout, "
        "code above 65 535, malformed ledger code, oversize metadata); the detail says "
        "where (`at $.amount_minor: ...`)",
    ),
    _R.id_must_not_be_zero: (
        "OpenAccount, CloseAccount, CreateTransfer",
        "the id is the nil UUID",
    ),
    _R.id_already_used_with_different_fields: (
        "OpenAccount, CreateTransfer",
        "the id is taken by an account or transfer whose fields differ (the detail names "
        "the first one); identical fields give the outcome `exists` instead",
    ),
    _R.id_already_cancelled: (
        "CreateTransfer",
        "a CancelPendingTransfer for this id arrived before the transfer itself (TCC cancel "
        "before try): the id is spent, so a late try cannot leave a hold behind",
    ),
    _R.flags_are_mutually_exclusive: (
        "OpenAccount, CreateTransfer",
        "two of pending / post_pending_transfer / void_pending_transfer, or both "
        "debits_must_not_exceed_credits and credits_must_not_exceed_debits",
    ),
    _R.debit_account_id_must_not_be_zero: (
        "CreateTransfer",
        "a single-phase or pending transfer has no debit account",
    ),
    _R.credit_account_id_must_not_be_zero: (
        "CreateTransfer",
        "a single-phase or pending transfer has no credit account",
    ),
    _R.accounts_must_be_different: (
        "CreateTransfer",
        "the debit and credit accounts are the same account",
    ),
    _R.pending_id_must_not_be_set: (
        "CreateTransfer",
        "pending_id is given on a transfer that neither posts nor voids",
    ),
    _R.pending_id_must_be_set: (
        "CreateTransfer",
        "a post or void does not name the pending transfer (pending_id)",
    ),
    _R.pending_id_must_be_different: (
        "CreateTransfer",
        "a post or void names itself as its pending transfer",
    ),
    _R.timeout_reserved_for_pending_transfer: (
        "CreateTransfer",
        "timeout_s is not 0 on a transfer that is not pending",
    ),
    _R.ledger_must_not_be_empty: (
        "OpenAccount, CreateTransfer",
        "no ledger (currency/asset) code on an account or a non-post/void transfer",
    ),
    _R.code_must_not_be_zero: (
        "OpenAccount, CreateTransfer",
        "code is 0 on an account or a non-post/void transfer",
    ),
    _R.amount_must_not_be_zero: (
        "CreateTransfer",
        "amount_minor is 0 on a single-phase or pending transfer (on a post or void, 0 "
        "means the full pending amount)",
    ),
    _R.amount_exceeds_maximum: (
        "CreateTransfer",
        "amount_minor is above AMOUNT_MAX = 2**63 - 1",
    ),
    _R.account_not_found: ("CloseAccount", "no account has this id"),
    _R.debit_account_not_found: ("CreateTransfer", "no account has the debit account id"),
    _R.credit_account_not_found: ("CreateTransfer", "no account has the credit account id"),
    _R.accounts_must_have_the_same_ledger: (
        "CreateTransfer",
        "the two accounts have different ledger codes (or scales)",
    ),
    _R.transfer_must_have_the_same_ledger_as_accounts: (
        "CreateTransfer",
        "the transfer's ledger code differs from its accounts'",
    ),
    _R.pending_transfer_not_found: ("CreateTransfer", "no transfer has the pending_id"),
    _R.pending_transfer_not_pending: (
        "CreateTransfer",
        "the transfer named by pending_id was not created as pending",
    ),
    _R.pending_transfer_already_posted: (
        "CreateTransfer",
        "the pending transfer was already posted",
    ),
    _R.pending_transfer_already_voided: (
        "CreateTransfer",
        "the pending transfer was already voided",
    ),
    _R.pending_transfer_expired: (
        "CreateTransfer",
        "the pending transfer expired, or its deadline is at or before the batch time",
    ),
    _R.pending_transfer_has_different_debit_account_id: (
        "CreateTransfer",
        "a post or void gives a debit account other than the pending transfer's",
    ),
    _R.pending_transfer_has_different_credit_account_id: (
        "CreateTransfer",
        "a post or void gives a credit account other than the pending transfer's",
    ),
    _R.pending_transfer_has_different_ledger: (
        "CreateTransfer",
        "a post or void gives a ledger code other than the pending transfer's",
    ),
    _R.pending_transfer_has_different_code: (
        "CreateTransfer",
        "a post or void gives a code other than the pending transfer's",
    ),
    _R.exceeds_pending_transfer_amount: (
        "CreateTransfer",
        "a post asks for more than the pending amount",
    ),
    _R.pending_transfer_has_different_amount: (
        "CreateTransfer",
        "a void gives an amount other than 0 or the pending amount",
    ),
    _R.account_closed: (
        "CreateTransfer",
        "the debit or credit account is closed (voids and expiry are still allowed)",
    ),
    _R.overflows_debits_pending: (
        "CreateTransfer",
        "debits_pending + amount would exceed AMOUNT_MAX",
    ),
    _R.overflows_credits_pending: (
        "CreateTransfer",
        "credits_pending + amount would exceed AMOUNT_MAX",
    ),
    _R.overflows_debits_posted: (
        "CreateTransfer",
        "debits_posted + amount would exceed AMOUNT_MAX",
    ),
    _R.overflows_credits_posted: (
        "CreateTransfer",
        "credits_posted + amount would exceed AMOUNT_MAX",
    ),
    _R.overflows_debits: (
        "CreateTransfer",
        "debits_pending + debits_posted + amount would exceed AMOUNT_MAX",
    ),
    _R.overflows_credits: (
        "CreateTransfer",
        "credits_pending + credits_posted + amount would exceed AMOUNT_MAX",
    ),
    _R.overflows_timeout: (
        "CreateTransfer",
        "batch time + timeout_s would exceed AMOUNT_MAX microseconds",
    ),
    _R.exceeds_credits: (
        "CreateTransfer",
        "the debit account has debits_must_not_exceed_credits and debits_pending + "
        "debits_posted + amount would exceed its credits_posted",
    ),
    _R.exceeds_debits: (
        "CreateTransfer",
        "the credit account has credits_must_not_exceed_debits and credits_pending + "
        "credits_posted + amount would exceed its debits_posted",
    ),
}


def render_rejection_table() -> str:
    """The Markdown table of ``docs/rejection-codes.md`` body, in precedence order."""
    lines = [
        "| # | code | checked by | rule |",
        "| --- | --- | --- | --- |",
    ]
    for number, code in enumerate(RejectionCode, start=1):
        checked_by, rule = REJECTION_RULES[code]
        lines.append(f"| {number} | `{code}` | {checked_by} | {rule} |")
    return "\n".join(lines) + "\n"


class DomainError(Exception):
    """Base of the exceptions the domain raises on purpose (not bugs)."""


class CommandRejected(DomainError):
    """A command broke a rule: expected, reported to the caller, changes nothing.

    ``code`` is the stable rule name; ``detail`` carries the numbers a support engineer
    needs (``credits_posted 40, debits 10 posted + 0 pending, amount 60``).
    ``str(error)`` is ``"<code>: <detail>"``.
    """

    def __init__(self, code: RejectionCode, detail: str) -> None:
        super().__init__(code, detail)
        self.code = code
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.code}: {self.detail}"


class InvariantViolated(AssertionError):
    """The domain found a state, event or snapshot that cannot happen: a bug. Stop."""
