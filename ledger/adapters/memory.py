"""In-memory fakes of the storage ports, shipped with the package.

They pass the same contract suites (``tests/contract``) as the real adapters, so unit tests
that use them exercise the same behaviour as production code.
"""

from __future__ import annotations

# --- MemoryEventLog (fake of ledger.application.ports.EventLog) ---
# ruff: noqa: E402  (each fake's section keeps its own imports next to its code)
from collections.abc import Iterator as _LogIterator
from collections.abc import Sequence as _LogSequence

from ledger.application.records import GENESIS_HASH as _LOG_GENESIS_HASH
from ledger.application.records import EventRecord as _LogRecord
from ledger.application.records import verify_chain as _verify_chain


class MemoryEventLog:
    """In-memory fake of :class:`ledger.adapters.wal.FileWal`: the same contract, no files.

    ``append_batch`` checks that the whole batch continues the chain before keeping any of
    it (``ChainBroken`` otherwise); ``read`` checks the chain again on the way out, as the
    file WAL does after reading from disk. After ``close`` both raise ``ValueError``.
    """

    def __init__(self) -> None:
        self._records: list[_LogRecord] = []
        self._closed = False

    @property
    def last_position(self) -> int:
        return len(self._records)

    @property
    def last_hash(self) -> bytes:
        return self._records[-1].hash if self._records else _LOG_GENESIS_HASH

    def append_batch(self, records: _LogSequence[_LogRecord]) -> None:
        self._check_open()
        checked = list(_verify_chain(records, self.last_position + 1, self.last_hash))
        self._records.extend(checked)

    def read(
        self, from_position: int = 1, to_position: int | None = None
    ) -> _LogIterator[_LogRecord]:
        self._check_open()
        if from_position < 1:
            raise ValueError(f"from_position must be >= 1, got {from_position}")
        end = self.last_position if to_position is None else min(to_position, self.last_position)
        if from_position > end:
            return iter(())
        prev = self._records[from_position - 2].hash if from_position > 1 else _LOG_GENESIS_HASH
        return _verify_chain(self._records[from_position - 1 : end], from_position, prev)

    def close(self) -> None:
        self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("event log is closed")


# --- MemoryEventStore (fake of ledger.application.ports.EventStore) ---

import threading as _threading
from collections.abc import Iterator as _Iterator
from collections.abc import Sequence as _Sequence
from dataclasses import dataclass as _dataclass
from dataclasses import field as _field
from typing import Any as _Any
from uuid import UUID as _UUID

from ledger.application.errors import DuplicateEvent as _DuplicateEvent
from ledger.application.errors import LeaseHeld as _LeaseHeld
from ledger.application.errors import LeaseLost as _LeaseLost
from ledger.application.records import GENESIS_HASH as _GENESIS_HASH
from ledger.application.records import EventRecord as _EventRecord


@_dataclass
class MemoryDatabase:
    """What PostgreSQL holds, for every book: share one between stores to share data."""

    events: dict[str, list[_EventRecord]] = _field(default_factory=dict)
    event_ids: dict[_UUID, tuple[str, int]] = _field(default_factory=dict)
    streams: dict[tuple[str, str, int], int] = _field(default_factory=dict)
    epochs: dict[str, int] = _field(default_factory=dict)
    holders: dict[str, object] = _field(default_factory=dict)
    snapshots: dict[tuple[str, str], tuple[int, int, dict[str, _Any]]] = _field(
        default_factory=dict
    )
    lock: _threading.Lock = _field(default_factory=_threading.Lock)


class MemoryEventStore:
    """In-memory fake of :class:`ledger.adapters.postgres.PostgresEventStore`.

    ``fail_next`` lets tests inject :class:`EventStoreUnavailable` on the next writes.
    """

    def __init__(self, book_id: str, db: MemoryDatabase | None = None) -> None:
        self._book_id = book_id
        self.db = db or MemoryDatabase()
        self.epoch: int | None = None
        self._token = object()
        self.fail_next = 0

    @property
    def book_id(self) -> str:
        return self._book_id

    def acquire_lease(self, holder: str | None = None) -> int:
        with self.db.lock:
            current = self.db.holders.get(self._book_id)
            if current is not None and current is not self._token:
                raise _LeaseHeld(f"book {self._book_id!r} is already being written by another node")
            self.db.holders[self._book_id] = self._token
            self.epoch = self.db.epochs.get(self._book_id, 0) + 1
            self.db.epochs[self._book_id] = self.epoch
            return self.epoch

    def release(self) -> None:
        """Forget the lock (as if the holder's connection died); the epoch stays."""
        with self.db.lock:
            if self.db.holders.get(self._book_id) is self._token:
                del self.db.holders[self._book_id]

    def reassert_lease(self, epoch: int) -> None:
        with self.db.lock:
            if self.db.epochs.get(self._book_id) != epoch:
                raise _LeaseLost(f"book {self._book_id!r}: lease epoch {epoch} was taken over")

    def append_batch(
        self,
        records: _Sequence[_EventRecord],
        epoch: int,
        snapshots: _Sequence[_Any] = (),
        watermark: int | None = None,
        *,
        pace: _Any = None,
    ) -> None:
        """As the port says; ``pace`` is not called (the write takes no time here)."""
        from ledger.application.errors import EventStoreUnavailable

        if self.fail_next > 0:
            self.fail_next -= 1
            raise EventStoreUnavailable("injected failure")
        with self.db.lock:
            if self.db.epochs.get(self._book_id) != epoch:
                raise _LeaseLost(
                    f"book {self._book_id!r}: this writer has epoch {epoch}, the lease is at "
                    f"epoch {self.db.epochs.get(self._book_id)}"
                )
            log = self.db.events.setdefault(self._book_id, [])
            positions = {r.position for r in log[-len(records) :]} if records else set()
            for r in records:
                if (
                    r.event_id in self.db.event_ids
                    or (self._book_id, r.stream_id, r.stream_version) in self.db.streams
                    or r.position in positions
                    or (log and r.position <= log[-1].position)
                ):
                    raise _DuplicateEvent(
                        f"book {self._book_id!r}: position {r.position} / event {r.event_id} "
                        "conflicts with stored events"
                    )
            for r in records:
                log.append(r)
                self.db.event_ids[r.event_id] = (self._book_id, r.position)
                self.db.streams[(self._book_id, r.stream_id, r.stream_version)] = r.position
            for s in snapshots:
                self.db.snapshots[(self._book_id, s.stream_id)] = (
                    s.stream_version,
                    watermark or 0,
                    dict(s.data),
                )
            if watermark is not None:
                self.db.snapshots[(self._book_id, "$watermark")] = (watermark, watermark, {})

    def head(self) -> tuple[int, bytes]:
        log = self.db.events.get(self._book_id)
        if not log:
            return (0, _GENESIS_HASH)
        return (log[-1].position, log[-1].hash)

    def read_positions(
        self, from_position: int, to_position: int | None = None
    ) -> _Iterator[_EventRecord]:
        log = list(self.db.events.get(self._book_id, ()))
        for r in log:
            if r.position >= from_position and (to_position is None or r.position <= to_position):
                yield r

    def read_stream(self, stream_id: str, after_version: int = 0) -> list[_EventRecord]:
        return [
            r
            for r in self.db.events.get(self._book_id, ())
            if r.stream_id == stream_id and r.stream_version > after_version
        ]

    def read_streams(self, stream_ids: _Sequence[str]) -> dict[str, list[_EventRecord]]:
        wanted = set(stream_ids)
        out: dict[str, list[_EventRecord]] = {}
        for r in self.db.events.get(self._book_id, ()):
            if r.stream_id in wanted:
                out.setdefault(r.stream_id, []).append(r)
        for v in out.values():
            v.sort(key=lambda r: r.stream_version)
        return out

    def load_snapshots(self, stream_ids: _Sequence[str]) -> dict[str, dict[str, _Any]]:
        out = {}
        for sid in stream_ids:
            got = self.db.snapshots.get((self._book_id, sid))
            if got is not None:
                out[sid] = dict(got[2])
        return out

    def load_records(
        self, snapshot_streams: _Sequence[str], creation_streams: _Sequence[str]
    ) -> tuple[dict[str, dict[str, _Any]], dict[str, _EventRecord]]:
        firsts = {
            sid: records[0]
            for sid, records in self.read_streams(creation_streams).items()
            if records[0].stream_version == 1
        }
        return self.load_snapshots(snapshot_streams), firsts

    def load_snapshots_where(
        self, stream_prefix: str, key: str, value: str
    ) -> list[dict[str, _Any]]:
        return [
            dict(data)
            for (book, sid), (_, _, data) in self.db.snapshots.items()
            if book == self._book_id
            and sid.startswith(stream_prefix)
            and str(data.get(key)) == value
        ]

    def stream_ids(self, after: str, limit: int) -> list[str]:
        ids = sorted(
            sid
            for (book, sid, version) in list(self.db.streams)
            if book == self._book_id and version == 1 and sid > after
        )
        return ids[:limit]

    def watermark(self) -> int:
        got = self.db.snapshots.get((self._book_id, "$watermark"))
        return 0 if got is None else got[1]

    def event_ids_exist(self, event_ids: _Sequence[_UUID]) -> set[_UUID]:
        return {e for e in event_ids if e in self.db.event_ids}

    def close(self) -> None:
        self.release()
