"""Checkpoints: apply a batch exactly once, in order, with the gaps filled from the store.

Delivery from Kafka is at-least-once and the local broker can lose everything it holds,
so a batch of messages for one book may repeat positions that were applied already, or
skip some. :func:`apply_records` makes that harmless. In **one** PostgreSQL transaction it

1. takes the projection's advisory lock (so two workers, or a worker and a rebuild's
   swap, never interleave their writes to one projection),
2. reads the projection's checkpoint for the book (the last position applied),
3. drops every record at or below the checkpoint, and for every hole (a record beyond
   checkpoint + 1, or beyond its predecessor + 1) reads the missing range from the
   ``events`` table before going on ("backfill"),
4. applies the records in position order, checking that each one's ``prev_hash`` is the
   hash of the record before it (a message from another history is refused),
5. moves the checkpoint and runs the projection's checks (the trial balance).

Rows and checkpoint commit together or not at all, so a worker killed at any instant
leaves a state from which redelivery continues exactly.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Final

import psycopg

from ledger.application.records import EventRecord
from ledger.domain.events import EVENT_TYPES
from ledger.pgconn import connect, dsn, read_checkpoint
from projections.base import Projection, ProjectionInvariantViolated, TableNames

__all__ = [
    "CHUNK_EVENTS",
    "AppliedBatch",
    "apply_records",
    "book_heads",
    "books",
    "connect",
    "dsn",
    "lock_key",
    "read_checkpoint",
    "read_events",
]

CHUNK_EVENTS: Final = 5000
"""Records applied per statement group, and rows read per backfill query."""

_SELECT_EVENTS: Final = (
    "SELECT position, event_id, stream_id, stream_version, type, schema_version, data, "
    "recorded_at_us, prev_hash, hash FROM events "
    "WHERE book_id = %s AND position >= %s AND position <= %s ORDER BY position LIMIT %s"
)


def lock_key(checkpoint: str) -> int:
    """The advisory lock of one projection's checkpoint (a signed 64-bit key)."""
    return zlib.crc32(f"eventledger-projection:{checkpoint}".encode()) - (1 << 31)


def read_events(
    conn: psycopg.Connection[Any], book_id: str, first: int, last: int, limit: int = CHUNK_EVENTS
) -> list[EventRecord]:
    """Records ``first..last`` of ``book_id`` from the event store, at most ``limit``."""
    rows = conn.execute(_SELECT_EVENTS, (book_id, first, last, limit)).fetchall()
    return [
        EventRecord(
            position=r[0],
            event_id=r[1],
            stream_id=r[2],
            stream_version=r[3],
            type=r[4],
            schema_version=r[5],
            data=r[6],
            recorded_at_us=r[7],
            prev_hash=bytes(r[8]),
            hash=bytes(r[9]),
        )
        for r in rows
    ]


def iter_events(
    conn: psycopg.Connection[Any], book_id: str, first: int, last: int
) -> Iterator[list[EventRecord]]:
    """Chunks of records ``first..last`` of ``book_id``, in order."""
    while first <= last:
        chunk = read_events(conn, book_id, first, last)
        if not chunk:
            return
        yield chunk
        first = chunk[-1].position + 1


def books(conn: psycopg.Connection[Any]) -> list[str]:
    """Every book with events (a loose index scan over the primary key)."""
    rows = conn.execute(
        "WITH RECURSIVE b(id) AS (SELECT min(book_id) FROM events UNION ALL "
        "SELECT (SELECT min(book_id) FROM events WHERE book_id > b.id) FROM b "
        "WHERE b.id IS NOT NULL) SELECT id FROM b WHERE id IS NOT NULL"
    ).fetchall()
    return [r[0] for r in rows]


def book_heads(conn: psycopg.Connection[Any]) -> dict[str, int]:
    """The highest position of every book."""
    heads: dict[str, int] = {}
    for book in books(conn):
        row = conn.execute(
            "SELECT max(position) FROM events WHERE book_id = %s", (book,)
        ).fetchone()
        heads[book] = int(row[0]) if row and row[0] is not None else 0
    return heads


def write_checkpoint(
    conn: psycopg.Connection[Any], checkpoint: str, book_id: str, position: int
) -> None:
    conn.execute(
        "INSERT INTO projection_checkpoints (projection, book_id, position) VALUES (%s, %s, %s) "
        "ON CONFLICT (projection, book_id) DO UPDATE SET position = EXCLUDED.position, "
        "updated_at = now()",
        (checkpoint, book_id, position),
    )


@dataclass(frozen=True, slots=True)
class AppliedBatch:
    """What :func:`apply_records` did for one projection and book."""

    projection: str
    book_id: str
    applied: int
    skipped: int
    backfilled: int
    position: int


class _Applier:
    """Applies records in order, filling holes from the store, in chunks."""

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        projection: Projection,
        book_id: str,
        names: TableNames,
        checkpoint: int,
    ) -> None:
        self.conn = conn
        self.projection = projection
        self.book_id = book_id
        self.names = names
        self.expected = checkpoint + 1
        self.prev_hash: bytes | None = None
        self.pending: list[EventRecord] = []
        self.applied = 0
        self.skipped = 0
        self.backfilled = 0

    def take(self, record: EventRecord) -> None:
        if record.position < self.expected:
            self.skipped += 1
            return
        if record.position > self.expected:
            self.backfill(record.position - 1)
        self.push(record)

    def push(self, record: EventRecord) -> None:
        if self.prev_hash is not None and record.prev_hash != self.prev_hash:
            raise ProjectionInvariantViolated(
                f"book {self.book_id!r} position {record.position} (event {record.event_id}): "
                "prev_hash is not the hash of the record before it; the message does not "
                "belong to this event store's history"
            )
        self.pending.append(record)
        self.prev_hash = record.hash
        self.expected = record.position + 1
        if len(self.pending) >= CHUNK_EVENTS:
            self.flush()

    def backfill(self, last: int) -> None:
        first = self.expected
        for chunk in iter_events(self.conn, self.book_id, first, last):
            for record in chunk:
                self.push(record)
            self.backfilled += len(chunk)
        if self.expected != last + 1:
            raise ProjectionInvariantViolated(
                f"book {self.book_id!r}: positions {self.expected}..{last} are missing from "
                "the event store but later positions were received"
            )

    def flush(self) -> None:
        if self.pending:
            # Books also hold events that are not the ledger's (the coordinator journals
            # its transactions in its own book): they advance the checkpoint and change no
            # read model.
            ledger_records = [r for r in self.pending if r.type in EVENT_TYPES]
            if ledger_records:
                self.projection.apply(self.conn, self.book_id, ledger_records, self.names)
            self.applied += len(self.pending)
            self.pending = []


def apply_records(
    conn: psycopg.Connection[Any],
    projection: Projection,
    book_id: str,
    records: Iterable[EventRecord],
    *,
    names: TableNames | None = None,
    checkpoint: str | None = None,
    through: int | None = None,
) -> AppliedBatch:
    """Apply ``records`` of ``book_id`` to ``projection`` exactly once (see the module
    docstring), in one transaction on ``conn``. ``through`` also backfills from the store
    up to that position after the records (used to catch up without Kafka).
    ``names``/``checkpoint`` default to the live tables and the projection's name."""
    names = names or projection.live_names()
    checkpoint = checkpoint or projection.name
    received = list(records)
    ordered = sorted({r.position: r for r in reversed(received)}.values(), key=_position)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key(checkpoint),))
        start = read_checkpoint(conn, checkpoint, book_id)
        applier = _Applier(conn, projection, book_id, names, start)
        for record in ordered:
            applier.take(record)
        if through is not None and through >= applier.expected:
            applier.backfill(through)
        applier.flush()
        position = applier.expected - 1
        if position > start:
            write_checkpoint(conn, checkpoint, book_id, position)
            projection.check(conn, book_id, names)
    return AppliedBatch(
        projection.name,
        book_id,
        applier.applied,
        applier.skipped + len(received) - len(ordered),
        applier.backfilled,
        position,
    )


def _position(record: EventRecord) -> int:
    return record.position
