"""Events: what happened, in the past tense; the only thing the ledger stores.

Every event is a frozen pydantic model with a stable tag ``type`` (never the Python class
path: renaming a class must not orphan stored events) and a ``schema_version``. Each event
names its stream (``stream_id``, ``stream_version``): ``account-<id>`` or
``transfer-<id>``, so the event store's unique (stream_id, stream_version) pair backs up
the rule that an id is used once.

Events carry what projections and auditors need without looking anything up: every field
of the transfer, the batch timestamp, and the four balances of both accounts *after* the
event (``debit_account_after`` / ``credit_account_after``). ``evolve`` recomputes the
balances from the amounts and checks them against these, so a replay verifies them.

Schema evolution (the contract): a new version may only add fields with defaults; fields
are never renamed or retyped in place. An event stored as ``(type, version)`` is read by
running the upcasters registered in :data:`UPCASTERS` for ``(type, version)``,
``(type, version + 1)`` ... until it reaches the current version, then building the model.

Hot path: the domain builds events from values it has already checked, so it uses
:func:`trusted`, which skips validation (as pydantic's ``model_construct`` does, but about
six times faster). :func:`event_to_data` and :func:`event_from_data` convert to and from
the JSON-compatible ``data`` of the stored envelope; they are hand-written per type because
they run for every event written and read (see ``benchmarks/bench_domain.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Annotated, Any, Final, Literal, TypeVar, Union
from uuid import UUID, SafeUUID

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, TypeAdapter, WithJsonSchema

from ledger.domain.commands import AccountFlags, TransferFlags
from ledger.domain.errors import InvariantViolated
from ledger.domain.money import AccountBalances

__all__ = [
    "CURRENT_SCHEMA_VERSIONS",
    "EVENT_TYPES",
    "UPCASTERS",
    "AccountClosed",
    "AccountOpened",
    "Balances",
    "Event",
    "LedgerEvent",
    "PendingTransferExpired",
    "PendingTransferForbidden",
    "PendingTransferPosted",
    "PendingTransferVoided",
    "TransferCreated",
    "Upcaster",
    "event_from_data",
    "event_to_data",
    "register_upcaster",
    "trusted",
]


def _balances_to_data(balances: AccountBalances) -> dict[str, int]:
    return {
        "debits_pending": balances[0],
        "debits_posted": balances[1],
        "credits_pending": balances[2],
        "credits_posted": balances[3],
    }


def _balances_from_data(data: Mapping[str, int]) -> AccountBalances:
    return _new_tuple(
        AccountBalances,
        (
            data["debits_pending"],
            data["debits_posted"],
            data["credits_pending"],
            data["credits_posted"],
        ),
    )


_new_tuple = tuple.__new__


_BALANCES_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "title": "AccountBalances",
    "properties": {name: {"type": "integer", "minimum": 0} for name in AccountBalances._fields},
    "required": list(AccountBalances._fields),
    "additionalProperties": False,
}

Balances = Annotated[
    AccountBalances,
    PlainSerializer(_balances_to_data, return_type=dict[str, int]),
    WithJsonSchema(_BALANCES_SCHEMA),
]
"""An account's balances in an event; serialised as an object with four named ints."""


class Event(BaseModel):
    """Base of the ledger's events: frozen, tagged, versioned."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: str
    schema_version: int = 1

    @property
    def stream_id(self) -> str:
        raise NotImplementedError

    @property
    def stream_version(self) -> int:
        raise NotImplementedError


class AccountOpened(Event):
    """An account was opened; balances start at zero."""

    type: Literal["AccountOpened"] = "AccountOpened"
    account_id: UUID
    ledger: str
    scale: int
    code: int
    flags: AccountFlags
    metadata: dict[str, str]
    timestamp_us: int

    @property
    def stream_id(self) -> str:
        return f"account-{_account_str(self.account_id)}"

    @property
    def stream_version(self) -> int:
        return 1


class AccountClosed(Event):
    """An account was closed; ``account_after`` are its balances at that moment."""

    type: Literal["AccountClosed"] = "AccountClosed"
    account_id: UUID
    timestamp_us: int
    account_after: Balances

    @property
    def stream_id(self) -> str:
        return f"account-{_account_str(self.account_id)}"

    @property
    def stream_version(self) -> int:
        return 2


class TransferCreated(Event):
    """A single-phase transfer was posted, or a pending transfer reserved its amount
    (``flags.pending``; it expires at ``expires_at_us`` unless that is None)."""

    type: Literal["TransferCreated"] = "TransferCreated"
    transfer_id: UUID
    debit_account_id: UUID
    credit_account_id: UUID
    amount_minor: int = Field(gt=0)
    ledger: str
    code: int
    flags: TransferFlags
    timeout_s: int
    expires_at_us: int | None
    metadata: dict[str, str]
    timestamp_us: int
    debit_account_after: Balances
    credit_account_after: Balances

    @property
    def stream_id(self) -> str:
        return f"transfer-{_id_str(self.transfer_id)}"

    @property
    def stream_version(self) -> int:
        return 1


class PendingTransferPosted(Event):
    """Transfer ``transfer_id`` posted ``amount_minor`` of pending transfer ``pending_id``
    (``pending_amount_minor`` was reserved; the rest is released)."""

    type: Literal["PendingTransferPosted"] = "PendingTransferPosted"
    transfer_id: UUID
    pending_id: UUID
    debit_account_id: UUID
    credit_account_id: UUID
    amount_minor: int = Field(gt=0)
    pending_amount_minor: int = Field(gt=0)
    ledger: str
    code: int
    flags: TransferFlags
    metadata: dict[str, str]
    timestamp_us: int
    debit_account_after: Balances
    credit_account_after: Balances

    @property
    def stream_id(self) -> str:
        return f"transfer-{_id_str(self.transfer_id)}"

    @property
    def stream_version(self) -> int:
        return 1


class PendingTransferVoided(Event):
    """Transfer ``transfer_id`` voided pending transfer ``pending_id``, releasing its
    ``amount_minor``."""

    type: Literal["PendingTransferVoided"] = "PendingTransferVoided"
    transfer_id: UUID
    pending_id: UUID
    debit_account_id: UUID
    credit_account_id: UUID
    amount_minor: int = Field(gt=0)
    ledger: str
    code: int
    flags: TransferFlags
    metadata: dict[str, str]
    timestamp_us: int
    debit_account_after: Balances
    credit_account_after: Balances

    @property
    def stream_id(self) -> str:
        return f"transfer-{_id_str(self.transfer_id)}"

    @property
    def stream_version(self) -> int:
        return 1


class PendingTransferExpired(Event):
    """Pending transfer ``pending_id`` reached its deadline ``expires_at_us`` and released
    ``amount_minor``; ``timestamp_us`` is the ``now_us`` of the expiring command."""

    type: Literal["PendingTransferExpired"] = "PendingTransferExpired"
    pending_id: UUID
    debit_account_id: UUID
    credit_account_id: UUID
    amount_minor: int = Field(gt=0)
    ledger: str
    code: int
    expires_at_us: int
    timestamp_us: int
    debit_account_after: Balances
    credit_account_after: Balances

    @property
    def stream_id(self) -> str:
        return f"transfer-{_id_str(self.pending_id)}"

    @property
    def stream_version(self) -> int:
        return 2


class PendingTransferForbidden(Event):
    """A cancellation (``CancelPendingTransfer`` ``transfer_id``) arrived before pending
    transfer ``pending_id`` was created: nothing was reserved, nothing is released, and the
    id ``pending_id`` can no longer be used (a late TCC try is refused: no hanging hold).
    It occupies the pending id's stream, so the event store's unique (stream, version)
    backs the rule up."""

    type: Literal["PendingTransferForbidden"] = "PendingTransferForbidden"
    transfer_id: UUID
    pending_id: UUID
    timestamp_us: int

    @property
    def stream_id(self) -> str:
        return f"transfer-{_id_str(self.pending_id)}"

    @property
    def stream_version(self) -> int:
        return 1


LedgerEvent = Annotated[
    Union[  # noqa: UP007 (a discriminated union needs the Union spelling in Annotated)
        AccountOpened,
        AccountClosed,
        TransferCreated,
        PendingTransferPosted,
        PendingTransferVoided,
        PendingTransferExpired,
        PendingTransferForbidden,
    ],
    Field(discriminator="type"),
]
"""Any ledger event, discriminated by ``type`` (for validation of untrusted input)."""

LEDGER_EVENT_ADAPTER: Final[TypeAdapter[LedgerEvent]] = TypeAdapter(LedgerEvent)

EVENT_TYPES: Final[dict[str, type[Event]]] = {
    cls.model_fields["type"].default: cls
    for cls in (
        AccountOpened,
        AccountClosed,
        TransferCreated,
        PendingTransferPosted,
        PendingTransferVoided,
        PendingTransferExpired,
        PendingTransferForbidden,
    )
}

CURRENT_SCHEMA_VERSIONS: Final[dict[str, int]] = {name: 1 for name in EVENT_TYPES}
"""The version every event type is written at today."""

E = TypeVar("E", bound=Event)

_new = object.__new__
# The slot descriptors of BaseModel, called directly: a third faster than __setattr__.
_set_dict = BaseModel.__dict__["__dict__"].__set__
_set_fields_set = BaseModel.__dict__["__pydantic_fields_set__"].__set__
_set_extra = BaseModel.__dict__["__pydantic_extra__"].__set__
_set_private = BaseModel.__dict__["__pydantic_private__"].__set__
# One shared, complete fields-set per class. It is a set (not a frozenset) because
# ``model_copy(update=...)`` copies it and then updates the copy; pydantic never mutates it
# in place on a frozen model, and nothing here does.
FIELDS_SET: Final[dict[type[Event], set[str]]] = {
    cls: set(cls.model_fields) for cls in EVENT_TYPES.values()
}


def trusted(cls: type[E], values: dict[str, Any]) -> E:
    """Build an event from values the domain has already checked, without validation.

    ``values`` must hold every field, ``type`` and ``schema_version`` included, with the
    right types; it becomes the event's ``__dict__`` (the caller must not keep it).
    Tests validate every event the domain emits against the model, so this shortcut
    cannot drift from the schema unnoticed.
    """
    event = _new(cls)
    _set_dict(event, values)
    _set_fields_set(event, FIELDS_SET[cls])
    _set_extra(event, None)
    _set_private(event, None)
    return event


# --- ids ---------------------------------------------------------------------------
#
# ``str(uuid)`` and ``UUID(text)`` run Python code and cost more than the rest of an event's
# conversion. Transfer ids are converted directly, with the digits formatted or parsed in
# one step; account ids recur across events, so their two forms are memoised in bounded
# maps (a cache of a pure function: emptied when full, never consulted for meaning).

_ID_CACHE_SIZE_MAX: Final = 1 << 16
_account_strs: dict[UUID, str] = {}
_account_uuids: dict[str, UUID] = {}
_set_uuid_int = UUID.__dict__["int"].__set__
_set_uuid_is_safe = UUID.__dict__["is_safe"].__set__
_UUID_SAFETY_UNKNOWN: Final = SafeUUID.unknown


def _id_str(value: UUID) -> str:
    digits = "%032x" % value.int  # noqa: UP031 (the fastest spelling; as in uuid.py)
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


def _uuid(text: str) -> UUID:
    """``UUID(text)`` for the canonical 36-character form, twice as fast (it parses the
    digits as ``uuid.py`` does, with ``int(digits, 16)``)."""
    if len(text) != 36 or text[8] != "-" or text[13] != "-" or text[18] != "-" or text[23] != "-":
        return UUID(text)  # not the canonical form: let uuid.py parse or refuse it
    value = _new(UUID)
    _set_uuid_int(value, int(text.replace("-", ""), 16))
    _set_uuid_is_safe(value, _UUID_SAFETY_UNKNOWN)
    return value


def _account_str(value: UUID) -> str:
    text = _account_strs.get(value)
    if text is None:
        if len(_account_strs) >= _ID_CACHE_SIZE_MAX:
            _account_strs.clear()
        text = _account_strs[value] = _id_str(value)
    return text


def _account_uuid(text: str) -> UUID:
    value = _account_uuids.get(text)
    if value is None:
        if len(_account_uuids) >= _ID_CACHE_SIZE_MAX:
            _account_uuids.clear()
        value = _account_uuids[text] = _uuid(text)
    return value


# --- to data -------------------------------------------------------------------------


def _account_flags_data(flags: AccountFlags) -> dict[str, bool]:
    return {
        "debits_must_not_exceed_credits": flags.debits_must_not_exceed_credits,
        "credits_must_not_exceed_debits": flags.credits_must_not_exceed_debits,
    }


def _transfer_flags_data(flags: TransferFlags) -> dict[str, bool]:
    return {
        "linked": flags.linked,
        "pending": flags.pending,
        "post_pending_transfer": flags.post_pending_transfer,
        "void_pending_transfer": flags.void_pending_transfer,
    }


def _account_opened_data(e: Any) -> dict[str, Any]:
    return {
        "account_id": _account_str(e.account_id),
        "ledger": e.ledger,
        "scale": e.scale,
        "code": e.code,
        "flags": _account_flags_data(e.flags),
        "metadata": dict(e.metadata),
        "timestamp_us": e.timestamp_us,
    }


def _account_closed_data(e: Any) -> dict[str, Any]:
    return {
        "account_id": _account_str(e.account_id),
        "timestamp_us": e.timestamp_us,
        "account_after": _balances_to_data(e.account_after),
    }


def _transfer_created_data(e: Any) -> dict[str, Any]:
    return {
        "transfer_id": _id_str(e.transfer_id),
        "debit_account_id": _account_str(e.debit_account_id),
        "credit_account_id": _account_str(e.credit_account_id),
        "amount_minor": e.amount_minor,
        "ledger": e.ledger,
        "code": e.code,
        "flags": _transfer_flags_data(e.flags),
        "timeout_s": e.timeout_s,
        "expires_at_us": e.expires_at_us,
        "metadata": dict(e.metadata),
        "timestamp_us": e.timestamp_us,
        "debit_account_after": _balances_to_data(e.debit_account_after),
        "credit_account_after": _balances_to_data(e.credit_account_after),
    }


def _pending_resolved_data(e: Any) -> dict[str, Any]:
    data = {
        "transfer_id": _id_str(e.transfer_id),
        "pending_id": _id_str(e.pending_id),
        "debit_account_id": _account_str(e.debit_account_id),
        "credit_account_id": _account_str(e.credit_account_id),
        "amount_minor": e.amount_minor,
        "ledger": e.ledger,
        "code": e.code,
        "flags": _transfer_flags_data(e.flags),
        "metadata": dict(e.metadata),
        "timestamp_us": e.timestamp_us,
        "debit_account_after": _balances_to_data(e.debit_account_after),
        "credit_account_after": _balances_to_data(e.credit_account_after),
    }
    if e.type == "PendingTransferPosted":
        data["pending_amount_minor"] = e.pending_amount_minor
    return data


def _pending_expired_data(e: Any) -> dict[str, Any]:
    return {
        "pending_id": _id_str(e.pending_id),
        "debit_account_id": _account_str(e.debit_account_id),
        "credit_account_id": _account_str(e.credit_account_id),
        "amount_minor": e.amount_minor,
        "ledger": e.ledger,
        "code": e.code,
        "expires_at_us": e.expires_at_us,
        "timestamp_us": e.timestamp_us,
        "debit_account_after": _balances_to_data(e.debit_account_after),
        "credit_account_after": _balances_to_data(e.credit_account_after),
    }


def _pending_forbidden_data(e: Any) -> dict[str, Any]:
    return {
        "transfer_id": _id_str(e.transfer_id),
        "pending_id": _id_str(e.pending_id),
        "timestamp_us": e.timestamp_us,
    }


_TO_DATA: Final[dict[str, Callable[[Any], dict[str, Any]]]] = {
    "PendingTransferForbidden": _pending_forbidden_data,
    "AccountOpened": _account_opened_data,
    "AccountClosed": _account_closed_data,
    "TransferCreated": _transfer_created_data,
    "PendingTransferPosted": _pending_resolved_data,
    "PendingTransferVoided": _pending_resolved_data,
    "PendingTransferExpired": _pending_expired_data,
}


def event_to_data(event: Event) -> dict[str, Any]:
    """The JSON-compatible ``data`` of an event's envelope (UUIDs as strings, amounts as
    ints). ``type`` and ``schema_version`` are not included: the envelope holds them."""
    return _TO_DATA[event.type](event)


# --- from data -----------------------------------------------------------------------

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]
"""Turns the data of ``(type, version)`` into the data of ``(type, version + 1)``."""

UPCASTERS: dict[tuple[str, int], Upcaster] = {}
"""Upcasters by the (type, schema_version) they read. Empty while every type is at v1."""


def register_upcaster(type_: str, from_version: int, upcaster: Upcaster) -> None:
    """Register the upcaster that reads ``type_`` data at ``from_version``."""
    key = (type_, from_version)
    if key in UPCASTERS:
        raise ValueError(f"an upcaster for {key} is already registered")
    UPCASTERS[key] = upcaster


def _account_opened(data: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "type": "AccountOpened",
        "schema_version": 1,
        "account_id": _account_uuid(data["account_id"]),
        "ledger": data["ledger"],
        "scale": data["scale"],
        "code": data["code"],
        "flags": _account_flags(data["flags"]),
        "metadata": dict(data["metadata"]),
        "timestamp_us": data["timestamp_us"],
    }


def _account_closed(data: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "type": "AccountClosed",
        "schema_version": 1,
        "account_id": _account_uuid(data["account_id"]),
        "timestamp_us": data["timestamp_us"],
        "account_after": _balances_from_data(data["account_after"]),
    }


# Flags are immutable values with few combinations: share one instance of each (building
# a frozen dataclass costs a microsecond).
_TRANSFER_FLAGS: Final = {
    (f.linked, f.pending, f.post_pending_transfer, f.void_pending_transfer): f
    for f in (TransferFlags(*(bool(n >> bit & 1) for bit in range(4))) for n in range(16))
}
_ACCOUNT_FLAGS: Final = {
    (f.debits_must_not_exceed_credits, f.credits_must_not_exceed_debits): f
    for f in (AccountFlags(a, b) for a in (False, True) for b in (False, True))
}


def _transfer_flags(flags: Mapping[str, bool]) -> TransferFlags:
    key = (
        flags["linked"],
        flags["pending"],
        flags["post_pending_transfer"],
        flags["void_pending_transfer"],
    )
    shared = _TRANSFER_FLAGS.get(key)
    return shared if shared is not None else TransferFlags(*key)


def _account_flags(flags: Mapping[str, bool]) -> AccountFlags:
    key = (flags["debits_must_not_exceed_credits"], flags["credits_must_not_exceed_debits"])
    shared = _ACCOUNT_FLAGS.get(key)
    return shared if shared is not None else AccountFlags(*key)


def _transfer_created(data: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "type": "TransferCreated",
        "schema_version": 1,
        "transfer_id": _uuid(data["transfer_id"]),
        "debit_account_id": _account_uuid(data["debit_account_id"]),
        "credit_account_id": _account_uuid(data["credit_account_id"]),
        "amount_minor": data["amount_minor"],
        "ledger": data["ledger"],
        "code": data["code"],
        "flags": _transfer_flags(data["flags"]),
        "timeout_s": data["timeout_s"],
        "expires_at_us": data["expires_at_us"],
        "metadata": dict(data["metadata"]),
        "timestamp_us": data["timestamp_us"],
        "debit_account_after": _balances_from_data(data["debit_account_after"]),
        "credit_account_after": _balances_from_data(data["credit_account_after"]),
    }


def _pending_resolved(type_: str, data: Mapping[str, Any]) -> dict[str, Any]:
    values = {
        "type": type_,
        "schema_version": 1,
        "transfer_id": _uuid(data["transfer_id"]),
        "pending_id": _uuid(data["pending_id"]),
        "debit_account_id": _account_uuid(data["debit_account_id"]),
        "credit_account_id": _account_uuid(data["credit_account_id"]),
        "amount_minor": data["amount_minor"],
        "ledger": data["ledger"],
        "code": data["code"],
        "flags": _transfer_flags(data["flags"]),
        "metadata": dict(data["metadata"]),
        "timestamp_us": data["timestamp_us"],
        "debit_account_after": _balances_from_data(data["debit_account_after"]),
        "credit_account_after": _balances_from_data(data["credit_account_after"]),
    }
    if type_ == "PendingTransferPosted":
        values["pending_amount_minor"] = data["pending_amount_minor"]
    return values


def _pending_expired(data: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "type": "PendingTransferExpired",
        "schema_version": 1,
        "pending_id": _uuid(data["pending_id"]),
        "debit_account_id": _account_uuid(data["debit_account_id"]),
        "credit_account_id": _account_uuid(data["credit_account_id"]),
        "amount_minor": data["amount_minor"],
        "ledger": data["ledger"],
        "code": data["code"],
        "expires_at_us": data["expires_at_us"],
        "timestamp_us": data["timestamp_us"],
        "debit_account_after": _balances_from_data(data["debit_account_after"]),
        "credit_account_after": _balances_from_data(data["credit_account_after"]),
    }


def _pending_forbidden(data: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "type": "PendingTransferForbidden",
        "schema_version": 1,
        "transfer_id": _uuid(data["transfer_id"]),
        "pending_id": _uuid(data["pending_id"]),
        "timestamp_us": data["timestamp_us"],
    }


_FROM_DATA: Final[dict[str, Callable[[Mapping[str, Any]], dict[str, Any]]]] = {
    "PendingTransferForbidden": _pending_forbidden,
    "AccountOpened": _account_opened,
    "AccountClosed": _account_closed,
    "TransferCreated": _transfer_created,
    "PendingTransferPosted": lambda data: _pending_resolved("PendingTransferPosted", data),
    "PendingTransferVoided": lambda data: _pending_resolved("PendingTransferVoided", data),
    "PendingTransferExpired": _pending_expired,
}


def event_from_data(
    type: str,
    schema_version: int,
    data: Mapping[str, Any],
    *,
    validate: bool = False,
) -> Event:
    """Rebuild an event from its envelope's ``type``, ``schema_version`` and ``data``.

    Older versions are upcast first. By default the data is trusted (it was written by
    this ledger and is covered by the WAL checksums and hash chain): fields are converted
    without validation, and a missing field raises InvariantViolated. With
    ``validate=True`` the result is validated against the model (for data of unknown
    origin; slower).
    """
    current = CURRENT_SCHEMA_VERSIONS.get(type)
    if current is None:
        raise InvariantViolated(f"unknown event type {type!r}")
    if schema_version != current:
        data = _upcast(type, schema_version, current, data)
    if validate:
        payload = dict(data)
        payload["type"] = type
        payload["schema_version"] = current
        return LEDGER_EVENT_ADAPTER.validate_python(payload)
    try:
        values = _FROM_DATA[type](data)
    except (KeyError, TypeError, ValueError) as error:
        raise InvariantViolated(f"{type} v{schema_version}: bad data: {error!r}") from error
    values["schema_version"] = current
    return trusted(EVENT_TYPES[type], values)


def _upcast(type_: str, version: int, current: int, data: Mapping[str, Any]) -> Mapping[str, Any]:
    if version > current:
        raise InvariantViolated(
            f"{type_} v{version} is newer than this code reads (v{current}): upgrade first"
        )
    upgraded = dict(data)
    while version < current:
        upcaster = UPCASTERS.get((type_, version))
        if upcaster is None:
            raise InvariantViolated(f"no upcaster registered for {type_} v{version}")
        upgraded = upcaster(upgraded)
        version += 1
    return upgraded
