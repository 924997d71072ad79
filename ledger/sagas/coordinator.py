"""The coordinator: runs TCC transactions and sagas, durably, and resumes them after a crash.

Ordering. Each transaction is one stream in the coordinator's book, and the rule is
*record, then act*: ``TransactionStarted`` (with the whole spec, URLs and payloads
included) and the first ``CallStarted`` are durable before the caller hears "accepted" and
before the first call goes out; every later ``CallStarted`` is durable before its call;
``TransactionDecided`` (confirm, cancel or compensate) is durable before the first
confirm, cancel or compensation goes out, so after a crash the direction can never flip;
``TransactionFinished`` is written last. Answers (``CallFinished``) are recorded when they
arrive; a success is held back to share the next write, because losing it costs at most
one repeated, idempotent call.

Durability. Writes go through the same :class:`~ledger.application.recorder.Recorder` as a
ledger node (WAL append + fdatasync, then one PostgreSQL transaction; the book's writer
lease keeps a second coordinator out), group-committed by the
:class:`~ledger.sagas.journal.Journal`: all transactions that advanced while one batch was
being written share the next one.

Recovery. At start the coordinator takes the lease, makes the WAL and PostgreSQL agree,
rebuilds every unfinished transaction from its stream and resumes it from its last
recorded state with the same code that runs new ones: a TCC still trying re-sends the
tries that have not succeeded (or cancels at once if its deadline passed meanwhile); one
that decided re-sends the confirms or cancels that have not succeeded; a saga resumes its
forward run or its compensations. A call recorded as started but never answered is simply
sent again as a new attempt: participants de-duplicate by (gid, branch, op), so a repeat
is harmless, and every cancel or compensation must cope with a try or action that never
arrived (the barrier in :mod:`ledger.sagas.participant` does).

Bounds: at most ``in_flight_max`` unfinished transactions (new ones are refused with
:class:`Overloaded`), ``connections_max`` HTTP connections, a global retry budget, capped
back-off, and at most ``BRANCHES_MAX`` branches or steps per transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg

from ledger.adapters.postgres import PostgresEventStore
from ledger.adapters.wal import open_wal
from ledger.application.ports import EventStore
from ledger.application.recorder import Recorder, RecoveryReport, WalWithTail
from ledger.devservices import normalise_pg_url
from ledger.logs import transaction_id
from ledger.sagas.gidfilter import GidFilter
from ledger.sagas.http import FastPoster, HttpxPoster, Poster
from ledger.sagas.journal import (
    CallStarted,
    CoordinatorEvent,
    CrashPoint,
    Journal,
    JournalFailed,
    Kind,
    RetryRequested,
    TransactionFinished,
    TransactionStarted,
    events_from_record,
    stream_id,
)
from ledger.sagas.metrics import CoordinatorMetrics
from ledger.sagas.runtime import Clock, Runtime, RuntimeConfig, SystemClock
from ledger.sagas.saga import run_saga
from ledger.sagas.specs import SagaSpec, TccSpec
from ledger.sagas.state import UNFINISHED_STATUSES, Transaction, evolve, replay, start
from ledger.sagas.tcc import run_tcc

__all__ = [
    "Coordinator",
    "CoordinatorConfig",
    "GidConflict",
    "NotFound",
    "Overloaded",
    "TransactionAlreadyFinished",
]

_log = logging.getLogger(__name__)


class Overloaded(RuntimeError):
    """``in_flight_max`` transactions are unfinished: nothing was recorded; retry later."""


class GidConflict(ValueError):
    """The gid is already used by a transaction with another kind or spec."""


class NotFound(LookupError):
    """No transaction has this gid."""


class TransactionAlreadyFinished(RuntimeError):
    """An admin action asked for a transaction that has already reached a final state."""


@dataclass(frozen=True)
class CoordinatorConfig:
    """Where the journal lives and the limits of the coordinator."""

    database_url: str
    wal_dir: Path
    book_id: str = "coordinator"
    wal_segment_size_bytes: int = 64 * 1024 * 1024
    postgres_retry_max_ms: int = 2000
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    in_flight_max: int = 10_000
    connections_max: int = 256
    snapshot_every_events: int = 10_000


class GidLookup:
    """Answers "is this gid already stored?": a start with a client-chosen gid must not
    reuse it. A :class:`~ledger.sagas.gidfilter.GidFilter` of the book's gids (filled by
    :meth:`load` at start, fed by :meth:`add` before each new stream's first write) rules
    out nearly every new gid; the others are asked of PostgreSQL, many concurrent starts
    with one query, because asking once per start through one connection would serialise
    the starts. Queries wait while one is running, then go out together (as group commit
    does for writes)."""

    PAGE = 10_000

    def __init__(self, database_url: str, book_id: str) -> None:
        self._dsn = normalise_pg_url(database_url).replace("postgresql+psycopg://", "postgresql://")
        self._book_id = book_id
        self._waiting: dict[str, list[asyncio.Future[bool]]] = {}
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._task: asyncio.Task[None] | None = None
        self.filter: GidFilter | None = None

    def load(self, store: EventStore, head: int) -> int:
        """Blocking: fill the filter from the book's stream ids (after recovery, so that
        every stored stream is in); return how many gids it holds. Until this ran, every
        gid is asked of PostgreSQL."""
        gids = GidFilter(capacity=max(1 << 16, head // 2))
        after = ""
        while page := store.stream_ids(after, self.PAGE):
            gids.add_stream_ids(page)
            after = page[-1]
        self.filter = gids
        return gids.count

    def add(self, gid: str) -> None:
        """``gid`` is about to be written (call before its stream's first write)."""
        if self.filter is not None:
            self.filter.add(gid)

    async def exists(self, gid: str) -> bool:
        if self.filter is not None and not self.filter.may_contain(gid):
            return False
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(gid, []).append(future)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())
        return await future

    async def _run(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting, {}
            try:
                found = await self._query(list(batch))
            except Exception as exc:
                failed = JournalFailed(f"cannot look up gids in PostgreSQL: {exc!r}")
                for futures in batch.values():
                    for f in futures:
                        if not f.done():
                            f.set_exception(failed)
                continue
            for gid, futures in batch.items():
                for f in futures:
                    if not f.done():
                        f.set_result(gid in found)

    async def _query(self, gids: list[str]) -> set[str]:
        if self._conn is None or self._conn.closed:
            self._conn = await psycopg.AsyncConnection.connect(self._dsn, autocommit=True)
        streams = [stream_id(k, g) for g in gids for k in ("tcc", "saga")]
        try:
            cur = await self._conn.execute(
                "SELECT stream_id FROM events WHERE book_id = %s AND stream_id = ANY(%s) "
                "AND stream_version = 1",
                (self._book_id, streams),
            )
            rows = await cur.fetchall()
        except psycopg.OperationalError:
            await self._conn.close()
            self._conn = None
            raise
        return {str(r[0]).split("-", 1)[1] for r in rows}

    async def close(self) -> None:
        if self._task is not None:
            with contextlib.suppress(BaseException):
                await self._task
        if self._conn is not None:
            await self._conn.close()


class Coordinator:
    """Starts, drives, recovers and administers global transactions (module docstring)."""

    def __init__(
        self,
        config: CoordinatorConfig,
        journal: Journal,
        client: Poster,
        clock: Clock,
        metrics: CoordinatorMetrics,
    ) -> None:
        self.config = config
        self.journal = journal
        self.store = journal.recorder.store
        self.client = client
        self.clock = clock
        self.metrics = metrics
        self.rt = Runtime(journal, client, clock, metrics, config.runtime, settled=self._settled)
        self.live: dict[str, Transaction] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._done: dict[str, asyncio.Event] = {}
        self._reserved: dict[str, asyncio.Event] = {}
        self.recovery: RecoveryReport | None = None
        self.resumed: list[str] = []
        """The gids of the unfinished transactions this start took up again."""
        self.closing = False
        self.gids = GidLookup(config.database_url, config.book_id)
        # labels() takes a lock and builds a key on every call: each child is looked up once
        self._finished: dict[tuple[str, str], Any] = {}
        self._transaction_seconds: dict[str, Any] = {}

    # -- lifecycle ----------------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        config: CoordinatorConfig,
        *,
        clock: Clock | None = None,
        metrics: CoordinatorMetrics | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        holder: str | None = None,
        store: EventStore | None = None,
        wal: WalWithTail | None = None,
    ) -> Coordinator:
        """Open the WAL and the event store, recover, and resume every unfinished one.
        ``store`` and ``wal`` replace the PostgreSQL store and the file WAL (tests pass
        the in-memory fakes); ``transport`` replaces the network (httpx only)."""
        clock = clock or SystemClock()
        metrics = metrics or CoordinatorMetrics()
        if wal is None:
            file_wal, torn = await asyncio.to_thread(
                open_wal, config.wal_dir, config.wal_segment_size_bytes, False
            )
            if torn is not None:
                _log.warning("coordinator WAL recovery: %s", torn)
            wal = file_wal
        if store is None:
            store = PostgresEventStore(config.database_url, config.book_id)
        recorder = Recorder(wal, store, retry_max_ms=config.postgres_retry_max_ms)
        journal = Journal(
            recorder,
            clock.now_us,
            snapshot_every_events=config.snapshot_every_events,
            crash_point=CrashPoint.from_env(),
            observe_commit_s=metrics.commit_seconds.observe,
        )
        try:
            replayed = await asyncio.to_thread(journal.recover, holder)
        except BaseException:
            await asyncio.to_thread(recorder.close)
            raise
        limits = httpx.Limits(
            max_connections=config.connections_max,
            max_keepalive_connections=config.connections_max,
        )
        fallback = HttpxPoster(
            httpx.AsyncClient(limits=limits, transport=transport, trust_env=False)
        )
        client: Poster = (
            fallback if transport is not None else FastPoster(fallback, config.connections_max)
        )
        coordinator = cls(config, journal, client, clock, metrics)
        coordinator.recovery = replayed.report
        try:
            await asyncio.to_thread(coordinator.gids.load, store, journal.committed_position)
        except BaseException:
            await asyncio.to_thread(recorder.close)
            await client.aclose()
            raise
        journal.start()
        for events in replayed.streams.values():
            txn = replay(events)
            coordinator.resumed.append(txn.gid)
            coordinator._launch(txn, first_recorded=False)
        if replayed.streams:
            _log.info("coordinator resumed %d unfinished transactions", len(replayed.streams))
        return coordinator

    async def close(self) -> None:
        """Stop the drivers (their transactions resume at the next start) and the journal."""
        if self.closing:
            return
        self.closing = True
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        await self.journal.close()
        await self.client.aclose()
        await self.gids.close()

    @property
    def ready(self) -> bool:
        return not self.closing and self.journal.failure is None

    # -- starting -------------------------------------------------------------------------------

    async def start_tcc(self, spec: TccSpec) -> tuple[Transaction, bool]:
        """Record and launch a TCC transaction; (transaction, False) when ``spec.gid`` was
        already started with the same spec (an idempotent repeat)."""
        timeout_s = spec.timeout_s or self.config.runtime.tcc_timeout_s
        return await self._start("tcc", spec, timeout_s)

    async def start_saga(self, spec: SagaSpec) -> tuple[Transaction, bool]:
        """Record and launch a saga (see :meth:`start_tcc`)."""
        return await self._start("saga", spec, spec.timeout_s)

    async def _start(
        self, kind: Kind, spec: TccSpec | SagaSpec, timeout_s: float | None
    ) -> tuple[Transaction, bool]:
        if self.closing or self.journal.failure is not None:
            raise JournalFailed("coordinator is not running")
        gid = spec.gid or uuid.uuid4().hex
        spec_data = spec.model_dump(mode="json")
        spec_data["gid"] = gid
        if spec.gid is not None:
            existing = await self._existing(gid)
            if existing is not None:
                return self._same_or_conflict(existing, kind, spec_data), False
        if len(self.live) + len(self._reserved) >= self.config.in_flight_max:
            self._release(gid)
            raise Overloaded(
                f"{len(self.live)} transactions unfinished, limit {self.config.in_flight_max}"
            )
        now_us = self.clock.now_us()
        deadline_us = None if timeout_s is None else now_us + int(timeout_s * 1e6)
        started = TransactionStarted(
            gid=gid, kind=kind, spec=spec_data, deadline_us=deadline_us, at_us=now_us
        )
        txn = start(started, spec if spec.gid == gid else spec.model_copy(update={"gid": gid}))
        first_ids = txn.ids if kind == "tcc" else txn.ids[:1]
        first_op = "try" if kind == "tcc" else "action"
        calls = [
            CallStarted(gid=gid, branch_id=i, op=first_op, attempt=1, at_us=now_us)
            for i in first_ids
        ]
        self.journal.open_stream(txn.stream)
        self.gids.add(gid)
        self.live[gid] = txn
        self._release(gid)
        self._done[gid] = asyncio.Event()
        try:
            await self.journal.record(txn.stream, [started, *calls])
        except BaseException:
            self.live.pop(gid, None)
            raise
        for c in calls:
            evolve(txn, c)
        self._launch(txn, first_recorded=True)
        return txn, True

    async def _existing(self, gid: str) -> Transaction | None:
        """The transaction with ``gid`` (live, being started, or stored), reserving the gid
        when there is none so that a concurrent start with the same gid waits its turn."""
        while (turn := self._reserved.get(gid)) is not None:
            await turn.wait()
        if gid in self.live:
            return self.live[gid]
        self._reserved[gid] = asyncio.Event()
        try:
            found = await self._load(gid) if await self.gids.exists(gid) else None
        except BaseException:
            self._release(gid)
            raise
        if found is not None:
            self._release(gid)
            return found[0]
        return None

    def _release(self, gid: str) -> None:
        turn = self._reserved.pop(gid, None)
        if turn is not None:
            turn.set()

    def _same_or_conflict(
        self, txn: Transaction, kind: str, spec_data: dict[str, Any]
    ) -> Transaction:
        if txn.kind != kind or txn.spec_data != spec_data:
            raise GidConflict(
                f"gid {txn.gid!r} is already used by a {txn.kind} transaction with another spec"
            )
        return txn

    def _launch(self, txn: Transaction, *, first_recorded: bool) -> None:
        self.live[txn.gid] = txn
        self._done.setdefault(txn.gid, asyncio.Event())
        self._tasks[txn.gid] = asyncio.get_running_loop().create_task(
            self._drive(txn, first_recorded), name=f"{txn.kind}-{txn.gid}"
        )

    async def _drive(self, txn: Transaction, first_recorded: bool) -> None:
        token = transaction_id.set(txn.gid)
        try:
            if txn.kind == "tcc":
                await run_tcc(self.rt, txn, first_recorded)
            else:
                await run_saga(self.rt, txn, first_recorded)
        except asyncio.CancelledError:
            pass
        except JournalFailed as exc:
            _log.error("%s %s stopped: %s", txn.kind, txn.gid, exc)
        except Exception:
            _log.critical("%s %s: driver failed (a bug)", txn.kind, txn.gid, exc_info=True)
        finally:
            transaction_id.reset(token)
            self._tasks.pop(txn.gid, None)
            if txn.finished and not self.closing:
                self._retire(txn)

    def _retire(self, txn: Transaction) -> None:
        self.live.pop(txn.gid, None)
        self.rt.forget(txn.gid)
        assert txn.outcome is not None
        finished = self._finished.get((txn.kind, txn.outcome))
        if finished is None:
            finished = self._finished[(txn.kind, txn.outcome)] = self.metrics.finished.labels(
                txn.kind, txn.outcome
            )
        finished.inc()
        if txn.finished_at_us is not None:
            timer = self._transaction_seconds.get(txn.kind)
            if timer is None:
                timer = self._transaction_seconds[txn.kind] = (
                    self.metrics.transaction_seconds.labels(txn.kind)
                )
            timer.observe(max(0, txn.finished_at_us - txn.started_at_us) / 1e6)
        done = self._done.pop(txn.gid, None)
        if done is not None:
            done.set()

    def _settled(self, txn: Transaction) -> None:
        done = self._done.get(txn.gid)
        if done is not None:
            done.set()

    async def wait(self, gid: str, timeout_s: float) -> None:
        """Return when ``gid`` is finished (or not live), or after ``timeout_s``.

        Finished: its final state is decided and every branch or step has acknowledged
        what it had to do; the closing ``TransactionFinished`` record may still be on its
        way to disk. Nothing depends on that record being durable: a crash before it is
        written makes recovery repeat the last confirms, cancels or compensations (all
        idempotent) and write it, with the same outcome."""
        done = self._done.get(gid)
        if done is None or gid not in self.live:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):  # no task of its own, unlike wait_for
                await done.wait()

    # -- reading ----------------------------------------------------------------------------------

    async def _load(self, gid: str) -> tuple[Transaction, list[CoordinatorEvent]] | None:
        names = [stream_id("tcc", gid), stream_id("saga", gid)]
        found = await asyncio.to_thread(self.store.read_streams, names)
        for name in names:
            records = found.get(name)
            if records:
                events = [e for r in records for e in events_from_record(r)]
                return replay(events), events
        return None

    async def get(self, gid: str) -> tuple[Transaction, list[CoordinatorEvent]]:
        """The transaction (live state when unfinished) and its durable history."""
        loaded = await self._load(gid)
        txn = self.live.get(gid)
        if loaded is None:
            if txn is None:
                raise NotFound(f"no transaction {gid!r}")
            return txn, []
        return (txn or loaded[0]), loaded[1]

    def unfinished(self, status: str | None = None, limit: int = 100) -> list[Transaction]:
        """Live transactions, oldest first, optionally of one status."""
        out = [t for t in self.live.values() if status is None or t.status == status]
        out.sort(key=lambda t: t.started_at_us)
        return out[:limit]

    def update_gauges(self) -> None:
        counts = Counter((t.kind, t.status) for t in self.live.values())
        for kind in ("tcc", "saga"):
            for status in UNFINISHED_STATUSES:
                self.metrics.transactions.labels(kind, status).set(counts.get((kind, status), 0))

    # -- admin -----------------------------------------------------------------------------------

    def _live_or_raise(self, gid: str) -> Transaction:
        txn = self.live.get(gid)
        if txn is None or txn.finished:
            raise TransactionAlreadyFinished(f"transaction {gid!r} is not unfinished")
        return txn

    async def retry_now(self, gid: str, by: str) -> Transaction:
        """Record the request and wake every back-off wait of ``gid`` now."""
        txn = self._live_or_raise(gid)
        await self.rt.record(txn, [RetryRequested(gid=gid, by=by, at_us=self.clock.now_us())])
        if gid in self._tasks:
            self.rt.poke(gid)
        else:  # its driver stopped on an error: start it again from the recorded state
            self._launch(txn, first_recorded=False)
        return txn

    async def force_stop(self, gid: str, by: str, reason: str) -> Transaction:
        """Stop driving ``gid`` and record it as ``force_stopped``: the operator takes
        over (calls in flight are abandoned; nothing more is sent)."""
        txn = self._live_or_raise(gid)
        task = self._tasks.get(gid)
        if task is not None:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        if txn.finished:
            raise TransactionAlreadyFinished(f"transaction {gid!r} finished meanwhile")
        event = TransactionFinished(
            gid=gid,
            outcome="force_stopped",
            reason=f"force-stopped by {by}: {reason}"[:500],
            at_us=self.clock.now_us(),
        )
        await self.rt.record(txn, [event])
        self._retire(txn)
        return txn
