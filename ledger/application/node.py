"""The ledger node: the only writer of one book.

Shape (LMAX / TigerBeetle): callers put requests (lists of commands) on a bounded queue;
the *decider* thread takes whole requests up to ``batch_size_max`` commands (or what
arrives within ``batch_wait_ms``), makes sure every account and transfer the batch refers
to is in memory (loading the missing ones from PostgreSQL), decides the whole batch in
arrival order, chains the resulting events into records and hands the batch to the
two commit stages, each a thread, through the
:class:`~ledger.application.recorder.Recorder`: the WAL stage appends the batch and
fdatasyncs it, the store stage inserts it into PostgreSQL and only then answers every
caller of the batch. Batches pass both stages strictly in order; the WAL may sync batch
N+1 while PostgreSQL commits batch N, so the two fsyncs overlap instead of adding up.

Why threads and not tasks on the caller's event loop: the HTTP server shares its loop with
hundreds of request tasks, and every ``await`` inside the pipeline would wait for a full
round of them; on its own threads the pipeline advances as soon as storage answers, and
callers only pay one hand-off each way (``call_soon_threadsafe``).

Deciding batch N+1 while batch N is being made durable is safe because a batch, once
decided, is never dropped: PostgreSQL errors are retried until they succeed, and a WAL
error or a lost lease stops the node without acknowledging anything, to be recovered from
disk. Replies of batch N+1, rejections included, wait for batch N+1's commit, so no caller
ever sees an outcome that depends on events that might not survive a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from uuid import UUID

from ledger import domain
from ledger.application.cache import BookCache, Capture
from ledger.application.errors import NodeStopped, Overloaded
from ledger.application.ports import EventStore
from ledger.application.recorder import Recorder, RecoveryReport
from ledger.application.records import EventItem, EventRecord, chain_new_events

__all__ = ["LedgerNode", "NodeConfig", "NodeMetrics"]

_log = logging.getLogger(__name__)
SNAPSHOT_SLICE_ROWS = 512
"""Snapshot rows built between two pauses of the snapshot stage (a few ms of work)."""
SNAPSHOT_PAUSE_MAX_S = 0.1
"""The longest pause between two parts of a snapshot, however long the part took."""


class _Pacer:
    """Spreads a long piece of background work out: each call sleeps ``idle`` times as
    long as the work since the previous call took (at most ``SNAPSHOT_PAUSE_MAX_S``), so
    the work has about 1 / (1 + idle) of the time, and the interpreter and the cores are
    left to the batches the rest of it. ``idle`` 0, or once ``hurry()`` is true (the
    node is closing, or the next snapshot is due): a bare yield of the interpreter."""

    def __init__(self, idle: float, hurry: Callable[[], bool] = lambda: False) -> None:
        self.idle = idle
        self.hurry = hurry
        self.slept_s = 0.0
        self._since = time.perf_counter()

    def __call__(self) -> None:
        worked = time.perf_counter() - self._since
        pause = 0.0005
        if self.idle > 0 and not self.hurry():
            pause = max(pause, min(worked * self.idle, SNAPSHOT_PAUSE_MAX_S))
        time.sleep(pause)
        self.slept_s += pause
        self._since = time.perf_counter()


@dataclass(frozen=True)
class NodeConfig:
    """Limits and timings of the pipeline (see ``ledger.config.Settings`` for defaults)."""

    batch_size_max: int = 8190
    batch_wait_ms: float = 0.0
    queue_size_max: int = 65_536
    snapshot_every_events: int = 100_000
    snapshot_pace: float = 4.0
    """A snapshot's rows are built and written in parts, each followed by a pause this
    many times as long as the part (see :class:`_Pacer`): 4 spreads a capture of 50 000
    rows over a few seconds instead of one burst."""
    pending_expiry_interval_ms: int = 1000
    pipeline_depth: int = 2
    load_retry_max_ms: int = 2000


@dataclass
class NodeMetrics:
    """Counters the HTTP layer exports to Prometheus (hooks set by the API)."""

    batches: int = 0
    commands: int = 0
    events: int = 0
    load_s: float = 0.0
    decide_s: float = 0.0
    observe_batch_size: Callable[[int], None] | None = None


Outcomes = list[domain.CommandOutcome]


@dataclass
class _Request:
    commands: Sequence[domain.Command]
    future: asyncio.Future[Outcomes] | None
    loop: asyncio.AbstractEventLoop | None


@dataclass
class _Job:
    records: list[EventRecord]
    snapshots: Capture | None
    watermark: int | None
    requests: list[_Request]
    outcomes: list[Outcomes] = field(default_factory=list)


def _resolve(pairs: list[tuple[asyncio.Future[Outcomes], Outcomes]]) -> None:
    for future, outcomes in pairs:
        if not future.done():
            future.set_result(outcomes)


def _reject(futures: list[asyncio.Future[Outcomes]], exc: BaseException) -> None:
    for future in futures:
        if not future.done():
            future.set_exception(exc)


def _wake(futures: list[asyncio.Future[None]]) -> None:
    for future in futures:
        if not future.done():
            future.set_result(None)


class LedgerNode:
    """One book's single writer. Create with :meth:`open`; call :meth:`submit`."""

    def __init__(
        self,
        recorder: Recorder,
        config: NodeConfig,
        *,
        clock_us: Callable[[], int] | None = None,
        metrics: NodeMetrics | None = None,
        expire_pending: bool = True,
    ) -> None:
        self.recorder = recorder
        self.store: EventStore = recorder.store
        self.config = config
        self.metrics = metrics or NodeMetrics()
        self.cache = BookCache(
            self.store, load_retry_max_ms=config.load_retry_max_ms, stopping=lambda: self._closing
        )
        self._clock_us = clock_us or (lambda: time.time_ns() // 1000)
        self._expire_pending = expire_pending
        self._last_now_us = 0
        self._requests: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._inserts: queue.Queue[_Job | None] = queue.Queue(maxsize=1)
        # Snapshots go to PostgreSQL in their own transaction, beside the batches: one
        # capture holds every hold changed since the last (tens of thousands of rows at
        # the default interval), which inside a batch's transaction held up every
        # answer for a second or more. One capture at a time: the next is taken only
        # once the previous one is stored.
        self._snapshots: queue.Queue[tuple[Capture, int] | None] = queue.Queue()
        self._snapshot_busy = False
        # Decided jobs not yet taken by the committer. The decider takes a slot *before*
        # gathering requests, so each batch gathers everything that arrived while the
        # previous one was being committed (adaptive batching, as in group commit).
        self._slots = threading.Semaphore(max(1, config.pipeline_depth - 1))
        self._count_lock = threading.Lock()
        self._queued_commands = 0
        self._state_lock = threading.Lock()
        self._waiters_lock = threading.Lock()
        self._waiters: list[tuple[int, asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._threads: list[threading.Thread] = []
        self._next_position = 1
        self._last_hash = b""
        self._flushed_position = 0
        self._committed_position = 0
        self.failure: BaseException | None = None
        self.recovery: RecoveryReport | None = None
        self._closing = False

    @property
    def state(self) -> domain.BookState:
        return self.cache.state

    # -- lifecycle ---------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        recorder: Recorder,
        config: NodeConfig | None = None,
        *,
        holder: str | None = None,
        clock_us: Callable[[], int] | None = None,
        metrics: NodeMetrics | None = None,
        expire_pending: bool = True,
    ) -> LedgerNode:
        """Recover (lease, WAL ↔ PostgreSQL), load the state tail, start the pipeline."""
        node = cls(
            recorder,
            config or NodeConfig(),
            clock_us=clock_us,
            metrics=metrics,
            expire_pending=expire_pending,
        )
        try:
            await asyncio.to_thread(node._recover, holder)
        except BaseException:
            await asyncio.to_thread(recorder.close)
            raise
        node._start_threads()
        return node

    def _recover(self, holder: str | None) -> None:
        self.recovery = self.recorder.recover(holder)
        _log.info("recovery: %s", self.recovery.summary())
        head, head_hash = self.store.head()
        self._committed_position = head
        self._next_position = head + 1
        self._last_hash = head_hash
        self._flushed_position = self.cache.load_tail(head)

    def _start_threads(self) -> None:
        stages = (
            ("ledger-decider", self._decider),
            ("ledger-wal", self._wal_stage),
            ("ledger-store", self._store_stage),
            ("ledger-snapshots", self._snapshot_stage),
        )
        for name, target in stages:
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    async def close(self) -> None:
        """Stop taking requests, finish what was accepted, release the lease."""
        if self._closing:
            return
        self._closing = True
        self._requests.put(None)
        for thread in self._threads:
            await asyncio.to_thread(thread.join)
        self._fail_queued(NodeStopped("node closed"))
        await asyncio.to_thread(self.recorder.close)

    @property
    def position(self) -> int:
        """Highest position decided (committed or in flight)."""
        return self._next_position - 1

    @property
    def committed_position(self) -> int:
        return self._committed_position

    @property
    def queue_depth(self) -> int:
        return self._queued_commands

    @property
    def ready(self) -> bool:
        return self.failure is None and not self._closing and self.recovery is not None

    # -- the public API ----------------------------------------------------------------

    async def submit(self, commands: Sequence[domain.Command]) -> Outcomes:
        """Decide and durably record ``commands``; one outcome per command, in order.

        Raises :class:`Overloaded` (nothing accepted) when the queue is full and
        :class:`NodeStopped` if the node failed or closed before recording them.
        """
        if self.failure is not None or self._closing:
            raise NodeStopped(f"node is not accepting requests: {self.failure or 'closing'}")
        if not commands:
            return []
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outcomes] = loop.create_future()
        with self._count_lock:
            if self._queued_commands + len(commands) > self.config.queue_size_max:
                raise Overloaded(
                    f"command queue full: {self._queued_commands} queued, "
                    f"{len(commands)} more asked, limit {self.config.queue_size_max}"
                )
            self._queued_commands += len(commands)
        self._requests.put(_Request(list(commands), future, loop))
        return await future

    async def wait_committed(self, position: int) -> None:
        """Return once everything up to ``position`` is in the WAL and in PostgreSQL."""
        if self._committed_position >= position:
            return
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._waiters_lock:
            if self._committed_position < position and self.failure is None:
                self._waiters.append((position, loop, future))
            else:
                future.set_result(None)
        await future
        if self._committed_position < position:
            raise NodeStopped(f"node stopped before position {position} was recorded")

    async def read_account(self, account_id: UUID) -> domain.Account | None:
        """The account as committed (never a state that a crash could undo)."""
        image, position = await asyncio.to_thread(self._read, account_id, None)
        await self.wait_committed(position)
        return image if isinstance(image, domain.Account) else None

    async def read_transfer(self, transfer_id: UUID) -> domain.Transfer | None:
        """The transfer as committed."""
        image, position = await asyncio.to_thread(self._read, None, transfer_id)
        await self.wait_committed(position)
        return image if isinstance(image, domain.Transfer) else None

    def _read(
        self, account_id: UUID | None, transfer_id: UUID | None
    ) -> tuple[domain.Account | domain.Transfer | None, int]:
        with self._state_lock:
            if account_id is not None:
                if account_id not in self.state.accounts:
                    self.cache.load({account_id}, set(), from_events=True)
                account = self.state.accounts.get(account_id)
                return (account.copy() if account else None), self.position
            assert transfer_id is not None
            if transfer_id not in self.state.transfers:
                self.cache.load(set(), {transfer_id}, from_events=True)
            transfer = self.state.transfers.get(transfer_id)
            return (transfer.copy() if transfer else None), self.position

    # -- decider thread ----------------------------------------------------------------

    def _decider(self) -> None:
        batch: list[_Request] = []
        try:
            while self.failure is None:
                if not self._slots.acquire(timeout=self.config.pending_expiry_interval_ms / 1000):
                    continue
                batch = self._next_batch()
                stop = bool(batch) and batch[-1] is _STOP
                if stop:
                    batch.pop()
                if batch:
                    self._jobs.put(self._decide(batch))
                elif not stop and self._expiry_due():
                    self._jobs.put(self._decide([_Request([self._expire_command()], None, None)]))
                else:
                    self._slots.release()
                if stop:
                    break
        except BaseException as exc:  # a bug, or storage failing while loading
            self._stop_with(exc, batch)
        self._jobs.put(None)

    def _next_batch(self) -> list[_Request]:
        timeout_s = self.config.pending_expiry_interval_ms / 1000
        try:
            first = self._requests.get(timeout=timeout_s)
        except queue.Empty:
            return []
        if first is None:
            return [_STOP]
        batch = [first]
        size = len(first.commands)
        if self.config.batch_wait_ms > 0 and size < self.config.batch_size_max:
            time.sleep(self.config.batch_wait_ms / 1000)
        while size < self.config.batch_size_max:
            try:
                nxt = self._requests.get_nowait()
            except queue.Empty:
                break
            if nxt is None:
                batch.append(_STOP)
                break
            batch.append(nxt)
            size += len(nxt.commands)
        return batch

    def _expiry_due(self) -> bool:
        if not self._expire_pending or self._closing:
            return False
        with self._state_lock:
            due = self.state.next_expiry_us()
        return due is not None and due <= self._clock_us()

    def _expire_command(self) -> domain.Command:
        return domain.ExpirePendingTransfers(now_us=self._now_us())

    def _decide(self, batch: list[_Request]) -> _Job:
        commands = [c for r in batch for c in r.commands]
        with self._state_lock:
            t0 = time.perf_counter()
            self.cache.ensure_loaded(commands)
            t1 = time.perf_counter()
            now_us = self._now_us()
            flat = domain.decide_batch(self.state, commands, now_us)
            records = self._to_records(flat, now_us)
            self.metrics.load_s += t1 - t0
            self.metrics.decide_s += time.perf_counter() - t1
        job = _Job(records, None, None, batch)
        i = 0
        for r in batch:
            job.outcomes.append(flat[i : i + len(r.commands)])
            i += len(r.commands)
        if (
            self.position - self._flushed_position >= self.config.snapshot_every_events
            and not self._snapshot_busy
        ):
            self._snapshot_busy = True
            with self._state_lock:
                job.snapshots = self.cache.capture_snapshots()
            job.watermark = self.position
            self._flushed_position = self.position
        self.metrics.batches += 1
        self.metrics.commands += len(commands)
        self.metrics.events += len(records)
        if self.metrics.observe_batch_size:
            self.metrics.observe_batch_size(len(commands))
        return job

    def _now_us(self) -> int:
        now = max(self._clock_us(), self._last_now_us)
        self._last_now_us = now
        return now

    def _to_records(
        self, outcomes: Sequence[domain.CommandOutcome], now_us: int
    ) -> list[EventRecord]:
        items: list[EventItem] = []
        mark = self.cache.applied
        to_data = domain.event_to_data
        for outcome in outcomes:
            for event in outcome.events:
                mark(event)
                items.append(
                    (
                        event.stream_id,
                        event.stream_version,
                        event.type,
                        event.schema_version,
                        to_data(event),
                    )
                )
        if not items:
            return []
        records = chain_new_events(
            items, os.urandom(16 * len(items)), now_us, self._next_position, self._last_hash
        )
        self._next_position += len(records)
        self._last_hash = records[-1].hash
        return records

    # -- committer thread --------------------------------------------------------------

    def _wal_stage(self) -> None:
        """Append each decided job to the WAL (one fdatasync), then pass it on. After a
        failure it keeps draining jobs (failing their callers) until the end marker."""
        while True:
            job = self._jobs.get()
            if job is None:
                self._inserts.put(None)
                return
            self._slots.release()
            if self.failure is not None:
                self._fail_requests(job.requests, NodeStopped(f"node stopped: {self.failure!r}"))
                continue
            try:
                self.recorder.append(job.records)
            except BaseException as exc:
                self._stop_with(exc, job.requests)
                continue
            self._inserts.put(job)

    def _store_stage(self) -> None:
        """Insert each job into PostgreSQL (retried until it commits), then answer it."""
        while True:
            job = self._inserts.get()
            if job is None:
                self._snapshots.put(None)
                return
            if self.failure is not None:
                self._fail_requests(job.requests, NodeStopped(f"node stopped: {self.failure!r}"))
                continue
            try:
                self.recorder.insert(job.records)
                self._answer(job)
            except BaseException as exc:
                self._stop_with(exc, job.requests)
                continue
            if job.snapshots is not None and job.watermark is not None:
                # after the batch at the watermark committed, so the snapshots never
                # describe a state whose events are not stored
                self._snapshots.put((job.snapshots, job.watermark))

    def _snapshot_stage(self) -> None:
        """Save each capture with its watermark in one transaction of its own. The rows
        are built and written here a slice at a time, with a pause after each slice in
        proportion to its work (``snapshot_pace``), so that a capture of tens of
        thousands of records does not take the interpreter from the event loop and the
        other stages, nor PostgreSQL's share of the cores from the batches, for a second
        or more at once."""
        while True:
            item = self._snapshots.get()
            if item is None:
                return
            capture, watermark = item
            try:
                if self.failure is None:
                    began = time.monotonic()
                    pacer = _Pacer(self.config.snapshot_pace, self._snapshot_overdue)
                    rows = capture.rows(every=SNAPSHOT_SLICE_ROWS, pause=pacer)
                    built = time.monotonic()
                    self.recorder.insert([], rows, watermark, pace=pacer)
                    _log.info(
                        "snapshot at position %d: %d rows built in %.2f s, saved in %.2f s "
                        "(%.2f s of it in pauses)",
                        watermark,
                        len(rows),
                        built - began,
                        time.monotonic() - built,
                        pacer.slept_s,
                    )
            except BaseException as exc:
                self._stop_with(exc, [])
            finally:
                self._snapshot_busy = False

    def _snapshot_overdue(self) -> bool:
        """No more pauses in the snapshot being saved: the node is closing, or the next
        capture is already due (so snapshots never fall more than one interval behind,
        however fast records change)."""
        return self._closing or (
            self.position - self._flushed_position >= self.config.snapshot_every_events
        )

    def _answer(self, job: _Job) -> None:
        by_loop: dict[
            asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Outcomes], Outcomes]]
        ] = {}
        done = 0
        for request, outcomes in zip(job.requests, job.outcomes, strict=True):
            done += len(request.commands)
            if request.future is not None and request.loop is not None:
                by_loop.setdefault(request.loop, []).append((request.future, outcomes))
        with self._count_lock:
            self._queued_commands -= sum(
                len(r.commands) for r in job.requests if r.future is not None
            )
        if job.records:
            self._committed_position = job.records[-1].position
        for loop, pairs in by_loop.items():
            with contextlib.suppress(RuntimeError):  # the caller's loop has closed
                loop.call_soon_threadsafe(_resolve, pairs)
        self._wake_waiters()

    def _wake_waiters(self) -> None:
        position = self._committed_position
        ready: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
        with self._waiters_lock:
            keep = []
            for item in self._waiters:
                if item[0] <= position or self.failure is not None:
                    ready.setdefault(item[1], []).append(item[2])
                else:
                    keep.append(item)
            self._waiters = keep
        for loop, futures in ready.items():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_wake, futures)

    # -- failure -----------------------------------------------------------------------

    def _stop_with(self, exc: BaseException, requests: list[_Request]) -> None:
        if self.failure is None:
            self.failure = exc
            _log.critical("ledger node stopped: %r", exc)
        stopped = NodeStopped(f"node stopped before recording: {exc!r}")
        self._fail_requests(requests, stopped)
        self._fail_queued(stopped)
        self._requests.put(None)  # wake the decider so that it ends the job stream
        self._wake_waiters()

    def _fail_queued(self, exc: NodeStopped) -> None:
        while True:
            try:
                req = self._requests.get_nowait()
            except queue.Empty:
                break
            if req is not None:
                self._fail_requests([req], exc)
        for jobs in (self._jobs, self._inserts):
            end_of_stream = False
            while True:
                try:
                    job = jobs.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    end_of_stream = True
                else:
                    if jobs is self._jobs:
                        self._slots.release()
                    self._fail_requests(job.requests, exc)
            if end_of_stream:
                jobs.put(None)

    def _fail_requests(self, requests: list[_Request], exc: NodeStopped) -> None:
        for req in requests:
            if req.future is not None and req.loop is not None and not req.future.done():
                with contextlib.suppress(RuntimeError):
                    req.loop.call_soon_threadsafe(_reject, [req.future], exc)
        with self._count_lock:
            self._queued_commands = max(
                0, self._queued_commands - sum(len(r.commands) for r in requests if r.future)
            )


_STOP = _Request([], None, None)
"""Marks the end of the request stream inside a batch (close() was called)."""
