"""The ledger node: the only writer of one book.

Shape (LMAX / TigerBeetle): callers put requests (lists of commands) on a bounded queue;
one batcher takes whole requests up to ``batch_size_max`` commands (or what arrives within
``batch_wait_ms``), makes sure every account and transfer the batch refers to is in the
in-memory state (loading the missing ones from PostgreSQL), decides the whole batch in
arrival order against that state, chains the resulting events into records and hands the
batch to the committer. The committer, on its own thread, records batches strictly one
after another through the :class:`~ledger.application.recorder.Recorder` (WAL + fdatasync,
then PostgreSQL), and only then answers every caller of the batch.

Deciding batch N+1 while batch N is being made durable is safe because a batch, once
decided, is never dropped: PostgreSQL errors are retried until they succeed, and a WAL
error or a lost lease stops the node without acknowledging anything, to be recovered
from disk. Replies of batch N+1, rejections included, wait for batch N+1's commit, so no
caller ever sees an outcome that depends on events that might not survive a crash.

Since the node is the only writer, its cache is authoritative: a record that is in memory
is current. A record that is not in memory has not changed since the snapshot watermark,
so its snapshot (accounts, pending transfers) or its creating event (plain transfers) is
current too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from uuid import UUID, SafeUUID

from ledger import domain
from ledger.adapters.postgres import SnapshotRow
from ledger.application.errors import EventStoreUnavailable, NodeStopped, Overloaded
from ledger.application.loading import event_references, transfer_from_event
from ledger.application.ports import EventStore
from ledger.application.recorder import Recorder, RecoveryReport
from ledger.application.records import EventRecord, PendingRecord, chain_records

__all__ = ["LedgerNode", "NodeConfig", "NodeMetrics"]

_log = logging.getLogger(__name__)
LOAD_ATTEMPTS_MAX = 10_000


_V4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_V4_SET = (0x4000 << 64) | (0x8000 << 48)
_new_uuid = object.__new__
_set_attr = object.__setattr__


def _random_uuids(n: int) -> Iterator[UUID]:
    """``n`` random (version 4) UUIDs from one ``os.urandom`` call: ``uuid.uuid4()`` costs
    a system call and a validating constructor per id, which shows on the hot path."""
    raw = os.urandom(16 * n)
    for i in range(0, 16 * n, 16):
        u = _new_uuid(UUID)
        _set_attr(u, "int", (int.from_bytes(raw[i : i + 16]) & _V4_CLEAR) | _V4_SET)
        _set_attr(u, "is_safe", SafeUUID.unknown)
        yield u


@dataclass(frozen=True)
class NodeConfig:
    """Limits and timings of the pipeline (see ``ledger.config.Settings`` for defaults)."""

    batch_size_max: int = 8190
    batch_wait_ms: float = 0.0
    queue_size_max: int = 65_536
    snapshot_every_events: int = 100_000
    pending_expiry_interval_ms: int = 1000
    pipeline_depth: int = 2
    load_retry_max_ms: int = 2000


@dataclass
class NodeMetrics:
    """Counters the HTTP layer exports to Prometheus (hooks set by the API)."""

    batches: int = 0
    commands: int = 0
    events: int = 0
    observe_batch_size: Callable[[int], None] | None = None
    observe_wal_s: Callable[[float], None] | None = None
    observe_store_s: Callable[[float], None] | None = None


@dataclass
class _Request:
    commands: Sequence[domain.Command]
    future: asyncio.Future[list[domain.CommandOutcome]]


@dataclass
class _Job:
    records: list[EventRecord]
    snapshots: list[SnapshotRow]
    watermark: int | None
    requests: list[_Request]
    outcomes: list[list[domain.CommandOutcome]]
    evict_after: list[UUID] = field(default_factory=list)


class LedgerNode:
    """One book's single writer. Create with :meth:`open`; call :meth:`submit`."""

    def __init__(
        self,
        recorder: Recorder,
        store: EventStore,
        config: NodeConfig,
        *,
        clock_us: Callable[[], int] | None = None,
        metrics: NodeMetrics | None = None,
    ) -> None:
        self.recorder = recorder
        self.store = store
        self.config = config
        self.state = domain.BookState()
        self.metrics = metrics or NodeMetrics()
        self._clock_us = clock_us or (lambda: time.time_ns() // 1000)
        self._last_now_us = 0
        self._queue: asyncio.Queue[_Request] = asyncio.Queue()
        self._queued_commands = 0
        self._commit_q: asyncio.Queue[_Job | None] = asyncio.Queue(maxsize=config.pipeline_depth)
        self._commit_thread = ThreadPoolExecutor(1, thread_name_prefix="ledger-commit")
        self._load_thread = ThreadPoolExecutor(1, thread_name_prefix="ledger-load")
        self._tasks: list[asyncio.Task[None]] = []
        self._next_position = 1
        self._last_hash = b""
        self._flushed_position = 0
        self._dirty_accounts: set[UUID] = set()
        self._dirty_transfers: set[UUID] = set()
        self.failure: BaseException | None = None
        self.recovery: RecoveryReport | None = None
        self._closing = False
        self._committed_position = 0
        self._committed = asyncio.Condition()

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
            recorder, recorder.store, config or NodeConfig(), clock_us=clock_us, metrics=metrics
        )
        loop = asyncio.get_running_loop()
        try:
            node.recovery = await loop.run_in_executor(
                node._commit_thread, recorder.recover, holder
            )
            _log.info("recovery: %s", node.recovery.summary())
            await loop.run_in_executor(node._load_thread, node._load_tail)
        except BaseException:
            await loop.run_in_executor(node._commit_thread, recorder.close)
            node._commit_thread.shutdown(wait=True)
            node._load_thread.shutdown(wait=True)
            raise
        node._tasks.append(asyncio.create_task(node._batcher(), name="ledger-batcher"))
        node._tasks.append(asyncio.create_task(node._committer(), name="ledger-committer"))
        if expire_pending:
            node._tasks.append(asyncio.create_task(node._expirer(), name="ledger-expirer"))
        return node

    async def close(self) -> None:
        """Stop taking requests, finish what was accepted, release the lease."""
        if self._closing:
            return
        self._closing = True
        async with self._committed:
            await self._committed.wait_for(
                lambda: self._queued_commands == 0 or self.failure is not None
            )
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._fail_all(NodeStopped("node closed"))
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._commit_thread, self.recorder.close)
        self._commit_thread.shutdown(wait=True)
        self._load_thread.shutdown(wait=True)

    @property
    def position(self) -> int:
        """Highest position decided (committed or in flight)."""
        return self._next_position - 1

    @property
    def queue_depth(self) -> int:
        return self._queued_commands

    @property
    def ready(self) -> bool:
        return self.failure is None and not self._closing and self.recovery is not None

    # -- the public API ----------------------------------------------------------------

    async def submit(self, commands: Sequence[domain.Command]) -> list[domain.CommandOutcome]:
        """Decide and durably record ``commands``; one outcome per command, in order.

        Raises :class:`Overloaded` (nothing accepted) when the queue is full and
        :class:`NodeStopped` if the node failed or closed before recording them.
        """
        if self.failure is not None or self._closing:
            raise NodeStopped(f"node is not accepting requests: {self.failure or 'closing'}")
        if not commands:
            return []
        if self._queued_commands + len(commands) > self.config.queue_size_max:
            raise Overloaded(
                f"command queue full: {self._queued_commands} queued, "
                f"limit {self.config.queue_size_max}"
            )
        future: asyncio.Future[list[domain.CommandOutcome]] = (
            asyncio.get_running_loop().create_future()
        )
        self._queued_commands += len(commands)
        self._queue.put_nowait(_Request(list(commands), future))
        return await future

    async def wait_committed(self, position: int) -> None:
        """Return once everything up to ``position`` is in the WAL and in PostgreSQL."""
        async with self._committed:
            await self._committed.wait_for(
                lambda: self._committed_position >= position or self.failure is not None
            )
        if self._committed_position < position:
            raise NodeStopped(f"node stopped before position {position} was recorded")

    async def read_account(self, account_id: UUID) -> domain.Account | None:
        """The account as committed (never a state that a crash could undo)."""
        if account_id not in self.state.accounts:
            await self._load_ids({account_id}, set())
        account = self.state.accounts.get(account_id)
        image = account.copy() if account is not None else None
        await self.wait_committed(self.position)
        return image

    async def read_transfer(self, transfer_id: UUID) -> domain.Transfer | None:
        """The transfer as committed."""
        if transfer_id not in self.state.transfers:
            await self._load_ids(set(), {transfer_id})
        transfer = self.state.transfers.get(transfer_id)
        image = transfer.copy() if transfer is not None else None
        await self.wait_committed(self.position)
        return image

    async def _load_ids(self, accounts: set[UUID], transfers: set[UUID]) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._load_thread, self._load_sync, accounts, transfers, True)

    # -- batcher -----------------------------------------------------------------------

    async def _batcher(self) -> None:
        batch: list[_Request] = []
        try:
            while True:
                first = await self._queue.get()
                batch = [first]
                size = len(first.commands)
                if self.config.batch_wait_ms > 0 and size < self.config.batch_size_max:
                    await asyncio.sleep(self.config.batch_wait_ms / 1000)
                while size < self.config.batch_size_max and not self._queue.empty():
                    nxt = self._queue.get_nowait()
                    batch.append(nxt)
                    size += len(nxt.commands)
                job = await self._decide(batch)
                await self._commit_q.put(job)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # a bug or a storage failure while loading
            self._stop_with(exc, _Job([], [], None, batch, []))

    async def _decide(self, batch: list[_Request]) -> _Job:
        commands = [c for r in batch for c in r.commands]
        await self._ensure_loaded(commands)
        now_us = self._now_us()
        outcomes_flat = domain.decide_batch(self.state, commands, now_us)
        records = self._to_records(outcomes_flat, now_us)
        outcomes: list[list[domain.CommandOutcome]] = []
        i = 0
        for r in batch:
            outcomes.append(outcomes_flat[i : i + len(r.commands)])
            i += len(r.commands)
        snapshots: list[SnapshotRow] = []
        watermark: int | None = None
        if self.position - self._flushed_position >= self.config.snapshot_every_events:
            snapshots = self._capture_snapshots()
            watermark = self.position
            self._flushed_position = self.position
        self.metrics.batches += 1
        self.metrics.commands += len(commands)
        self.metrics.events += len(records)
        if self.metrics.observe_batch_size:
            self.metrics.observe_batch_size(len(commands))
        return _Job(records, snapshots, watermark, batch, outcomes)

    def _now_us(self) -> int:
        now = max(self._clock_us(), self._last_now_us)
        self._last_now_us = now
        return now

    def _to_records(
        self, outcomes: Sequence[domain.CommandOutcome], now_us: int
    ) -> list[EventRecord]:
        pending: list[PendingRecord] = []
        ids = _random_uuids(sum(len(o.events) for o in outcomes))
        for outcome in outcomes:
            for event in outcome.events:
                self._mark_dirty(event)
                pending.append(
                    PendingRecord(
                        event_id=next(ids),
                        stream_id=event.stream_id,
                        stream_version=event.stream_version,
                        type=event.type,
                        schema_version=event.schema_version,
                        recorded_at_us=now_us,
                        data=domain.event_to_data(event),
                    )
                )
        if not pending:
            return []
        records = chain_records(pending, self._next_position, self._last_hash)
        self._next_position += len(records)
        self._last_hash = records[-1].hash
        return records

    # -- committer ---------------------------------------------------------------------

    async def _committer(self) -> None:
        loop = asyncio.get_running_loop()
        job: _Job | None = None
        try:
            while True:
                job = await self._commit_q.get()
                if job is None:
                    return
                await loop.run_in_executor(
                    self._commit_thread,
                    self.recorder.commit,
                    job.records,
                    job.snapshots,
                    job.watermark,
                )
                for request, outcomes in zip(job.requests, job.outcomes, strict=True):
                    self._queued_commands -= len(request.commands)
                    if not request.future.done():
                        request.future.set_result(outcomes)
                async with self._committed:
                    if job.records:
                        self._committed_position = job.records[-1].position
                    self._committed.notify_all()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self._stop_with(exc, job)

    def _stop_with(self, exc: BaseException, job: _Job | None = None) -> None:
        if self.failure is None:
            self.failure = exc
            _log.critical("ledger node stopped: %r", exc)
        stopped = NodeStopped(f"node stopped before recording: {exc!r}")
        if job is not None:
            for req in job.requests:
                if not req.future.done():
                    req.future.set_exception(stopped)
        self._fail_all(stopped)
        asyncio.get_running_loop().create_task(self._wake_waiters())

    async def _wake_waiters(self) -> None:
        async with self._committed:
            self._committed.notify_all()

    def _fail_all(self, exc: NodeStopped) -> None:
        while not self._queue.empty():
            req = self._queue.get_nowait()
            if not req.future.done():
                req.future.set_exception(exc)
        while not self._commit_q.empty():
            job = self._commit_q.get_nowait()
            if job is not None:
                for req in job.requests:
                    if not req.future.done():
                        req.future.set_exception(exc)
        self._queued_commands = 0

    # -- expiry ------------------------------------------------------------------------

    async def _expirer(self) -> None:
        interval_s = self.config.pending_expiry_interval_ms / 1000
        while True:
            await asyncio.sleep(interval_s)
            if self.failure is not None or self._closing:
                return
            due = self.state.next_expiry_us()
            if due is None or due > self._clock_us():
                continue
            with contextlib.suppress(Overloaded, NodeStopped):
                await self.submit([domain.ExpirePendingTransfers(now_us=self._clock_us())])

    # -- loading state -----------------------------------------------------------------

    def _load_tail(self) -> None:
        """At start: pending transfers, then replay events after the snapshot watermark."""
        head, head_hash = self.store.head()
        self._committed_position = head
        self._next_position = head + 1
        self._last_hash = head_hash
        watermark = self.store.watermark()
        self._flushed_position = watermark
        holds = [
            domain.Transfer.from_snapshot(data)
            for data in self.store.load_snapshots_where("transfer-", "pending_status", "pending")
        ]
        for hold in holds:
            self.state.add_transfer(hold)
        hold_accounts = {a for h in holds for a in (h.debit_account_id, h.credit_account_id)}
        self._load_sync(hold_accounts, set(), from_events=False)
        tail = list(self.store.read_positions(watermark + 1, head))
        events = [domain.event_from_data(r.type, r.schema_version, dict(r.data)) for r in tail]
        accounts: set[UUID] = set()
        transfers: set[UUID] = set()
        for event in events:
            a, t = event_references(event)
            accounts.update(a)
            transfers.update(t)
        self._load_sync(accounts, transfers, from_events=False)
        for event in events:
            domain.evolve(self.state, event)
            self._mark_dirty(event)

    async def _ensure_loaded(self, commands: Sequence[domain.Command]) -> None:
        """Load every record the commands refer to that is not in memory: transfers
        first, then accounts, including those of pending transfers that a post or void
        refers to without naming its accounts."""
        accounts: set[UUID] = set()
        transfers: set[UUID] = set()
        known_a = self.state.accounts
        known_t = self.state.transfers
        pending_ids: list[UUID] = []
        for c in commands:
            for a in c.referenced_account_ids():
                if a not in known_a:
                    accounts.add(a)
            for t in c.referenced_transfer_ids():
                if t not in known_t:
                    transfers.add(t)
            pending_id = getattr(c, "pending_id", None)
            if pending_id is not None:
                pending_ids.append(pending_id)
        loop = asyncio.get_running_loop()
        if transfers:
            await loop.run_in_executor(self._load_thread, self._load_sync, set(), transfers, True)
        for pending_id in pending_ids:
            pending = known_t.get(pending_id)
            if pending is not None:
                for a in (pending.debit_account_id, pending.credit_account_id):
                    if a not in known_a:
                        accounts.add(a)
        if accounts:
            await loop.run_in_executor(self._load_thread, self._load_sync, accounts, set(), True)

    def _load_sync(self, accounts: set[UUID], transfers: set[UUID], from_events: bool) -> None:
        """:meth:`_load_once`, retried with bounded back-off while PostgreSQL is away."""
        delay_s = 0.01
        attempt = 0
        while True:
            try:
                self._load_once(accounts, transfers, from_events)
                return
            except EventStoreUnavailable as exc:
                attempt += 1
                if self._closing or attempt > LOAD_ATTEMPTS_MAX:
                    raise
                if attempt in (1, 10):
                    _log.warning("loading records: event store unavailable: %s", exc)
                time.sleep(delay_s)
                delay_s = min(delay_s * 2, self.config.load_retry_max_ms / 1000)

    def _load_once(self, accounts: set[UUID], transfers: set[UUID], from_events: bool) -> None:
        """Put the records' current state into the cache (see the module docstring)."""
        account_streams = [f"account-{a}" for a in accounts]
        transfer_streams = [f"transfer-{t}" for t in transfers]
        snaps, firsts = self.store.load_records(
            account_streams + transfer_streams, transfer_streams if from_events else []
        )
        state = self.state
        for stream_id, data in snaps.items():
            if stream_id.startswith("account-"):
                account = domain.Account.from_snapshot(data)
                if account.id not in state.accounts:
                    state.add_account(account)
            else:
                transfer = domain.Transfer.from_snapshot(data)
                if transfer.id not in state.transfers:
                    state.add_transfer(transfer)
        for stream_id, first in firsts.items():
            if stream_id in snaps:
                continue
            event = domain.event_from_data(first.type, first.schema_version, dict(first.data))
            transfer = transfer_from_event(event)
            if transfer.id not in state.transfers:
                state.add_transfer(transfer)

    # -- snapshots ---------------------------------------------------------------------

    def _mark_dirty(self, event: domain.Event) -> None:
        accounts, transfers = event_references(event)
        self._dirty_accounts.update(accounts)
        self._dirty_transfers.update(transfers)

    def _capture_snapshots(self) -> list[SnapshotRow]:
        rows: list[SnapshotRow] = []
        for account_id in self._dirty_accounts:
            account = self.state.accounts.get(account_id)
            if account is not None:
                rows.append(SnapshotRow(f"account-{account_id}", 1, account.to_snapshot()))
        for transfer_id in self._dirty_transfers:
            transfer = self.state.transfers.get(transfer_id)
            if transfer is not None and transfer.flags.pending:
                rows.append(SnapshotRow(f"transfer-{transfer_id}", 1, transfer.to_snapshot()))
        self._dirty_accounts.clear()
        self._dirty_transfers.clear()
        return rows
