"""The state a book decides against: accounts, transfers and the pending-expiry index.

Records are mutable, slotted dataclasses: ``evolve`` updates balances and pending status in
place, because copying an account for every transfer would cost more than the rest of the
decision. Nothing outside the domain should mutate them; the node reads them (to snapshot)
and adds them (:meth:`BookState.add_account`, :meth:`BookState.add_transfer`) when it loads
them lazily from storage. An id absent from the state is treated as not existing, so the
node must load every record a command references before deciding it.

Snapshots (``to_snapshot`` / ``from_snapshot``) are JSON-compatible dicts: UUIDs as
strings, amounts as ints. ``from_snapshot`` checks what it reads (types, ranges, balance
limits) and raises :class:`~ledger.domain.errors.InvariantViolated` on anything a correct
writer could not have stored: the other half of the check made before writing.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any, Final
from uuid import UUID

from ledger.domain.commands import AccountFlags, TransferFlags
from ledger.domain.errors import InvariantViolated
from ledger.domain.money import (
    AMOUNT_MAX,
    CODE_MAX,
    SCALE_DEFAULT,
    SCALE_MAX,
    TIMESTAMP_MAX_US,
    AccountBalances,
    is_valid_ledger,
    metadata_problem,
)

__all__ = ["Account", "BookState", "PendingStatus", "Transfer"]


class PendingStatus(StrEnum):
    """Where a transfer stands as a hold (TigerBeetle's ``TransferPendingStatus``).

    ``none`` for every transfer that is not itself pending (single-phase, post, void); a
    pending transfer starts ``pending`` and ends ``posted``, ``voided`` or ``expired``.
    """

    none = "none"
    pending = "pending"
    posted = "posted"
    voided = "voided"
    expired = "expired"


_PENDING: Final = PendingStatus.pending


@dataclass(slots=True)
class Account:
    """An account and its balances. ``closed`` is the account's closed flag."""

    id: UUID
    ledger: str
    code: int
    flags: AccountFlags
    metadata: dict[str, str]
    timestamp_us: int
    scale: int = SCALE_DEFAULT
    closed: bool = False
    debits_pending: int = 0
    debits_posted: int = 0
    credits_pending: int = 0
    credits_posted: int = 0

    def balances(self) -> AccountBalances:
        return AccountBalances(
            self.debits_pending, self.debits_posted, self.credits_pending, self.credits_posted
        )

    def copy(self) -> Account:
        return Account(*(getattr(self, f.name) for f in fields(self)))

    def restore(self, image: Account) -> None:
        """Make this record equal to ``image`` in place (undo of a linked chain)."""
        for f in fields(self):
            setattr(self, f.name, getattr(image, f.name))

    def to_snapshot(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "ledger": self.ledger,
            "scale": self.scale,
            "code": self.code,
            "flags": {
                "debits_must_not_exceed_credits": self.flags.debits_must_not_exceed_credits,
                "credits_must_not_exceed_debits": self.flags.credits_must_not_exceed_debits,
            },
            "metadata": dict(self.metadata),
            "timestamp_us": self.timestamp_us,
            "closed": self.closed,
            "debits_pending": self.debits_pending,
            "debits_posted": self.debits_posted,
            "credits_pending": self.credits_pending,
            "credits_posted": self.credits_posted,
        }

    @classmethod
    def from_snapshot(cls, data: Mapping[str, Any]) -> Account:
        where = f"account snapshot {data.get('id')!r}"
        try:
            flags = data["flags"]
            account = cls(
                id=_uuid(data, "id"),
                ledger=_str(data, "ledger"),
                scale=_int(data, "scale", 0, SCALE_MAX),
                code=_int(data, "code", 1, CODE_MAX),
                flags=AccountFlags(
                    debits_must_not_exceed_credits=_bool(flags, "debits_must_not_exceed_credits"),
                    credits_must_not_exceed_debits=_bool(flags, "credits_must_not_exceed_debits"),
                ),
                metadata=_metadata(data["metadata"]),
                timestamp_us=_int(data, "timestamp_us", 0, TIMESTAMP_MAX_US),
                closed=_bool(data, "closed"),
                debits_pending=_int(data, "debits_pending", 0, AMOUNT_MAX),
                debits_posted=_int(data, "debits_posted", 0, AMOUNT_MAX),
                credits_pending=_int(data, "credits_pending", 0, AMOUNT_MAX),
                credits_posted=_int(data, "credits_posted", 0, AMOUNT_MAX),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise InvariantViolated(f"{where}: {error!r}") from error
        account.check()
        return account

    def check(self) -> None:
        """Raise InvariantViolated unless the record is one a correct ledger can hold."""
        problem = _account_problem(self)
        if problem is not None:
            raise InvariantViolated(f"account {self.id}: {problem}")


def _account_problem(a: Account) -> str | None:
    if not is_valid_ledger(a.ledger):
        return f"ledger {a.ledger!r} is not a ledger code"
    for name in ("debits_pending", "debits_posted", "credits_pending", "credits_posted"):
        value = getattr(a, name)
        if not 0 <= value <= AMOUNT_MAX:
            return f"{name} {value} outside 0..AMOUNT_MAX"
    if a.debits_pending + a.debits_posted > AMOUNT_MAX:
        return "debits_pending + debits_posted exceeds AMOUNT_MAX"
    if a.credits_pending + a.credits_posted > AMOUNT_MAX:
        return "credits_pending + credits_posted exceeds AMOUNT_MAX"
    f = a.flags
    if f.debits_must_not_exceed_credits and f.credits_must_not_exceed_debits:
        return "both balance limit flags are set"
    if f.debits_must_not_exceed_credits and (a.debits_pending + a.debits_posted > a.credits_posted):
        return (
            f"debits {a.debits_posted} posted + {a.debits_pending} pending exceed "
            f"credits_posted {a.credits_posted} despite debits_must_not_exceed_credits"
        )
    if f.credits_must_not_exceed_debits and (
        a.credits_pending + a.credits_posted > a.debits_posted
    ):
        return (
            f"credits {a.credits_posted} posted + {a.credits_pending} pending exceed "
            f"debits_posted {a.debits_posted} despite credits_must_not_exceed_debits"
        )
    return None


@dataclass(slots=True)
class Transfer:
    """A transfer as stored: enough to answer a resubmission (``exists``) and, for a
    pending transfer, where it stands.

    Account ids, ledger, code and amount are the resolved values: for a post or void they
    are the pending transfer's (the amount is what was posted, or what was released by the
    void). ``amount_posted_minor`` is set on a pending transfer once it is posted.
    """

    id: UUID
    debit_account_id: UUID
    credit_account_id: UUID
    amount_minor: int
    ledger: str
    code: int
    flags: TransferFlags
    pending_id: UUID | None
    timeout_s: int
    metadata: dict[str, str]
    timestamp_us: int
    expires_at_us: int | None
    pending_status: PendingStatus
    amount_posted_minor: int = 0

    def copy(self) -> Transfer:
        return Transfer(*(getattr(self, f.name) for f in fields(self)))

    def restore(self, image: Transfer) -> None:
        """Make this record equal to ``image`` in place (undo of a linked chain)."""
        for f in fields(self):
            setattr(self, f.name, getattr(image, f.name))

    def to_snapshot(self) -> dict[str, Any]:
        flags = self.flags
        return {
            "id": str(self.id),
            "debit_account_id": str(self.debit_account_id),
            "credit_account_id": str(self.credit_account_id),
            "amount_minor": self.amount_minor,
            "ledger": self.ledger,
            "code": self.code,
            "flags": {
                "linked": flags.linked,
                "pending": flags.pending,
                "post_pending_transfer": flags.post_pending_transfer,
                "void_pending_transfer": flags.void_pending_transfer,
            },
            "pending_id": None if self.pending_id is None else str(self.pending_id),
            "timeout_s": self.timeout_s,
            "metadata": dict(self.metadata),
            "timestamp_us": self.timestamp_us,
            "expires_at_us": self.expires_at_us,
            "pending_status": self.pending_status.value,
            "amount_posted_minor": self.amount_posted_minor,
        }

    @classmethod
    def from_snapshot(cls, data: Mapping[str, Any]) -> Transfer:
        where = f"transfer snapshot {data.get('id')!r}"
        try:
            flags = data["flags"]
            pending_id = data["pending_id"]
            expires_at_us = data["expires_at_us"]
            transfer = cls(
                id=_uuid(data, "id"),
                debit_account_id=_uuid(data, "debit_account_id"),
                credit_account_id=_uuid(data, "credit_account_id"),
                amount_minor=_int(data, "amount_minor", 1, AMOUNT_MAX),
                ledger=_str(data, "ledger"),
                code=_int(data, "code", 1, CODE_MAX),
                flags=TransferFlags(
                    linked=_bool(flags, "linked"),
                    pending=_bool(flags, "pending"),
                    post_pending_transfer=_bool(flags, "post_pending_transfer"),
                    void_pending_transfer=_bool(flags, "void_pending_transfer"),
                ),
                pending_id=None if pending_id is None else _uuid(data, "pending_id"),
                timeout_s=_int(data, "timeout_s", 0, TIMESTAMP_MAX_US),
                metadata=_metadata(data["metadata"]),
                timestamp_us=_int(data, "timestamp_us", 0, TIMESTAMP_MAX_US),
                expires_at_us=(
                    None
                    if expires_at_us is None
                    else _int(data, "expires_at_us", 0, TIMESTAMP_MAX_US)
                ),
                pending_status=PendingStatus(data["pending_status"]),
                amount_posted_minor=_int(data, "amount_posted_minor", 0, AMOUNT_MAX),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise InvariantViolated(f"{where}: {error!r}") from error
        transfer.check()
        return transfer

    def check(self) -> None:
        """Raise InvariantViolated unless the record is one a correct ledger can hold."""
        problem = _transfer_problem(self)
        if problem is not None:
            raise InvariantViolated(f"transfer {self.id}: {problem}")


def _transfer_problem(t: Transfer) -> str | None:
    f = t.flags
    kinds = f.pending + f.post_pending_transfer + f.void_pending_transfer
    if kinds > 1:
        return "more than one of pending / post / void flags"
    if not is_valid_ledger(t.ledger):
        return f"ledger {t.ledger!r} is not a ledger code"
    if t.debit_account_id == t.credit_account_id:
        return "debit and credit accounts are the same"
    if f.pending:
        if t.pending_status is PendingStatus.none:
            return "a pending transfer has pending_status none"
        if (t.expires_at_us is None) != (t.timeout_s == 0):
            return f"timeout_s {t.timeout_s} does not match expires_at_us {t.expires_at_us}"
    elif t.pending_status is not PendingStatus.none or t.expires_at_us is not None:
        return "a transfer that is not pending has a pending status or deadline"
    if (f.post_pending_transfer or f.void_pending_transfer) != (t.pending_id is not None):
        return "pending_id must be set exactly on posts and voids"
    posted = t.pending_status is PendingStatus.posted
    if t.amount_posted_minor > t.amount_minor or (t.amount_posted_minor > 0) != posted:
        return f"amount_posted_minor {t.amount_posted_minor} with status {t.pending_status}"
    return None


def _int(data: Mapping[str, Any], name: str, low: int, high: int) -> int:
    value = data[name]
    if type(value) is not int or not low <= value <= high:
        raise ValueError(f"{name} {value!r} is not an int in {low}..{high}")
    return value


def _bool(data: Mapping[str, Any], name: str) -> bool:
    value = data[name]
    if type(value) is not bool:
        raise TypeError(f"{name} {value!r} is not a bool")
    return value


def _str(data: Mapping[str, Any], name: str) -> str:
    value = data[name]
    if type(value) is not str:
        raise TypeError(f"{name} {value!r} is not a string")
    return value


def _uuid(data: Mapping[str, Any], name: str) -> UUID:
    try:
        return UUID(_str(data, name))
    except ValueError as error:
        raise ValueError(f"{name} {data[name]!r} is not a UUID") from error


def _metadata(value: Any) -> dict[str, str]:
    if type(value) is not dict:
        raise TypeError(f"metadata {value!r} is not an object")
    problem = metadata_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return dict(value)


ExpiryEntry = tuple[int, int, UUID]
"""(deadline in microseconds, id as int for a cheap, deterministic tie-break, id)."""


@dataclass(slots=True, eq=False)
class BookState:
    """The in-memory state of one book: what ``decide`` reads and ``evolve`` changes.

    ``accounts`` and ``transfers`` hold every record the node has loaded or the book has
    created. The pending-expiry index is a min-heap of deadlines: posting, voiding or
    undoing a pending transfer leaves its entry behind (lazy deletion); entries whose
    transfer is gone, no longer pending, or has another deadline are skipped and dropped
    when they reach the top during expiry. Two states are equal when their records and
    their live deadlines are equal.
    """

    accounts: dict[UUID, Account] = field(default_factory=dict)
    transfers: dict[UUID, Transfer] = field(default_factory=dict)
    expiries: list[ExpiryEntry] = field(default_factory=list)
    forbidden: dict[UUID, UUID] = field(default_factory=dict)
    """Pending ids cancelled before they were created, with the cancelling command's id."""

    def add_account(self, account: Account) -> None:
        """Put an account loaded from storage into the state (replaces the same id)."""
        self.accounts[account.id] = account

    def add_transfer(self, transfer: Transfer) -> None:
        """Put a transfer loaded from storage into the state (replaces the same id) and,
        if it is pending with a deadline, into the expiry index. Expiry only finds what the
        state holds: the node must load every pending transfer that has a deadline, with
        its two accounts, and must not evict them while they are pending."""
        self.transfers[transfer.id] = transfer
        self.index_expiry(transfer)

    def index_expiry(self, transfer: Transfer) -> None:
        deadline = transfer.expires_at_us
        if deadline is not None and transfer.pending_status is _PENDING:
            heapq.heappush(self.expiries, (deadline, transfer.id.int, transfer.id))

    def is_live(self, entry: ExpiryEntry) -> bool:
        transfer = self.transfers.get(entry[2])
        return (
            transfer is not None
            and transfer.pending_status is _PENDING
            and transfer.expires_at_us == entry[0]
        )

    def drop_stale_expiries(self) -> None:
        """Pop index entries from the top while they are stale (index upkeep only)."""
        expiries = self.expiries
        while expiries and not self.is_live(expiries[0]):
            heapq.heappop(expiries)

    def next_expiry_us(self) -> int | None:
        """The earliest deadline of a pending transfer, or None: when to send the next
        ``ExpirePendingTransfers``. Drops stale index entries from the top."""
        self.drop_stale_expiries()
        return self.expiries[0][0] if self.expiries else None

    def due_pending_transfers(self, now_us: int, limit: int) -> list[Transfer]:
        """The pending transfers whose deadline is at or before ``now_us``, earliest
        first, at most ``limit``. Reads the index without changing it."""
        expiries = self.expiries
        due: list[ExpiryEntry] = []
        stack = [0] if expiries else []
        while stack:
            index = stack.pop()
            entry = expiries[index]
            if entry[0] <= now_us:
                due.append(entry)
                stack.extend(i for i in (2 * index + 1, 2 * index + 2) if i < len(expiries))
        due.sort()
        result: list[Transfer] = []
        previous: ExpiryEntry | None = None
        for entry in due:
            if entry != previous and self.is_live(entry):
                result.append(self.transfers[entry[2]])
                if len(result) == limit:
                    break
            previous = entry
        return result

    def live_expiries(self) -> set[ExpiryEntry]:
        return {entry for entry in self.expiries if self.is_live(entry)}

    def iter_records(self) -> Iterator[Account | Transfer]:
        yield from self.accounts.values()
        yield from self.transfers.values()

    def copy(self) -> BookState:
        """A deep copy (records copied; flags and metadata values are shared, as they are
        never mutated)."""
        return BookState(
            accounts={k: a.copy() for k, a in self.accounts.items()},
            transfers={k: t.copy() for k, t in self.transfers.items()},
            expiries=list(self.expiries),
            forbidden=dict(self.forbidden),
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BookState):
            return NotImplemented
        return (
            self.accounts == other.accounts
            and self.transfers == other.transfers
            and self.forbidden == other.forbidden
            and self.live_expiries() == other.live_expiries()
        )

    __hash__ = None  # type: ignore[assignment]
