"""PostgreSQL event store of one book (psycopg 3, tables from ``ledger.adapters.tables``).

Why inserts are serialised: the book's single writer (the node holding the lease) assigns
gap-free positions and inserts one batch per transaction, strictly one after another, so
the order of positions is the order of commits. A reader that has seen position ``p``
therefore never sees a smaller position appear later (no "commit-order gap"), and a relay
can tail the table by position without holes filling in behind it.

The writer lease has two parts. A session-level advisory lock, held on a dedicated
connection for as long as the node lives, stops a second node from starting while the
first is alive (it fails with :class:`LeaseHeld`). The ``writer_leases`` row carries an
epoch, incremented by every takeover; each batch transaction first reads the row ``FOR
SHARE`` and checks the epoch, so a deposed writer (whose lock was lost, e.g. after a
network partition) can never commit, and a takeover waits for an in-flight batch to finish.

Batches go in with ``COPY``; account and pending-transfer snapshots are upserted with the
book's snapshot watermark in one transaction (the node's own, on a connection of its own,
after the batch at the watermark committed), so the snapshots always describe the state
at exactly the watermark position.
"""

from __future__ import annotations

import os
import socket
import threading
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from uuid import UUID

import orjson
import psycopg
from psycopg import sql
from psycopg.types.json import set_json_dumps

from ledger.application.errors import (
    DuplicateEvent,
    EventStoreUnavailable,
    LeaseHeld,
    LeaseLost,
)
from ledger.application.ports import SnapshotLike
from ledger.application.records import GENESIS_HASH, EventRecord
from ledger.devservices import normalise_pg_url

try:
    from ledger.application import _chain as _native
except ImportError:  # pragma: no cover - the package build compiles it (setup.py)
    _native = None  # type: ignore[assignment]

__all__ = ["WATERMARK_STREAM", "PostgresEventStore", "SnapshotRow"]

WATERMARK_STREAM = "$watermark"
SNAPSHOT_COPY_ROWS = 1024
"""Snapshot rows per COPY and upsert when a large snapshot is spread out (``pace``)."""
READ_CHUNK_ROWS = 5000
T = TypeVar("T")

_COLUMNS = (
    "book_id, position, event_id, stream_id, stream_version, type, "
    "schema_version, data, recorded_at_us, prev_hash, hash"
)


def _orjson_dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


@dataclass(frozen=True, slots=True)
class SnapshotRow:
    """The state of one account or pending transfer as of the batch it is saved with."""

    stream_id: str
    stream_version: int
    data: dict[str, Any]


_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _copy_text(value: str) -> str:
    """Escape a value for COPY's text format (ids and type names never need it, and the
    membership tests are much cheaper than a translate)."""
    if "\\" in value or "\t" in value or "\n" in value or "\r" in value:
        return value.translate(_COPY_ESCAPES)
    return value


def _copy_rows(records: Sequence[EventRecord], book: bytes) -> bytes:
    """The events table's COPY text rows in Python (the reference for ``copy_rows`` in
    ``ledger/application/_chain.c``, which builds the same bytes in one call)."""
    rows = []
    for r in records:
        data_json = r.data_json if r.data_json is not None else orjson.dumps(r.data)
        rows.append(
            b"%s\t%d\t%s\t%s\t%d\t%s\t%d\t%s\t%d\t\\\\x%s\t\\\\x%s\n"
            % (
                book,
                r.position,
                str(r.event_id).encode(),
                _copy_text(r.stream_id).encode(),
                r.stream_version,
                _copy_text(r.type).encode(),
                r.schema_version,
                data_json.replace(b"\\", b"\\\\"),
                r.recorded_at_us,
                r.prev_hash.hex().encode(),
                r.hash.hex().encode(),
            )
        )
    return b"".join(rows)


_UNSAFE_CHARACTERS = "{}\"\\ '"


def _text_array(values: Sequence[str]) -> str:
    """A PostgreSQL array literal of identifiers made of safe characters (no quoting).

    Checked over the joined text, one substring search per unsafe character (a comma
    inside an id shows as one comma too many; anything suspicious gets the exact check
    per id): checking each id in Python cost about 1.5 µs per id, as much as
    PostgreSQL's look-up of it."""
    joined = ",".join(values)
    if values and (
        joined.count(",") != len(values) - 1
        or not joined
        or ",," in joined
        or joined[0] == ","
        or joined[-1] == ","
        or any(c in joined for c in _UNSAFE_CHARACTERS)
        or "null" in joined.lower()
    ):
        for v in values:
            if not v or any(c in v for c in ",{}\"\\ '") or v.upper() == "NULL":
                raise ValueError(f"unsafe stream id {v!r}")
    return "{" + joined + "}"


def _dsn(url: str) -> str:
    return normalise_pg_url(url).replace("postgresql+psycopg://", "postgresql://", 1)


def _lock_key(book_id: str) -> int:
    return zlib.crc32(f"eventledger:{book_id}".encode()) - (1 << 31)


def _row_to_record(row: Sequence[Any]) -> EventRecord:
    return EventRecord(
        position=row[0],
        event_id=row[1],
        stream_id=row[2],
        stream_version=row[3],
        type=row[4],
        schema_version=row[5],
        recorded_at_us=row[7],
        data=row[6],
        prev_hash=bytes(row[8]),
        hash=bytes(row[9]),
    )


_SELECT = (
    "SELECT position, event_id, stream_id, stream_version, type, schema_version, data, "
    "recorded_at_us, prev_hash, hash FROM events"
)


class PostgresEventStore:
    """The event store of ``book_id`` in the database at ``url``.

    Two connections: ``write`` (batches, used by the node's commit thread) and ``read``
    (lazy loads and scans, used by one other thread at a time); each has its own lock.
    A third connection holds the advisory lock once :meth:`acquire_lease` succeeds.
    """

    def __init__(self, url: str, book_id: str, *, connect_timeout_s: int = 5) -> None:
        self._dsn = _dsn(url)
        self._book_id = book_id
        self._connect_timeout_s = connect_timeout_s
        self._locks = {name: threading.Lock() for name in ("write", "read", "snapshot")}
        self._conns: dict[str, psycopg.Connection[Any]] = {}
        self._lease_lock = threading.Lock()
        self._lease_conn: psycopg.Connection[Any] | None = None
        self._holder: str | None = None
        self.epoch: int | None = None

    @property
    def book_id(self) -> str:
        return self._book_id

    # -- connections -------------------------------------------------------------------

    def _connect(self, autocommit: bool = False) -> psycopg.Connection[Any]:
        try:
            conn = psycopg.connect(
                self._dsn, autocommit=autocommit, connect_timeout=self._connect_timeout_s
            )
        except psycopg.OperationalError as exc:
            raise EventStoreUnavailable(f"cannot connect to PostgreSQL: {exc}") from exc
        set_json_dumps(_orjson_dumps, conn)
        return conn

    def _with_conn(self, which: str, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        """Run ``fn`` on the ``which`` connection ("write", "read" or "snapshot"), one
        caller at a time per connection, reconnecting after a broken one."""
        lock = self._locks[which]
        with lock:
            conn = self._conns.get(which)
            if conn is None or conn.closed:
                conn = self._connect()
                self._conns[which] = conn
            try:
                return fn(conn)
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                # A broken connection: drop it so the next call reconnects.
                try:
                    conn.close()
                finally:
                    self._conns.pop(which, None)
                raise EventStoreUnavailable(f"PostgreSQL unavailable: {exc}") from exc
            except BaseException:
                if not conn.closed:
                    conn.rollback()
                raise

    def close(self) -> None:
        for conn in (*self._conns.values(), self._lease_conn):
            if conn is not None and not conn.closed:
                conn.close()
        self._conns.clear()
        self._lease_conn = None

    # -- lease -------------------------------------------------------------------------

    def acquire_lease(self, holder: str | None = None) -> int:
        """Take the book's writer lease (advisory lock + epoch increment); return the epoch.

        Raises :class:`LeaseHeld` naming the current holder when another live node has it.
        """
        holder = holder or f"{socket.gethostname()}:{os.getpid()}"
        if self._lease_conn is not None and not self._lease_conn.closed:
            self._lease_conn.close()
        conn = self._connect(autocommit=True)
        row = conn.execute(
            "SELECT pg_try_advisory_lock(%s)", (_lock_key(self._book_id),)
        ).fetchone()
        if not row or not row[0]:
            current = conn.execute(
                "SELECT holder, epoch, acquired_at FROM writer_leases WHERE book_id = %s",
                (self._book_id,),
            ).fetchone()
            conn.close()
            who = (
                f"{current[0]} (epoch {current[1]}, since {current[2]:%Y-%m-%d %H:%M:%S}Z)"
                if current
                else "another node"
            )
            raise LeaseHeld(
                f"book {self._book_id!r} is already being written by {who}; "
                "only one node may write a book"
            )
        epoch_row = conn.execute(
            "INSERT INTO writer_leases (book_id, epoch, holder) VALUES (%s, 1, %s) "
            "ON CONFLICT (book_id) DO UPDATE SET epoch = writer_leases.epoch + 1, "
            "holder = EXCLUDED.holder, acquired_at = now() RETURNING epoch",
            (self._book_id, holder),
        ).fetchone()
        assert epoch_row is not None
        self._lease_conn = conn
        self._holder = holder
        self.epoch = int(epoch_row[0])
        return self.epoch

    def reassert_lease(self, epoch: int) -> None:
        """After a lost connection: retake the advisory lock if the epoch is still ours.

        Raises :class:`LeaseLost` if another writer took over meanwhile, and
        :class:`EventStoreUnavailable` while the database cannot be reached.
        """
        with self._lease_lock:  # the store and snapshot stages may both retry at once
            self._reassert_lease(epoch)

    def _reassert_lease(self, epoch: int) -> None:
        if self._lease_conn is not None and not self._lease_conn.closed:
            try:
                self._lease_conn.execute("SELECT 1")
                return
            except psycopg.Error:
                self._lease_conn.close()
        conn = self._connect(autocommit=True)
        try:
            got = conn.execute(
                "SELECT pg_try_advisory_lock(%s)", (_lock_key(self._book_id),)
            ).fetchone()
            row = conn.execute(
                "SELECT epoch FROM writer_leases WHERE book_id = %s", (self._book_id,)
            ).fetchone()
        except psycopg.OperationalError as exc:
            conn.close()
            raise EventStoreUnavailable(f"PostgreSQL unavailable: {exc}") from exc
        if not got or not got[0] or row is None or int(row[0]) != epoch:
            conn.close()
            raise LeaseLost(
                f"book {self._book_id!r}: lease epoch {epoch} was taken over "
                f"(current epoch {row[0] if row else 'none'})"
            )
        self._lease_conn = conn

    # -- writes ------------------------------------------------------------------------

    def append_batch(
        self,
        records: Sequence[EventRecord],
        epoch: int,
        snapshots: Sequence[SnapshotLike] = (),
        watermark: int | None = None,
        *,
        pace: Callable[[], None] | None = None,
    ) -> None:
        """Insert ``records`` (and snapshots up to ``watermark``) in one transaction.
        Without records (snapshots and watermark alone) it runs on a connection of its
        own, so a large snapshot never holds up the batches written meanwhile. With
        ``pace``, the snapshots go in slices of ``SNAPSHOT_COPY_ROWS``, still in the one
        transaction, and ``pace`` is called after each (to spread a large one out)."""
        if not records and not snapshots and watermark is None:
            return

        def run(conn: psycopg.Connection[Any]) -> None:
            with conn.transaction():
                self._check_epoch(conn, epoch)
                if records:
                    self._copy_records(conn, records)
                if snapshots or watermark is not None:
                    self._upsert_snapshots(conn, snapshots, watermark, pace)

        try:
            self._with_conn("write" if records else "snapshot", run)
        except psycopg.errors.UniqueViolation as exc:
            raise DuplicateEvent(
                f"book {self._book_id!r}: batch at positions {records[0].position}.."
                f"{records[-1].position} conflicts with stored events: {exc.diag.message_detail}"
            ) from exc

    def _check_epoch(self, conn: psycopg.Connection[Any], epoch: int) -> None:
        row = conn.execute(
            "SELECT epoch FROM writer_leases WHERE book_id = %s FOR SHARE", (self._book_id,)
        ).fetchone()
        if row is None or int(row[0]) != epoch:
            raise LeaseLost(
                f"book {self._book_id!r}: this writer has epoch {epoch}, "
                f"the lease is at epoch {row[0] if row else 'none'}"
            )

    def _copy_records(self, conn: psycopg.Connection[Any], records: Sequence[EventRecord]) -> None:
        """One text-format COPY from a buffer built here: psycopg's per-value adaptation
        costs more than the server's insert at this row size, and the record already
        carries its ``data`` serialised (the same bytes that were hashed)."""
        book = _copy_text(self._book_id).encode()
        buffer = _native.copy_rows(records, book) if _native is not None else None
        if buffer is None:
            buffer = _copy_rows(records, book)
        with conn.cursor() as cur, cur.copy(f"COPY events ({_COLUMNS}) FROM STDIN") as copy:
            copy.write(buffer)

    def _upsert_snapshots(
        self,
        conn: psycopg.Connection[Any],
        snapshots: Sequence[SnapshotLike],
        watermark: int | None,
        pace: Callable[[], None] | None = None,
    ) -> None:
        """COPY the rows into a temporary table, then one upsert: thousands of dirty
        accounts cost one round trip each way instead of one per row. With ``pace``: one
        COPY and upsert per slice of rows, ``pace`` called after each."""
        position = watermark if watermark is not None else 0
        step = SNAPSHOT_COPY_ROWS if pace is not None else max(1, len(snapshots))
        with conn.cursor() as cur:
            cur.execute(
                "CREATE TEMP TABLE IF NOT EXISTS snapshot_rows "
                "(stream_id text, stream_version bigint, data jsonb) ON COMMIT DELETE ROWS"
            )
            for start in range(0, max(1, len(snapshots)), step):
                lines = [
                    b"%s\t%d\t%s\n"
                    % (
                        _copy_text(s.stream_id).encode(),
                        s.stream_version,
                        orjson.dumps(s.data).replace(b"\\", b"\\\\"),
                    )
                    for s in snapshots[start : start + step]
                ]
                last = start + step >= len(snapshots)
                if last and watermark is not None:
                    lines.append(b"%s\t%d\t{}\n" % (WATERMARK_STREAM.encode(), watermark))
                if start:
                    cur.execute("TRUNCATE snapshot_rows")
                with cur.copy(
                    "COPY snapshot_rows (stream_id, stream_version, data) FROM STDIN"
                ) as cp:
                    cp.write(b"".join(lines))
                cur.execute(
                    "INSERT INTO snapshots (book_id, stream_id, stream_version, position, data) "
                    "SELECT %s, stream_id, stream_version, %s, data FROM snapshot_rows "
                    "ON CONFLICT (book_id, stream_id) DO UPDATE SET "
                    "stream_version = EXCLUDED.stream_version, position = EXCLUDED.position, "
                    "data = EXCLUDED.data, taken_at = now()",
                    (self._book_id, position),
                )
                if pace is not None and not last:
                    pace()

    # -- reads -------------------------------------------------------------------------

    def head(self) -> tuple[int, bytes]:
        def run(conn: psycopg.Connection[Any]) -> tuple[int, bytes]:
            row = conn.execute(
                "SELECT position, hash FROM events WHERE book_id = %s "
                "ORDER BY position DESC LIMIT 1",
                (self._book_id,),
            ).fetchone()
            conn.rollback()
            return (0, GENESIS_HASH) if row is None else (int(row[0]), bytes(row[1]))

        return self._with_conn("read", run)

    def read_positions(
        self, from_position: int, to_position: int | None = None
    ) -> Iterator[EventRecord]:
        """Records with ``from_position <= position <= to_position``, in order, in chunks."""
        upper = to_position if to_position is not None else (1 << 62)
        cursor = from_position
        while cursor <= upper:

            def run(conn: psycopg.Connection[Any], lo: int = cursor) -> list[EventRecord]:
                rows = conn.execute(
                    _SELECT + " WHERE book_id = %s AND position >= %s AND position <= %s "
                    "ORDER BY position LIMIT %s",
                    (self._book_id, lo, upper, READ_CHUNK_ROWS),
                ).fetchall()
                conn.rollback()
                return [_row_to_record(r) for r in rows]

            chunk = self._with_conn("read", run)
            yield from chunk
            if len(chunk) < READ_CHUNK_ROWS:
                return
            cursor = chunk[-1].position + 1

    def read_stream(self, stream_id: str, after_version: int = 0) -> list[EventRecord]:
        def run(conn: psycopg.Connection[Any]) -> list[EventRecord]:
            rows = conn.execute(
                _SELECT + " WHERE book_id = %s AND stream_id = %s AND stream_version > %s "
                "ORDER BY stream_version",
                (self._book_id, stream_id, after_version),
            ).fetchall()
            conn.rollback()
            return [_row_to_record(r) for r in rows]

        return self._with_conn("read", run)

    def read_streams(self, stream_ids: Sequence[str]) -> dict[str, list[EventRecord]]:
        """Every event of each stream in ``stream_ids`` (missing streams are absent)."""
        if not stream_ids:
            return {}

        def run(conn: psycopg.Connection[Any]) -> dict[str, list[EventRecord]]:
            rows = conn.execute(
                _SELECT + " WHERE book_id = %s AND stream_id = ANY(%s) "
                "ORDER BY stream_id, stream_version",
                (self._book_id, list(stream_ids)),
            ).fetchall()
            conn.rollback()
            out: dict[str, list[EventRecord]] = {}
            for r in rows:
                out.setdefault(r[2], []).append(_row_to_record(r))
            return out

        return self._with_conn("read", run)

    def load_snapshots(self, stream_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        if not stream_ids:
            return {}

        def run(conn: psycopg.Connection[Any]) -> dict[str, dict[str, Any]]:
            rows = conn.execute(
                "SELECT stream_id, data FROM snapshots WHERE book_id = %s AND stream_id = ANY(%s)",
                (self._book_id, list(stream_ids)),
            ).fetchall()
            conn.rollback()
            return {r[0]: r[1] for r in rows}

        return self._with_conn("read", run)

    def load_records(
        self, snapshot_streams: Sequence[str], creation_streams: Sequence[str]
    ) -> tuple[dict[str, dict[str, Any]], dict[str, EventRecord]]:
        """In one round trip: the snapshots of ``snapshot_streams`` and the first event of
        each of ``creation_streams`` (the node's lazy load of one batch's records)."""
        if not snapshot_streams and not creation_streams:
            return {}, {}

        def run(
            conn: psycopg.Connection[Any],
        ) -> tuple[dict[str, dict[str, Any]], dict[str, EventRecord]]:
            rows = conn.execute(
                "SELECT NULL::bigint, NULL::uuid, stream_id, stream_version, NULL, NULL, "
                "data::json, NULL::bigint, NULL::bytea, NULL::bytea FROM snapshots "
                "WHERE book_id = %(b)s AND stream_id = ANY(%(s)s::text[]) "
                "UNION ALL " + _SELECT + " WHERE book_id = %(b)s AND stream_id = ANY(%(c)s::text[])"
                " AND stream_version = 1",
                {
                    "b": self._book_id,
                    "s": _text_array(snapshot_streams),
                    "c": _text_array(creation_streams),
                },
            ).fetchall()
            conn.rollback()
            snaps: dict[str, dict[str, Any]] = {}
            firsts: dict[str, EventRecord] = {}
            for r in rows:
                if r[0] is None:
                    snaps[r[2]] = r[6]
                else:
                    firsts[r[2]] = _row_to_record(r)
            return snaps, firsts

        return self._with_conn("read", run)

    def load_snapshots_where(
        self, stream_prefix: str, key: str, value: str
    ) -> list[dict[str, Any]]:
        """Snapshots whose stream starts with ``stream_prefix`` and ``data[key] == value``."""

        def run(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
            rows = conn.execute(
                sql.SQL(
                    "SELECT data FROM snapshots WHERE book_id = %s AND stream_id LIKE %s "
                    "AND data ->> {} = %s"
                ).format(sql.Literal(key)),
                (self._book_id, stream_prefix + "%", value),
            ).fetchall()
            conn.rollback()
            return [r[0] for r in rows]

        return self._with_conn("read", run)

    def stream_ids(self, after: str, limit: int) -> list[str]:
        """A page of the book's stream ids, in index order: an index-only scan of the
        ``(book_id, stream_id, stream_version)`` key, which is much smaller than the
        table and is read at start to fill the node's stream filter."""

        def run(conn: psycopg.Connection[Any]) -> list[str]:
            rows = conn.execute(
                "SELECT stream_id FROM events WHERE book_id = %s AND stream_id > %s "
                "AND stream_version = 1 ORDER BY stream_id LIMIT %s",
                (self._book_id, after, limit),
            ).fetchall()
            conn.rollback()
            return [r[0] for r in rows]

        return self._with_conn("read", run)

    def watermark(self) -> int:
        """Position up to which the snapshots describe the state (0: no snapshots yet)."""

        def run(conn: psycopg.Connection[Any]) -> int:
            row = conn.execute(
                "SELECT position FROM snapshots WHERE book_id = %s AND stream_id = %s",
                (self._book_id, WATERMARK_STREAM),
            ).fetchone()
            conn.rollback()
            return 0 if row is None else int(row[0])

        return self._with_conn("read", run)

    def event_ids_exist(self, event_ids: Sequence[UUID]) -> set[UUID]:
        def run(conn: psycopg.Connection[Any]) -> set[UUID]:
            rows = conn.execute(
                "SELECT event_id FROM events WHERE event_id = ANY(%s)", (list(event_ids),)
            ).fetchall()
            conn.rollback()
            return {r[0] for r in rows}

        return self._with_conn("read", run)
