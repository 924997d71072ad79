"""The event envelope shared by the WAL and the event store, and its hash chain.

An :class:`EventRecord` is one domain event as it is stored: the writer assigns its gap-free
``position`` and links it to the record before it with ``hash = sha256(prev_hash ||
canonical_bytes)``. The canonical bytes are the envelope without ``hash``, serialised as
JSON with sorted keys (orjson), so the WAL, PostgreSQL and an auditor's replay all compute
the same digest. Any edit, deletion or reordering of a record breaks the chain from that
record on. The first record of a book chains from :data:`GENESIS_HASH` (32 zero bytes).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID, SafeUUID

import orjson

try:
    from ledger.application import _chain as _native
except ImportError:  # pragma: no cover - the extension is built by `make`
    _native = None  # type: ignore[assignment]

__all__ = [
    "GENESIS_HASH",
    "ChainBroken",
    "EventRecord",
    "PendingRecord",
    "canonical_bytes",
    "chain_new_events",
    "chain_records",
    "compute_hash",
    "record_from_dict",
    "verify_chain",
]

GENESIS_HASH = bytes(32)
_SORT = orjson.OPT_SORT_KEYS


class ChainBroken(ValueError):
    """A record does not follow its predecessor (position or hash); says which and why."""


@dataclass(frozen=True, slots=True)
class EventRecord:
    """One stored event. ``data`` is JSON-compatible (ints, strings, lists, dicts)."""

    position: int
    event_id: UUID
    stream_id: str
    stream_version: int
    type: str
    schema_version: int
    recorded_at_us: int
    data: Mapping[str, Any]
    prev_hash: bytes
    hash: bytes
    # Set only by chain_records, right after it hashed exactly these bytes: the WAL then
    # frames the record without hashing it again and the event store copies data_json
    # as it is. They are init=False so that dataclasses.replace() (which copies init
    # fields only) can never carry bytes over to a record whose fields have changed.
    canonical_cache: bytes | None = field(default=None, init=False, compare=False, repr=False)
    data_json: bytes | None = field(default=None, init=False, compare=False, repr=False)

    def canonical(self) -> bytes:
        if self.canonical_cache is not None:
            return self.canonical_cache
        return canonical_bytes(
            self.position,
            self.event_id,
            self.stream_id,
            self.stream_version,
            self.type,
            self.schema_version,
            self.recorded_at_us,
            self.data,
            self.prev_hash,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (hashes in hex), as printed by ``ledger wal dump``."""
        return {
            "position": self.position,
            "event_id": str(self.event_id),
            "stream_id": self.stream_id,
            "stream_version": self.stream_version,
            "type": self.type,
            "schema_version": self.schema_version,
            "recorded_at_us": self.recorded_at_us,
            "data": self.data,
            "prev_hash": self.prev_hash.hex(),
            "hash": self.hash.hex(),
        }


def record_from_dict(d: Mapping[str, Any]) -> EventRecord:
    """Inverse of :meth:`EventRecord.to_dict`."""
    return EventRecord(
        position=int(d["position"]),
        event_id=UUID(str(d["event_id"])),
        stream_id=str(d["stream_id"]),
        stream_version=int(d["stream_version"]),
        type=str(d["type"]),
        schema_version=int(d["schema_version"]),
        recorded_at_us=int(d["recorded_at_us"]),
        data=d["data"],
        prev_hash=bytes.fromhex(d["prev_hash"]),
        hash=bytes.fromhex(d["hash"]),
    )


def canonical_bytes(
    position: int,
    event_id: UUID,
    stream_id: str,
    stream_version: int,
    type_: str,
    schema_version: int,
    recorded_at_us: int,
    data: Mapping[str, Any],
    prev_hash: bytes,
) -> bytes:
    """The bytes that are hashed: every envelope field except ``hash``, keys sorted."""
    return orjson.dumps(
        {
            "data": data,
            "event_id": str(event_id),
            "position": position,
            "prev_hash": prev_hash.hex(),
            "recorded_at_us": recorded_at_us,
            "schema_version": schema_version,
            "stream_id": stream_id,
            "stream_version": stream_version,
            "type": type_,
        },
        option=_SORT,
    )


PLAIN_TEXT = re.compile(r"[A-Za-z0-9_.:-]*")
"""Stream ids and type names written into canonical bytes as they are (no JSON escapes);
use ``fullmatch`` (``$`` would also accept a trailing newline)."""


def _fast_canonical(
    position: int,
    event_id: UUID,
    stream_id: str,
    stream_version: int,
    type_: str,
    schema_version: int,
    recorded_at_us: int,
    data_json: bytes,
    prev_hash: bytes,
) -> bytes:
    """:func:`canonical_bytes` built around already-serialised ``data`` (no second pass
    over it). Byte-identical to the orjson form; a test checks that on random records."""
    return CANONICAL_FORM % (
        data_json,
        str(event_id).encode(),
        position,
        prev_hash.hex().encode(),
        recorded_at_us,
        schema_version,
        stream_id.encode(),
        stream_version,
        type_.encode(),
    )


CANONICAL_FORM = (
    b'{"data":%b,"event_id":"%b","position":%d,"prev_hash":"%b","recorded_at_us":%d,'
    b'"schema_version":%d,"stream_id":"%b","stream_version":%d,"type":"%b"}'
)
"""The canonical envelope as one format (one pass, integers formatted in C): the keys in
sorted order, as orjson writes them with ``OPT_SORT_KEYS``."""


def compute_hash(prev_hash: bytes, canonical: bytes) -> bytes:
    return hashlib.sha256(prev_hash + canonical).digest()


@dataclass(frozen=True, slots=True)
class PendingRecord:
    """An event before the writer has placed it: everything but position and hashes."""

    event_id: UUID
    stream_id: str
    stream_version: int
    type: str
    schema_version: int
    recorded_at_us: int
    data: Mapping[str, Any]


def chain_records(
    pending: Iterable[PendingRecord], first_position: int, prev_hash: bytes
) -> list[EventRecord]:
    """Assign consecutive positions from ``first_position`` and link the hash chain."""
    out: list[EventRecord] = []
    position = first_position
    sha256 = hashlib.sha256
    set_field = object.__setattr__  # the record is frozen; these two fields are caches
    for p in pending:
        data_json = orjson.dumps(p.data, option=_SORT)
        if (
            PLAIN_TEXT.fullmatch(p.stream_id)
            and PLAIN_TEXT.fullmatch(p.type)
            and type(p.stream_version) is int
            and type(p.schema_version) is int
            and type(p.recorded_at_us) is int
        ):
            canon = _fast_canonical(
                position,
                p.event_id,
                p.stream_id,
                p.stream_version,
                p.type,
                p.schema_version,
                p.recorded_at_us,
                data_json,
                prev_hash,
            )
        else:
            canon = canonical_bytes(
                position,
                p.event_id,
                p.stream_id,
                p.stream_version,
                p.type,
                p.schema_version,
                p.recorded_at_us,
                p.data,
                prev_hash,
            )
        digest = sha256(prev_hash + canon).digest()
        record = EventRecord(
            position,
            p.event_id,
            p.stream_id,
            p.stream_version,
            p.type,
            p.schema_version,
            p.recorded_at_us,
            p.data,
            prev_hash,
            digest,
        )
        set_field(record, "canonical_cache", canon)
        set_field(record, "data_json", data_json)
        out.append(record)
        prev_hash = digest
        position += 1
    return out


EventItem = tuple[str, int, str, int, Mapping[str, Any]]
"""A decided event as the writer chains it: ``(stream_id, stream_version, type,
schema_version, data)``."""

_V4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_V4_SET = (0x4000 << 64) | (0x8000 << 48)
_UNKNOWN = SafeUUID.unknown
_new = object.__new__
_set = object.__setattr__


def uuids_from_random(raw: bytes) -> list[UUID]:
    """Version 4 UUIDs from random bytes, 16 per id (the version and variant bits are
    forced, as ``uuid.uuid4()`` does): one ``os.urandom`` call for a whole batch instead
    of a system call and a validating constructor per id."""
    out = []
    for i in range(0, len(raw), 16):
        u = _new(UUID)
        _set(u, "int", (int.from_bytes(raw[i : i + 16]) & _V4_CLEAR) | _V4_SET)
        _set(u, "is_safe", _UNKNOWN)
        out.append(u)
    return out


def chain_new_events(
    items: list[EventItem],
    raw_ids: bytes,
    recorded_at_us: int,
    first_position: int,
    prev_hash: bytes,
) -> list[EventRecord]:
    """Records for freshly decided events: event ids from ``raw_ids`` (16 random bytes
    each, see :func:`uuids_from_random`), consecutive positions from ``first_position``,
    the hash chain from ``prev_hash``. The same records as :func:`chain_records` over the
    equivalent :class:`PendingRecord` list; one native call where the extension is built
    and every event is of the plain kind (it says which it takes), else exactly that."""
    if len(raw_ids) != 16 * len(items):
        raise ValueError(f"{len(items)} events need {16 * len(items)} id bytes, got {len(raw_ids)}")
    if _native is not None and len(prev_hash) == 32:
        records = _native.chain_events(
            items,
            raw_ids,
            recorded_at_us,
            first_position,
            prev_hash,
            orjson.dumps,
            _SORT,
            EventRecord,
            UUID,
            _UNKNOWN,
        )
        if records is not None:
            return records
    pending = [
        PendingRecord(event_id, stream_id, version, type_, schema, recorded_at_us, data)
        for event_id, (stream_id, version, type_, schema, data) in zip(
            uuids_from_random(raw_ids), items, strict=True
        )
    ]
    return chain_records(pending, first_position, prev_hash)


def verify_chain(
    records: Iterable[EventRecord], expected_position: int, prev_hash: bytes
) -> Iterator[EventRecord]:
    """Yield each record after checking position continuity, ``prev_hash`` and ``hash``."""
    for r in records:
        if r.position != expected_position:
            raise ChainBroken(f"position {r.position} follows {expected_position - 1}")
        if r.prev_hash != prev_hash:
            raise ChainBroken(f"position {r.position}: prev_hash does not match predecessor")
        if compute_hash(prev_hash, r.canonical()) != r.hash:
            raise ChainBroken(f"position {r.position}: hash does not match content")
        yield r
        prev_hash = r.hash
        expected_position += 1
