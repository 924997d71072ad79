"""A deliberately simple reference model of the ledger rules, for the stateful test.

It shares no code with ``ledger.domain`` beyond the command types and the code names: plain
dicts of plain records, one function per command that checks the rules top to bottom in
the documented precedence and returns the first code that fails, expiry by sorting every
transfer, and linked chains by deep-copying the whole model and putting it back on failure.
It is slow and obvious on purpose; the domain is fast and clever, and the test checks they
agree on every outcome, code and balance.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from uuid import UUID

from ledger.domain import (
    AMOUNT_MAX,
    CancelPendingTransfer,
    CloseAccount,
    Command,
    CreateTransfer,
    ExpirePendingTransfers,
    OpenAccount,
    TransferFlags,
)

LEDGER = re.compile(r"[A-Z0-9_]{1,12}")
Code = str  # a RejectionCode value; "" for accepted


@dataclass
class RefAccount:
    ledger: str
    scale: int
    code: int
    limits: tuple[bool, bool]  # (debits_must_not_exceed_credits, credits_must_not_exceed_debits)
    metadata: dict[str, str]
    closed: bool = False
    debits_pending: int = 0
    debits_posted: int = 0
    credits_pending: int = 0
    credits_posted: int = 0


@dataclass
class RefTransfer:
    kind: str  # "single", "pending", "post", "void"
    debit: UUID
    credit: UUID
    amount: int
    ledger: str
    code: int
    pending_id: UUID | None
    timeout_s: int
    metadata: dict[str, str]
    expires_at_us: int | None = None
    status: str = "none"  # for holds: pending, posted, voided, expired


@dataclass
class RefLedger:
    accounts: dict[UUID, RefAccount] = field(default_factory=dict)
    transfers: dict[UUID, RefTransfer] = field(default_factory=dict)
    forbidden: dict[UUID, UUID] = field(default_factory=dict)  # pending id -> cancel's id


class Rejected(Exception):
    def __init__(self, code: Code) -> None:
        self.code = code


def _metadata_ok(metadata: dict[str, str]) -> bool:
    return len(metadata) <= 16 and all(
        1 <= len(k) <= 64 and len(v) <= 256 for k, v in metadata.items()
    )


def open_account(m: RefLedger, c: OpenAccount) -> str:
    if not (0 <= c.code <= 65535 and 0 <= c.scale <= 18 and _metadata_ok(c.metadata)):
        raise Rejected("invalid_field")
    if c.ledger and not LEDGER.fullmatch(c.ledger):
        raise Rejected("invalid_field")
    if c.id.int == 0:
        raise Rejected("id_must_not_be_zero")
    limits = (c.flags.debits_must_not_exceed_credits, c.flags.credits_must_not_exceed_debits)
    if c.id in m.accounts:
        a = m.accounts[c.id]
        same = (a.ledger, a.scale, a.code, a.limits, a.metadata) == (
            c.ledger, c.scale, c.code, limits, c.metadata,
        )  # fmt: skip
        if not same:
            raise Rejected("id_already_used_with_different_fields")
        return "exists"
    if all(limits):
        raise Rejected("flags_are_mutually_exclusive")
    if not c.ledger:
        raise Rejected("ledger_must_not_be_empty")
    if c.code == 0:
        raise Rejected("code_must_not_be_zero")
    m.accounts[c.id] = RefAccount(c.ledger, c.scale, c.code, limits, dict(c.metadata))
    return "created"


def close_account(m: RefLedger, c: CloseAccount) -> str:
    if c.id.int == 0:
        raise Rejected("id_must_not_be_zero")
    if c.id not in m.accounts:
        raise Rejected("account_not_found")
    if m.accounts[c.id].closed:
        return "exists"
    m.accounts[c.id].closed = True
    return "created"


def _kind(c: CreateTransfer) -> str:
    f = c.flags
    if f.post_pending_transfer:
        return "post"
    if f.void_pending_transfer:
        return "void"
    return "pending" if f.pending else "single"


def _same_transfer(t: RefTransfer, c: CreateTransfer) -> bool:
    resolving = _kind(c) in ("post", "void")

    def matches(stored: object, given: object, empty: object) -> bool:
        return stored == given or (resolving and given == empty)

    return (
        t.kind == _kind(c)
        and t.pending_id == c.pending_id
        and t.timeout_s == c.timeout_s
        and matches(t.debit, c.debit_account_id, UUID(int=0))
        and matches(t.credit, c.credit_account_id, UUID(int=0))
        and matches(t.amount, c.amount_minor, 0)
        and matches(t.ledger, c.ledger, "")
        and matches(t.code, c.code, 0)
        and t.metadata == c.metadata
    )


def create_transfer(m: RefLedger, c: CreateTransfer, now_us: int) -> str:
    bad_ledger = bool(c.ledger) and not LEDGER.fullmatch(c.ledger)
    if c.amount_minor < 0 or c.timeout_s < 0 or not 0 <= c.code <= 65535 or bad_ledger:
        raise Rejected("invalid_field")
    if not _metadata_ok(c.metadata):
        raise Rejected("invalid_field")
    if c.id.int == 0:
        raise Rejected("id_must_not_be_zero")
    if c.id in m.transfers:
        if not _same_transfer(m.transfers[c.id], c):
            raise Rejected("id_already_used_with_different_fields")
        return "exists"
    if c.id in m.forbidden:
        raise Rejected("id_already_cancelled")
    f = c.flags
    if f.pending + f.post_pending_transfer + f.void_pending_transfer > 1:
        raise Rejected("flags_are_mutually_exclusive")
    if f.post_pending_transfer or f.void_pending_transfer:
        return _resolve(m, c, now_us)
    return _new_transfer(m, c, now_us)


def _new_transfer(m: RefLedger, c: CreateTransfer, now_us: int) -> str:
    checks = [
        (c.debit_account_id.int == 0, "debit_account_id_must_not_be_zero"),
        (c.credit_account_id.int == 0, "credit_account_id_must_not_be_zero"),
        (c.debit_account_id == c.credit_account_id, "accounts_must_be_different"),
        (c.pending_id is not None, "pending_id_must_not_be_set"),
        (c.timeout_s != 0 and not c.flags.pending, "timeout_reserved_for_pending_transfer"),
        (c.ledger == "", "ledger_must_not_be_empty"),
        (c.code == 0, "code_must_not_be_zero"),
        (c.amount_minor == 0, "amount_must_not_be_zero"),
        (c.amount_minor > AMOUNT_MAX, "amount_exceeds_maximum"),
        (c.debit_account_id not in m.accounts, "debit_account_not_found"),
        (c.credit_account_id not in m.accounts, "credit_account_not_found"),
    ]
    for failed, code in checks:
        if failed:
            raise Rejected(code)
    dr, cr = m.accounts[c.debit_account_id], m.accounts[c.credit_account_id]
    amount, pending = c.amount_minor, c.flags.pending
    expires = now_us + c.timeout_s * 1_000_000 if c.timeout_s else None
    checks = [
        ((dr.ledger, dr.scale) != (cr.ledger, cr.scale), "accounts_must_have_the_same_ledger"),
        (c.ledger != dr.ledger, "transfer_must_have_the_same_ledger_as_accounts"),
        (dr.closed or cr.closed, "account_closed"),
        (pending and dr.debits_pending + amount > AMOUNT_MAX, "overflows_debits_pending"),
        (pending and cr.credits_pending + amount > AMOUNT_MAX, "overflows_credits_pending"),
        (not pending and dr.debits_posted + amount > AMOUNT_MAX, "overflows_debits_posted"),
        (not pending and cr.credits_posted + amount > AMOUNT_MAX, "overflows_credits_posted"),
        (dr.debits_pending + dr.debits_posted + amount > AMOUNT_MAX, "overflows_debits"),
        (cr.credits_pending + cr.credits_posted + amount > AMOUNT_MAX, "overflows_credits"),
        (expires is not None and expires > 2**63 - 1, "overflows_timeout"),
        (
            dr.limits[0] and dr.debits_pending + dr.debits_posted + amount > dr.credits_posted,
            "exceeds_credits",
        ),
        (
            cr.limits[1] and cr.credits_pending + cr.credits_posted + amount > cr.debits_posted,
            "exceeds_debits",
        ),
    ]
    for failed, code in checks:
        if failed:
            raise Rejected(code)
    if pending:
        dr.debits_pending += amount
        cr.credits_pending += amount
    else:
        dr.debits_posted += amount
        cr.credits_posted += amount
    m.transfers[c.id] = RefTransfer(
        "pending" if pending else "single",
        c.debit_account_id,
        c.credit_account_id,
        amount,
        c.ledger,
        c.code,
        None,
        c.timeout_s,
        dict(c.metadata),
        expires,
        "pending" if pending else "none",
    )
    return "created"


def _resolve(m: RefLedger, c: CreateTransfer, now_us: int) -> str:
    post = c.flags.post_pending_transfer
    if c.pending_id is None or c.pending_id.int == 0:
        raise Rejected("pending_id_must_be_set")
    if c.pending_id == c.id:
        raise Rejected("pending_id_must_be_different")
    if c.timeout_s:
        raise Rejected("timeout_reserved_for_pending_transfer")
    if c.amount_minor > AMOUNT_MAX:
        raise Rejected("amount_exceeds_maximum")
    p = m.transfers.get(c.pending_id)
    if p is None:
        raise Rejected("pending_transfer_not_found")
    if p.kind != "pending":
        raise Rejected("pending_transfer_not_pending")
    if p.status != "pending":
        raise Rejected(f"pending_transfer_{'already_' if p.status != 'expired' else ''}{p.status}")
    if p.expires_at_us is not None and now_us >= p.expires_at_us:
        raise Rejected("pending_transfer_expired")
    given = [
        (c.debit_account_id, UUID(int=0), p.debit, "debit_account_id"),
        (c.credit_account_id, UUID(int=0), p.credit, "credit_account_id"),
        (c.ledger, "", p.ledger, "ledger"),
        (c.code, 0, p.code, "code"),
    ]
    for value, empty, stored, name in given:
        if value != empty and value != stored:
            raise Rejected(f"pending_transfer_has_different_{name}")
    amount = (c.amount_minor or p.amount) if post else p.amount
    if post and amount > p.amount:
        raise Rejected("exceeds_pending_transfer_amount")
    if not post and c.amount_minor not in (0, p.amount):
        raise Rejected("pending_transfer_has_different_amount")
    dr, cr = m.accounts[p.debit], m.accounts[p.credit]
    if post and (dr.closed or cr.closed):
        raise Rejected("account_closed")
    if post and dr.debits_posted + amount > AMOUNT_MAX:
        raise Rejected("overflows_debits_posted")
    if post and cr.credits_posted + amount > AMOUNT_MAX:
        raise Rejected("overflows_credits_posted")
    dr.debits_pending -= p.amount
    cr.credits_pending -= p.amount
    if post:
        dr.debits_posted += amount
        cr.credits_posted += amount
    p.status = "posted" if post else "voided"
    m.transfers[c.id] = RefTransfer(
        "post" if post else "void",
        p.debit,
        p.credit,
        amount,
        p.ledger,
        p.code,
        c.pending_id,
        0,
        dict(c.metadata),
    )
    return "created"


def cancel(m: RefLedger, c: CancelPendingTransfer, now_us: int) -> str:
    """The TCC cancel: void the hold if it is still pending, forbid its id if it does not
    exist yet, do nothing if it already ended by void or expiry."""
    if c.id.int == 0:
        raise Rejected("id_must_not_be_zero")
    if c.pending_id.int == 0:
        raise Rejected("pending_id_must_be_set")
    if c.pending_id == c.id:
        raise Rejected("pending_id_must_be_different")
    if c.id in m.transfers:
        t = m.transfers[c.id]
        if t.kind == "void" and t.pending_id == c.pending_id:
            return "exists"
        raise Rejected("id_already_used_with_different_fields")
    if c.id in m.forbidden:
        raise Rejected("id_already_cancelled")
    if c.pending_id in m.forbidden:
        return "created"
    p = m.transfers.get(c.pending_id)
    if p is None:
        m.forbidden[c.pending_id] = c.id
        return "created"
    if p.kind != "pending":
        raise Rejected("pending_transfer_not_pending")
    if p.status == "posted":
        raise Rejected("pending_transfer_already_posted")
    if p.status != "pending" or (p.expires_at_us is not None and now_us >= p.expires_at_us):
        return "created"
    void = CreateTransfer(
        c.id, pending_id=c.pending_id, flags=TransferFlags(void_pending_transfer=True)
    )
    return _resolve(m, void, now_us)


def expire(m: RefLedger, c: ExpirePendingTransfers) -> tuple[str, list[UUID]]:
    if c.now_us < 0 or not 1 <= c.limit <= 8190:
        raise Rejected("invalid_field")
    due = sorted(
        (t.expires_at_us, tid.int, tid)
        for tid, t in m.transfers.items()
        if t.status == "pending" and t.expires_at_us is not None and t.expires_at_us <= c.now_us
    )[: c.limit]
    for _, _, tid in due:
        t = m.transfers[tid]
        m.accounts[t.debit].debits_pending -= t.amount
        m.accounts[t.credit].credits_pending -= t.amount
        t.status = "expired"
    return "created", [tid for _, _, tid in due]


def decide_one(m: RefLedger, c: Command, now_us: int) -> str:
    if isinstance(c, OpenAccount):
        return open_account(m, c)
    if isinstance(c, CloseAccount):
        return close_account(m, c)
    if isinstance(c, CreateTransfer):
        return create_transfer(m, c, now_us)
    if isinstance(c, ExpirePendingTransfers):
        return expire(m, c)[0]
    if isinstance(c, CancelPendingTransfer):
        return cancel(m, c, now_us)
    raise TypeError(f"the reference model does not cover {type(c).__name__}")


def _units(commands: list[Command]) -> list[tuple[list[int], bool]]:
    """Split a batch into (indices, terminated): single commands and linked chains."""
    units: list[tuple[list[int], bool]] = []
    chain: list[int] = []
    for i, c in enumerate(commands):
        if chain and isinstance(c, ExpirePendingTransfers):
            units.append((chain, False))
            chain = []
        if c.linked:
            chain.append(i)
        elif chain:
            units.append(([*chain, i], True))
            chain = []
        else:
            units.append(([i], True))
    if chain:
        units.append((chain, False))
    return units


def decide_batch(m: RefLedger, commands: list[Command], now_us: int) -> list[tuple[str, Code]]:
    """(status, code) per command; the model is changed like the ledger's state."""
    results: list[tuple[str, Code]] = [("", "")] * len(commands)
    for indices, terminated in _units(commands):
        saved = copy.deepcopy(m)
        decidable = indices if terminated else indices[:-1]
        failed: int | None = None
        for i in decidable:
            try:
                results[i] = (decide_one(m, commands[i], now_us), "")
            except Rejected as rejection:
                results[i] = ("rejected", rejection.code)
                failed = i
                break
        if len(indices) == 1 and terminated:
            continue
        if failed is None and terminated:
            continue
        m.accounts, m.transfers, m.forbidden = saved.accounts, saved.transfers, saved.forbidden
        for i in indices:
            if i != failed:
                results[i] = ("rejected", "linked_event_failed")
        if not terminated:
            results[indices[-1]] = ("rejected", "linked_event_chain_open")
    return results
