"""The coordinator's journal: its events, and their group-committed dual write.

Every transaction the coordinator runs is one stream in the coordinator's own book
(``tcc-<gid>`` or ``saga-<gid>``, stream versions 1, 2, 3 ...), written through the same
:class:`~ledger.application.recorder.Recorder` as a ledger node: WAL append + fdatasync,
then one PostgreSQL transaction. :meth:`Journal.record` returns only when its events are
in both, so a caller that awaits it before an HTTP call has made the call's intent durable.

Group commit: records wait in a queue while the previous batch is being written; the
committer then takes everything queued (up to ``batch_records_max``) as one batch, so one
fsync and one insert serve every transaction that advanced meanwhile. Two stages, as in
the ledger node: the WAL stage appends and fsyncs batch N+1 while the store stage inserts
batch N into PostgreSQL (so at most two batches are in flight, and the WAL is ahead of
PostgreSQL by at most those). Each stage is a thread; the WAL stage's thread queues a
batch's insert on the store stage's thread as soon as it is fsynced, without waiting for
a turn of the event loop, and after an insert fails the batches queued behind it are
refused, never inserted. Callers are answered by the store stage, in batch order.
Records are chained (positions, hashes, stream versions) in the order :meth:`record` was
called, on the event loop, so versions never go backwards even when many tasks write
one stream.

One record per write. The events of one :meth:`Journal.record` call (one transaction's
step: e.g. ``TransactionStarted`` with the first ``CallStarted`` of every branch, or the
held answers, ``TransactionDecided`` and the phase-two ``CallStarted`` events) become one
record: the event itself when there is one, else an ``EventGroup`` record whose ``data``
is ``{"events": [{"type": ..., **fields}, ...]}`` in order. A TCC transaction whose calls
all succeed at once is then three records instead of eleven, and each record costs an
event id, an envelope, a hash, a WAL frame and a PostgreSQL row with three index entries
whatever its size. Recovery stays exact because grouping changes no order and no
boundary: the events of one write were always appended, fsynced and inserted as part of
one batch and acknowledged together, so everything that had to be durable before a call
went out (the transaction with every branch's cancel target, each ``CallStarted``, the
decision) still is, by the same ``await``. A record is all or nothing, so the states a
crash can leave are a subset of the former ones (then, a torn WAL tail could keep the
first events of a write without the rest; now it keeps the whole write or none of it).
:func:`events_from_record` reads both forms, so journals written one event per record
replay unchanged.

Snapshots: every ``snapshot_every_events`` records (positions: what recovery has to read)
the batch carries one snapshot row, the list of streams still open (started, not
finished) as of the batch's last position, saved with that position as the book's
watermark in the same PostgreSQL transaction. Recovery reads the open streams named
there plus the records after the watermark, not the whole book.

Events are frozen, tagged and versioned (``type`` and ``schema_version`` in the envelope,
never a class path); their ``data`` is JSON-compatible. Evolution follows the ledger's
rule: new fields only with defaults, never renamed or retyped; an upcaster per (type,
version) in :data:`UPCASTERS` lifts old data.

Crash points (**test only**): ``LEDGER_COORDINATOR_CRASH_POINT`` makes the process kill
itself with SIGKILL right after a matching event became durable, so tests can stop the
coordinator at an exact step boundary. Syntax ``TYPE[:OP][@N][/wal]``: the N-th (default
first) event of type TYPE (with ``op`` OP for calls) since the process started; ``/wal``
kills it after the WAL fsync and before the PostgreSQL insert. The events inside an
``EventGroup`` count one by one, so a point names the same boundary whether or not its
event shares a record. Unset in production.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import operator
import os
import queue
import re
import signal
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeAlias

from ledger.adapters.postgres import SnapshotRow
from ledger.application.recorder import Recorder, RecoveryReport
from ledger.application.records import EventRecord, PendingRecord, chain_records

__all__ = [
    "CRASH_POINT_ENV",
    "EVENT_GROUP",
    "OPEN_STREAMS_SNAPSHOT",
    "UPCASTERS",
    "CallFinished",
    "CallStarted",
    "CoordinatorEvent",
    "CrashPoint",
    "Journal",
    "JournalFailed",
    "RetryRequested",
    "TransactionDecided",
    "TransactionFinished",
    "TransactionStarted",
    "event_from_record",
    "event_to_data",
    "events_from_record",
    "record_data",
    "stream_id",
]

_log = logging.getLogger(__name__)

CRASH_POINT_ENV: Final = "LEDGER_COORDINATOR_CRASH_POINT"
OPEN_STREAMS_SNAPSHOT: Final = "$coordinator-open-streams"
EVENT_GROUP: Final = "EventGroup"
"""The record type of a write of several events (module docstring)."""
SCHEMA_VERSION: Final = 1

Kind = Literal["tcc", "saga"]
Decision = Literal["confirm", "cancel", "compensate"]
Outcome = Literal["committed", "cancelled", "compensated", "force_stopped"]


def stream_id(kind: str, gid: str) -> str:
    """The stream of one transaction: ``tcc-<gid>`` or ``saga-<gid>``."""
    return f"{kind}-{gid}"


# -- events -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class TransactionStarted:
    """A transaction was accepted: its kind, full spec and (TCC) deadline."""

    type: Literal["TransactionStarted"] = "TransactionStarted"
    gid: str
    kind: Kind
    spec: Mapping[str, Any]
    deadline_us: int | None
    at_us: int


@dataclass(frozen=True, slots=True, kw_only=True)
class CallStarted:
    """A call to a participant is about to go out (recorded before it is sent)."""

    type: Literal["CallStarted"] = "CallStarted"
    gid: str
    branch_id: str
    op: str
    attempt: int
    at_us: int


@dataclass(frozen=True, slots=True, kw_only=True)
class CallFinished:
    """The classified answer to one call (``result`` is a ``CallResult`` value)."""

    type: Literal["CallFinished"] = "CallFinished"
    gid: str
    branch_id: str
    op: str
    attempt: int
    result: str
    status_code: int | None
    detail: str
    at_us: int


@dataclass(frozen=True, slots=True, kw_only=True)
class TransactionDecided:
    """The direction is fixed: confirm (TCC), cancel (TCC) or compensate (saga)."""

    type: Literal["TransactionDecided"] = "TransactionDecided"
    gid: str
    decision: Decision
    reason: str
    at_us: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryRequested:
    """An operator asked to retry the waiting calls now (audit trail of admin actions)."""

    type: Literal["RetryRequested"] = "RetryRequested"
    gid: str
    by: str
    at_us: int


@dataclass(frozen=True, slots=True, kw_only=True)
class TransactionFinished:
    """The transaction reached a final state; nothing is written to its stream after."""

    type: Literal["TransactionFinished"] = "TransactionFinished"
    gid: str
    outcome: Outcome
    reason: str
    at_us: int


CoordinatorEvent: TypeAlias = (
    TransactionStarted
    | CallStarted
    | CallFinished
    | TransactionDecided
    | RetryRequested
    | TransactionFinished
)

_CLASSES: Final[dict[str, type[Any]]] = {
    c.__name__: c
    for c in (
        TransactionStarted,
        CallStarted,
        CallFinished,
        TransactionDecided,
        RetryRequested,
        TransactionFinished,
    )
}

Upcaster = Callable[[Mapping[str, Any]], dict[str, Any]]
UPCASTERS: dict[tuple[str, int], Upcaster] = {}
"""``(type, version) -> fn(data) -> data at version + 1``; none needed yet."""


def _getter(fields: tuple[str, ...]) -> Callable[[Any], tuple[Any, ...]]:
    get = operator.attrgetter(*fields)
    return get if len(fields) > 1 else lambda event: (get(event),)


# Field names and a getter of their values per type: the events are built on the event
# loop for every step, and attrgetter reads them all in one call.
_FIELDS: Final[dict[str, tuple[tuple[str, ...], Callable[[Any], tuple[Any, ...]]]]] = {
    name: (fields, _getter(fields))
    for name, cls in _CLASSES.items()
    for fields in [tuple(f for f in cls.__slots__ if f != "type")]
}


def event_to_data(event: CoordinatorEvent) -> dict[str, Any]:
    """The JSON-compatible ``data`` of the envelope (every field but ``type``)."""
    names, values = _FIELDS[event.type]
    return dict(zip(names, values(event), strict=True))


def record_data(events: list[CoordinatorEvent]) -> tuple[str, dict[str, Any]]:
    """The record type and ``data`` of one write (one event, or an ``EventGroup``)."""
    if len(events) == 1:
        return events[0].type, event_to_data(events[0])
    return EVENT_GROUP, {"events": [{"type": e.type, **event_to_data(e)} for e in events]}


def _event(position: int, type_: str, version: int, data: Mapping[str, Any]) -> CoordinatorEvent:
    cls = _CLASSES.get(type_)
    if cls is None:
        raise JournalFailed(f"position {position}: unknown event type {type_!r}")
    while version < SCHEMA_VERSION:
        data = UPCASTERS[(type_, version)](data)
        version += 1
    try:
        event: CoordinatorEvent = cls(**data)
    except TypeError as exc:
        raise JournalFailed(f"position {position}: bad {type_} data: {exc}") from exc
    return event


def events_from_record(record: EventRecord) -> list[CoordinatorEvent]:
    """The events of one stored record (one, or the members of an ``EventGroup``, in
    order), upcasting older schema versions (the envelope's version applies to each)."""
    if record.type != EVENT_GROUP:
        return [_event(record.position, record.type, record.schema_version, record.data)]
    members = record.data.get("events")
    if not isinstance(members, list) or not members:
        raise JournalFailed(f"position {record.position}: {EVENT_GROUP} without events")
    out = []
    for member in members:
        fields = dict(member)
        type_ = fields.pop("type", None)
        out.append(_event(record.position, str(type_), record.schema_version, fields))
    return out


def event_from_record(record: EventRecord) -> CoordinatorEvent:
    """Rebuild the event of a single-event record (see :func:`events_from_record`)."""
    events = events_from_record(record)
    if len(events) != 1:
        raise JournalFailed(f"position {record.position}: {len(events)} events in one record")
    return events[0]


def _types_and_ops(record: EventRecord) -> Iterator[tuple[str, Any]]:
    if record.type != EVENT_GROUP:
        yield record.type, record.data.get("op")
        return
    for member in record.data.get("events", ()):
        yield member.get("type"), member.get("op")


# -- crash points (test only) ---------------------------------------------------------------


_CRASH_SYNTAX = re.compile(
    r"^(?P<type>[A-Za-z]+)(?::(?P<op>[a-z]+))?(?:@(?P<nth>\d+))?(?P<wal>/wal)?$"
)


@dataclass
class CrashPoint:
    """Kill this process (SIGKILL) right after the ``nth`` matching event is durable."""

    type: str
    op: str | None = None
    nth: int = 1
    after_wal_only: bool = False
    seen: int = 0

    @classmethod
    def parse(cls, text: str) -> CrashPoint:
        m = _CRASH_SYNTAX.match(text.strip())
        if m is None or m["type"] not in _CLASSES:
            raise ValueError(
                f"{CRASH_POINT_ENV}={text!r}: expected TYPE[:OP][@N][/wal] with TYPE one of "
                + ", ".join(sorted(_CLASSES))
            )
        return cls(m["type"], m["op"], int(m["nth"] or 1), bool(m["wal"]))

    @classmethod
    def from_env(cls) -> CrashPoint | None:
        text = os.environ.get(CRASH_POINT_ENV)
        return cls.parse(text) if text else None

    def hit(self, records: Iterable[EventRecord]) -> bool:
        hit = False
        for r in records:
            for type_, op in _types_and_ops(r):
                if type_ == self.type and (self.op is None or op == self.op):
                    self.seen += 1
                    hit = hit or self.seen == self.nth
        return hit

    def crash(self) -> None:
        _log.critical("crash point %s reached: killing the process", self)
        os.kill(os.getpid(), signal.SIGKILL)


# -- the journal ------------------------------------------------------------------------------


class _Worker:
    """One thread that runs a stage's blocking calls in order, each answered through a
    future of the event loop: one queue put and one ``call_soon_threadsafe`` per call,
    where ``asyncio.to_thread`` adds a context copy, the executor's thread accounting
    and a chain of two futures, at every batch of both stages."""

    def __init__(self, name: str) -> None:
        self._calls: queue.SimpleQueue[
            tuple[Callable[[], Any], asyncio.AbstractEventLoop, asyncio.Future[Any]] | None
        ] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def run(self, fn: Callable[[], Any]) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._calls.put((fn, loop, future))
        return future

    def run_into(
        self, fn: Callable[[], Any], loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any]
    ) -> None:
        """Queue ``fn`` from any thread; its outcome settles ``future`` on ``loop``."""
        self._calls.put((fn, loop, future))

    def _run(self) -> None:
        while (call := self._calls.get()) is not None:
            fn, loop, future = call
            try:
                result = fn()
            except BaseException as exc:
                with contextlib.suppress(RuntimeError):  # the loop is closed
                    loop.call_soon_threadsafe(_settle, future, None, exc)
            else:
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(_settle, future, result, None)

    def stop(self) -> None:
        self._calls.put(None)


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _settle(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if future.done():  # the caller was cancelled: the call ran anyway
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


class JournalFailed(RuntimeError):
    """The journal cannot record anymore (WAL failure, lease lost, bad stored data): the
    coordinator must stop and recover from disk at its next start."""


@dataclass
class _Entry:
    stream: str
    events: list[CoordinatorEvent]
    future: asyncio.Future[None]


@dataclass
class _Batch:
    entries: list[_Entry]
    records: list[EventRecord]
    snapshots: list[SnapshotRow]
    watermark: int | None
    started_s: float
    crash: bool = False
    stored: asyncio.Future[None] | None = None  # settled by the store stage's thread


@dataclass
class Replayed:
    """What recovery read: every event of each stream still open, in version order."""

    streams: dict[str, list[CoordinatorEvent]] = field(default_factory=dict)
    report: RecoveryReport | None = None


class Journal:
    """Group-committed writer of the coordinator's book (see the module docstring)."""

    def __init__(
        self,
        recorder: Recorder,
        clock_us: Callable[[], int],
        *,
        batch_records_max: int = 4096,
        snapshot_every_events: int = 10_000,
        crash_point: CrashPoint | None = None,
        observe_commit_s: Callable[[float], None] | None = None,
    ) -> None:
        self.recorder = recorder
        self._clock_us = clock_us
        self.batch_records_max = batch_records_max
        self.snapshot_every_events = snapshot_every_events
        self.crash_point = crash_point
        self.observe_commit_s = observe_commit_s
        self._queue: deque[_Entry] = deque()
        self._wake = asyncio.Event()
        self._versions: dict[str, int] = {}
        self._finishing: set[str] = set()
        self._next_position = 1
        self._last_hash = b""
        self._since_snapshot = 0
        self._committer: asyncio.Task[None] | None = None
        self._store_task: asyncio.Task[None] | None = None
        self._stored: asyncio.Queue[_Batch | None] = asyncio.Queue(maxsize=1)
        self.failure: BaseException | None = None
        self._store_broken: BaseException | None = None  # set by the store stage's thread
        self.committed_position = 0
        self._closing = False

    # -- recovery ---------------------------------------------------------------------------

    def recover(self, holder: str | None = None) -> Replayed:
        """Blocking: take the lease, make the WAL and PostgreSQL agree, and read every
        open stream (via the snapshot of open streams and the events after it)."""
        report = self.recorder.recover(holder)
        store = self.recorder.store
        head, head_hash = store.head()
        self._next_position, self._last_hash = head + 1, head_hash
        self.committed_position = head
        watermark = store.watermark()
        streams: dict[str, list[CoordinatorEvent]] = {}
        if watermark:
            snap = store.load_snapshots([OPEN_STREAMS_SNAPSHOT]).get(OPEN_STREAMS_SNAPSHOT, {})
            names = list(snap.get("streams", ()))
            for name, records in store.read_streams(names).items():
                streams[name] = [
                    e for r in records if r.position <= watermark for e in events_from_record(r)
                ]
                self._versions[name] = records[-1].stream_version if records else 0
        for record in store.read_positions(watermark + 1, head):
            streams.setdefault(record.stream_id, []).extend(events_from_record(record))
            self._versions[record.stream_id] = record.stream_version
        for name in [n for n, events in streams.items() if not events or _finished(events)]:
            del streams[name]
            self._versions.pop(name, None)
        self._since_snapshot = head - watermark
        return Replayed(streams, report)

    # -- writing ----------------------------------------------------------------------------

    def start(self) -> None:
        self._wal_worker = _Worker("coordinator-journal-wal")
        self._store_worker = _Worker("coordinator-journal-store")
        self._committer = asyncio.get_running_loop().create_task(
            self._commit_loop(), name="coordinator-journal"
        )

    def has_stream(self, stream: str) -> bool:
        return stream in self._versions

    def open_stream(self, stream: str) -> None:
        """Reserve a new stream (its first event will be version 1)."""
        if stream in self._versions:
            raise JournalFailed(f"stream {stream} is already open")
        self._versions[stream] = 0

    async def record(self, stream: str, events: list[CoordinatorEvent]) -> None:
        """Queue ``events`` for ``stream`` and return once they are durable (WAL and
        PostgreSQL). Raises :class:`JournalFailed` if the journal stopped."""
        if self.failure is not None:
            raise JournalFailed(f"journal stopped: {self.failure!r}")
        if self._closing:
            raise JournalFailed("journal closed")
        if stream not in self._versions or stream in self._finishing:
            raise JournalFailed(f"stream {stream} is not open (finished or never started)")
        if any(e.type == "TransactionFinished" for e in events):
            self._finishing.add(stream)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append(_Entry(stream, events, future))
        self._wake.set()
        await future  # cancelling the caller does not unqueue the events

    async def _commit_loop(self) -> None:
        """The WAL stage: chain and append each batch (one fdatasync), then hand it to the
        store stage; it may sync batch N+1 while PostgreSQL commits batch N."""
        self._store_task = asyncio.get_running_loop().create_task(
            self._store_loop(), name="coordinator-journal-store"
        )
        try:
            while self.failure is None:
                await self._wake.wait()
                self._wake.clear()
                while self._queue and self.failure is None:
                    entries = self._take()
                    try:
                        batch = await self._append(entries)
                    except BaseException as exc:
                        self._fail(exc, entries)
                        return
                    await self._stored.put(batch)
                if self._closing and not self._queue:
                    return
        finally:
            await self._stored.put(None)
            with contextlib.suppress(BaseException):
                await self._store_task

    async def _store_loop(self) -> None:
        """The store stage: insert each batch in PostgreSQL (retried by the recorder until
        it commits), then answer its callers."""
        while True:
            batch = await self._stored.get()
            if batch is None:
                return
            if self.failure is not None:
                self._fail(self.failure, batch.entries)
                continue
            try:
                assert batch.stored is not None
                await batch.stored
            except BaseException as exc:
                self._fail(exc, batch.entries)
                continue
            if self.observe_commit_s:
                self.observe_commit_s(asyncio.get_running_loop().time() - batch.started_s)
            if batch.records:
                self.committed_position = batch.records[-1].position
            for entry in batch.entries:
                if not entry.future.done():
                    entry.future.set_result(None)

    def _take(self) -> list[_Entry]:
        entries: list[_Entry] = []
        size = 0
        while self._queue and (not entries or size < self.batch_records_max):
            entry = self._queue.popleft()
            entries.append(entry)
            size += len(entry.events)
        return entries

    def _chain(self, entries: list[_Entry]) -> list[EventRecord]:
        now_us = self._clock_us()
        ids = random_uuids(len(entries))
        pending: list[PendingRecord] = []
        for entry in entries:
            if entry.stream not in self._versions:
                raise JournalFailed(f"stream {entry.stream} was written after it finished")
            events = entry.events
            finished = next(
                (i for i, e in enumerate(events) if e.type == "TransactionFinished"), None
            )
            if finished is not None:
                events = events[: finished + 1]  # nothing is written after the end
            if not events:
                continue
            version = self._versions[entry.stream] + 1
            type_, data = record_data(events)
            pending.append(
                PendingRecord(next(ids), entry.stream, version, type_, SCHEMA_VERSION, now_us, data)
            )
            if finished is not None:
                self._versions.pop(entry.stream)
                self._finishing.discard(entry.stream)
            else:
                self._versions[entry.stream] = version
        records = chain_records(pending, self._next_position, self._last_hash)
        if records:
            self._next_position += len(records)
            self._last_hash = records[-1].hash
        return records

    async def _append(self, entries: list[_Entry]) -> _Batch:
        started_s = asyncio.get_running_loop().time()
        records = self._chain(entries)
        snapshots: list[SnapshotRow] = []
        watermark: int | None = None
        self._since_snapshot += len(records)
        if records and self._since_snapshot >= self.snapshot_every_events:
            watermark = records[-1].position
            snapshots.append(
                SnapshotRow(
                    OPEN_STREAMS_SNAPSHOT,
                    watermark,
                    {"streams": sorted(n for n, v in self._versions.items() if v > 0)},
                )
            )
            self._since_snapshot = 0
        batch = _Batch(entries, records, snapshots, watermark, started_s)
        if self.crash_point is not None:
            batch.crash = self.crash_point.hit(records)
        loop = asyncio.get_running_loop()
        batch.stored = loop.create_future()
        # Retrieved even when no one awaits it (the journal failed meanwhile).
        batch.stored.add_done_callback(_retrieve)
        await self._wal_worker.run(functools.partial(self._append_then_store, batch, loop))
        return batch

    def _append_then_store(self, batch: _Batch, loop: asyncio.AbstractEventLoop) -> None:
        """The WAL stage's thread: append and fsync, then queue the insert on the store
        stage's thread directly (no turn of the event loop between the two stages)."""
        self.recorder.append(batch.records)
        if batch.crash and self.crash_point is not None and self.crash_point.after_wal_only:
            self.crash_point.crash()
        assert batch.stored is not None
        self._store_worker.run_into(functools.partial(self._insert, batch), loop, batch.stored)

    def _insert(self, batch: _Batch) -> None:
        # Batches are inserted in order or not at all: after one insert failed, the ones
        # already queued behind it are refused (PostgreSQL must hold a prefix of the WAL).
        if self._store_broken is not None:
            raise JournalFailed(f"an earlier batch was not stored: {self._store_broken!r}")
        try:
            self.recorder.insert(batch.records, batch.snapshots, batch.watermark)
        except BaseException as exc:
            self._store_broken = exc
            raise
        if batch.crash and self.crash_point is not None:
            self.crash_point.crash()

    def _fail(self, exc: BaseException, entries: list[_Entry]) -> None:
        if self.failure is None:
            self.failure = exc
            _log.critical("coordinator journal stopped: %r", exc)
        failed = JournalFailed(f"journal stopped before recording: {exc!r}")
        for entry in [*entries, *self._queue]:
            if not entry.future.done():
                entry.future.set_exception(failed)
        self._queue.clear()

    async def close(self) -> None:
        """Write what is queued, stop the committer, release the WAL and the lease."""
        self._closing = True
        self._wake.set()
        if self._committer is not None:
            with contextlib.suppress(BaseException):
                await self._committer
            self._wal_worker.stop()
            self._store_worker.stop()
        await asyncio.to_thread(self.recorder.close)


def _finished(events: list[CoordinatorEvent]) -> bool:
    return any(e.type == "TransactionFinished" for e in events)


def random_uuids(n: int) -> Iterator[uuid.UUID]:
    """``n`` random (version 4) event ids from one ``os.urandom`` call."""
    raw = os.urandom(16 * n)
    for i in range(0, 16 * n, 16):
        yield uuid.UUID(bytes=raw[i : i + 16], version=4)
