"""Commands: what a caller asks the ledger to do, in the imperative.

Commands are frozen, slotted dataclasses: cheap to build and to read on the hot path. Their
field annotations carry the structural bounds (types, ranges, sizes) that
:func:`parse_command` enforces, through pydantic, on untrusted input (a JSON body). The
rules of the ledger (``exceeds_credits`` and the rest) are not checked here but by
``decide``, which also re-checks the ranges, so a command built directly in Python is never
trusted either.

Field semantics follow TigerBeetle's account and transfer reference:

* ``OpenAccount``: ``id`` is chosen by the client; ``ledger`` is the currency/asset code,
  ``scale`` its number of decimal places; ``code`` is the account type (1..65 535).
* ``CreateTransfer`` covers four kinds, told apart by its flags: single-phase (no flag),
  ``pending`` (reserves the amount until posted, voided or expired after ``timeout_s``
  seconds, 0 = never), ``post_pending_transfer`` and ``void_pending_transfer`` (name the
  pending transfer in ``pending_id``). On a post or void, the nil UUID in the account ids,
  an empty ``ledger``, ``code`` 0 and ``amount_minor`` 0 mean "as in the pending transfer";
  a post may give a smaller amount (a partial post: the rest is released). A pending
  transfer is posted or voided once.
* ``CloseAccount``: the account rejects new transfers and posts; voids and expiry of its
  pending transfers still work.
* ``ExpirePendingTransfers``: time arrives as data (``now_us``); every pending transfer
  whose deadline is at or before it expires, at most ``limit`` per command.

A command with ``linked`` set forms a chain with the commands after it, up to and including
the first one without ``linked``: they succeed or fail together.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Final
from uuid import UUID

from pydantic import ConfigDict, Field, Strict, StringConstraints, TypeAdapter, ValidationError

from ledger.domain.errors import CommandRejected, RejectionCode
from ledger.domain.money import (
    CODE_MAX,
    EXPIRE_BATCH_MAX,
    METADATA_ENTRIES_MAX,
    METADATA_KEY_LENGTH_MAX,
    METADATA_VALUE_LENGTH_MAX,
    NIL_ID,
    SCALE_DEFAULT,
    SCALE_MAX,
)

__all__ = [
    "AccountFlags",
    "CancelPendingTransfer",
    "CloseAccount",
    "Command",
    "CreateTransfer",
    "ExpirePendingTransfers",
    "OpenAccount",
    "TransferFlags",
    "command_to_data",
    "parse_command",
]

_CONFIG: Final = ConfigDict(extra="forbid")

StrictBool = Annotated[bool, Strict()]
NonNegativeInt = Annotated[int, Strict(), Field(ge=0)]
Code = Annotated[int, Strict(), Field(ge=0, le=CODE_MAX)]
Scale = Annotated[int, Strict(), Field(ge=0, le=SCALE_MAX)]
LedgerCode = Annotated[str, Strict(), StringConstraints(pattern=r"^([A-Z0-9_]{1,12})?$")]
MetadataKey = Annotated[
    str, Strict(), StringConstraints(min_length=1, max_length=METADATA_KEY_LENGTH_MAX)
]
MetadataValue = Annotated[str, Strict(), StringConstraints(max_length=METADATA_VALUE_LENGTH_MAX)]
Metadata = Annotated[dict[MetadataKey, MetadataValue], Field(max_length=METADATA_ENTRIES_MAX)]


@dataclass(frozen=True, slots=True)
class AccountFlags:
    """Balance limits of an account, fixed when it is opened (at most one may be set).

    ``debits_must_not_exceed_credits``: debits_pending + debits_posted <= credits_posted
    (an asset the customer holds: the account cannot go below zero).
    ``credits_must_not_exceed_debits``: the mirror image, for accounts that carry debits.
    """

    __pydantic_config__: ClassVar[ConfigDict] = _CONFIG

    debits_must_not_exceed_credits: StrictBool = False
    credits_must_not_exceed_debits: StrictBool = False


@dataclass(frozen=True, slots=True)
class TransferFlags:
    """Flags of a transfer: ``linked`` chains it to the next command; at most one of
    ``pending``, ``post_pending_transfer`` and ``void_pending_transfer`` may be set."""

    __pydantic_config__: ClassVar[ConfigDict] = _CONFIG

    linked: StrictBool = False
    pending: StrictBool = False
    post_pending_transfer: StrictBool = False
    void_pending_transfer: StrictBool = False


_NO_ACCOUNT_FLAGS: Final = AccountFlags()
_NO_TRANSFER_FLAGS: Final = TransferFlags()


@dataclass(frozen=True, slots=True)
class OpenAccount:
    """Open an account with a client-chosen id in one ledger (currency) code."""

    __pydantic_config__: ClassVar[ConfigDict] = _CONFIG

    id: UUID
    ledger: LedgerCode
    code: Code
    flags: AccountFlags = _NO_ACCOUNT_FLAGS
    metadata: Metadata = field(default_factory=dict)
    linked: StrictBool = False
    scale: Scale = SCALE_DEFAULT

    def referenced_account_ids(self) -> tuple[UUID, ...]:
        return (self.id,)

    def referenced_transfer_ids(self) -> tuple[UUID, ...]:
        return ()


@dataclass(frozen=True, slots=True)
class CloseAccount:
    """Close an account: it takes no new transfers or posts; its holds may still be
    voided or expire. Closing a closed account is an idempotent ``exists``."""

    __pydantic_config__: ClassVar[ConfigDict] = _CONFIG

    id: UUID
    linked: StrictBool = False

    def referenced_account_ids(self) -> tuple[UUID, ...]:
        return (self.id,)

    def referenced_transfer_ids(self) -> tuple[UUID, ...]:
        return ()


@dataclass(frozen=True, slots=True)
class CreateTransfer:
    """Move ``amount_minor`` from the debit to the credit account: single-phase, pending,
    or the post / void of a pending transfer (see the module docstring)."""

    __pydantic_config__: ClassVar[ConfigDict] = _CONFIG

    id: UUID
    debit_account_id: UUID = NIL_ID
    credit_account_id: UUID = NIL_ID
    amount_minor: NonNegativeInt = 0
    ledger: LedgerCode = ""
    code: Code = 0
    flags: TransferFlags = _NO_TRANSFER_FLAGS
    pending_id: UUID | None = None
    timeout_s: NonNegativeInt = 0
    metadata: Metadata = field(default_factory=dict)

    @property
    def linked(self) -> bool:
        """The ``linked`` flag: this transfer and the next command succeed or fail together."""
        return self.flags.linked

    def referenced_account_ids(self) -> tuple[UUID, ...]:
        """The accounts named by the command (the nil UUID left out).

        A post or void that omits its accounts uses the pending transfer's: the node loads
        :meth:`referenced_transfer_ids` first, then the accounts of the pending transfer
        (``Transfer.debit_account_id`` / ``credit_account_id``).
        """
        return tuple(
            account_id
            for account_id in (self.debit_account_id, self.credit_account_id)
            if account_id != NIL_ID
        )

    def referenced_transfer_ids(self) -> tuple[UUID, ...]:
        """Its own id (for the idempotency lookup) and the pending transfer, if any."""
        if self.pending_id is None:
            return (self.id,)
        return (self.id, self.pending_id)


@dataclass(frozen=True, slots=True)
class ExpirePendingTransfers:
    """Expire every pending transfer whose deadline is at or before ``now_us``
    (microseconds since the epoch), oldest deadline first, at most ``limit`` of them.

    It cannot be linked: arriving inside an open chain, it leaves that chain unterminated.
    The deadlines come from the state's own pending index, so it names no ids.
    """

    __pydantic_config__: ClassVar[ConfigDict] = _CONFIG

    linked: ClassVar[bool] = False

    now_us: NonNegativeInt
    limit: Annotated[int, Strict(), Field(ge=1, le=EXPIRE_BATCH_MAX)] = EXPIRE_BATCH_MAX

    def referenced_account_ids(self) -> tuple[UUID, ...]:
        return ()

    def referenced_transfer_ids(self) -> tuple[UUID, ...]:
        return ()


@dataclass(frozen=True, slots=True)
class CancelPendingTransfer:
    """The cancel of a TCC branch: void pending transfer ``pending_id`` if it exists and
    is still pending; if it does not exist yet, forbid it (``PendingTransferForbidden``),
    so that a try arriving after its cancel is refused with ``id_already_cancelled``
    instead of leaving a hold nobody will release. Cancelling a hold that already ended
    by void or expiry, or was already forbidden, succeeds and changes nothing. ``id`` is
    the void's own transfer id: resubmitting the same cancel answers ``exists``.

    It cannot be linked (a cancellation must not depend on anything else succeeding).
    """

    __pydantic_config__: ClassVar[ConfigDict] = _CONFIG

    linked: ClassVar[bool] = False

    id: UUID
    pending_id: UUID

    def referenced_account_ids(self) -> tuple[UUID, ...]:
        return ()

    def referenced_transfer_ids(self) -> tuple[UUID, ...]:
        return (self.id, self.pending_id)


Command = (
    OpenAccount | CloseAccount | CreateTransfer | ExpirePendingTransfers | CancelPendingTransfer
)
"""Every command the ledger decides."""

COMMAND_TYPES: Final[dict[str, type[Command]]] = {
    "OpenAccount": OpenAccount,
    "CloseAccount": CloseAccount,
    "CreateTransfer": CreateTransfer,
    "ExpirePendingTransfers": ExpirePendingTransfers,
    "CancelPendingTransfer": CancelPendingTransfer,
}

_ADAPTERS: Final[dict[str, TypeAdapter[Any]]] = {
    name: TypeAdapter(cls) for name, cls in COMMAND_TYPES.items()
}
_ERRORS_SHOWN_MAX: Final = 5


def parse_command(data: Mapping[str, Any], kind: str | None = None, path: str = "$") -> Command:
    """Build a command from untrusted, JSON-decoded data; raise ``invalid_field`` if it is
    not well-formed, with a detail that says where (``at $.amount_minor: ...``).

    The command type comes from ``kind`` or, when ``kind`` is None, from ``data["type"]``
    (``OpenAccount``, ``CloseAccount``, ``CreateTransfer``, ``ExpirePendingTransfers``).
    ``path`` prefixes the locations, e.g. ``$.transfers[3]`` for the fourth of a batch.
    Only structure is checked here; ledger rules are checked by ``decide``.
    """
    if not isinstance(data, Mapping):
        raise CommandRejected(RejectionCode.invalid_field, f"at {path}: must be an object")
    fields = dict(data)
    tag = fields.pop("type", None)
    if kind is None:
        kind = tag if isinstance(tag, str) else None
    elif tag is not None and tag != kind:
        raise CommandRejected(
            RejectionCode.invalid_field, f"at {path}.type: must be {kind!r}, not {tag!r}"
        )
    adapter = _ADAPTERS.get(kind) if kind is not None else None
    if adapter is None:
        expected = ", ".join(COMMAND_TYPES)
        raise CommandRejected(
            RejectionCode.invalid_field, f"at {path}.type: must be one of {expected}"
        )
    try:
        command: Command = adapter.validate_python(fields)
    except ValidationError as error:
        raise CommandRejected(RejectionCode.invalid_field, _describe(error, path)) from None
    return command


_MESSAGES: Final = {
    "unexpected_keyword_argument": "unexpected field",
    "missing_keyword_argument": "field required",
    "missing_argument": "field required",
    "missing": "field required",
}
_SHOULD: Final = re.compile(r"^\w+ should ")
_IDENTIFIER: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _step(step: int | str) -> str:
    if isinstance(step, int):
        return f"[{step}]"
    if step == "[key]":
        return " (key)"
    if _IDENTIFIER.match(step):
        return f".{step}"
    return f"[{step!r}]"


def _describe(error: ValidationError, path: str) -> str:
    parts = []
    for item in error.errors(include_url=False)[:_ERRORS_SHOWN_MAX]:
        where = path + "".join(_step(step) for step in item["loc"])
        message = _MESSAGES.get(item["type"]) or _SHOULD.sub("must ", item["msg"], count=1)
        parts.append(f"at {where}: {message}")
    if error.error_count() > _ERRORS_SHOWN_MAX:
        parts.append(f"and {error.error_count() - _ERRORS_SHOWN_MAX} more")
    return "; ".join(parts)


def command_to_data(command: Command) -> dict[str, Any]:
    """The JSON-compatible form of a command, with its ``type``; the inverse of
    :func:`parse_command`."""
    data: dict[str, Any] = {"type": type(command).__name__}
    data.update(_ADAPTERS[type(command).__name__].dump_python(command, mode="json"))
    return data
