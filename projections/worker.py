"""Projection workers: an aiokafka consumer group that feeds the read models.

Why it is safe to be simple here. Offsets are committed by hand (``enable_auto_commit``
off) and only *after* the read models and their checkpoints have committed in PostgreSQL,
so a worker that dies at any point is redelivered what it had not yet acknowledged; the
checkpoints (:mod:`projections.tracking`) drop what was already applied, and fill from
the event store what the broker no longer has. Nothing depends on Kafka transactions,
producer idempotence or a rebalance arriving at a convenient moment: a failed offset
commit (the partition moved to another member meanwhile) is logged and ignored.

Each ``getmany`` batch is bounded (``batch_size_max`` records) and applied on a worker
thread, so the event loop keeps the group heartbeat going while PostgreSQL works. When
no message has arrived for ``catchup_interval_ms``, the worker also compares every
book's head in the event store with its checkpoints and catches up from the store: a
broker that lost the *last* messages of a book (no later message reveals the gap) then
still converges.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import psycopg
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

from ledger.application.records import EventRecord, record_from_dict
from ledger.config import Settings
from ledger.relay import decode_message, ensure_topic
from projections.base import Projection
from projections.tracking import (
    AppliedBatch,
    apply_records,
    book_heads,
    connect,
    read_checkpoint,
)

__all__ = ["ProjectionWorker", "WorkerConfig", "WorkerStats", "group_id_for", "worker_config"]

_log = logging.getLogger(__name__)

CATCH_UP_EVENTS_MAX = 100_000
"""Events one idle catch-up applies per projection and book (one transaction)."""


@dataclass(frozen=True)
class WorkerConfig:
    """Consumer settings; see ``ledger.config.Settings`` for the defaults."""

    bootstrap: str
    topic: str
    group_id: str
    isolation_level: str = "read_uncommitted"
    partitions: int = 6
    batch_size_max: int = 5000
    poll_timeout_ms: int = 200
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 1000
    catchup_interval_ms: int = 2000
    retry_max_ms: int = 5000
    parallel: bool = True


def group_id_for(prefix: str, projections: Sequence[Projection]) -> str:
    """One consumer group per set of projections: workers that run the same set share
    the partitions; a worker for another set needs every message itself."""
    return f"{prefix}.{'+'.join(sorted(p.name for p in projections))}"


def worker_config(
    settings: Settings, bootstrap: str, projections: Sequence[Projection]
) -> WorkerConfig:
    return WorkerConfig(
        bootstrap=bootstrap,
        topic=settings.kafka_topic,
        group_id=group_id_for(settings.projection_group, projections),
        isolation_level=settings.kafka_isolation_level,
        partitions=settings.kafka_partitions,
        batch_size_max=settings.projection_batch_size_max,
        catchup_interval_ms=settings.projection_catchup_interval_ms,
        session_timeout_ms=settings.projection_session_timeout_ms,
        heartbeat_interval_ms=max(100, settings.projection_session_timeout_ms // 10),
    )


@dataclass
class WorkerStats:
    """Counters for logs, tests and metrics."""

    batches: int = 0
    messages: int = 0
    applied: int = 0
    skipped: int = 0
    backfilled: int = 0
    commit_failures: int = 0
    positions: dict[tuple[str, str], int] = field(default_factory=dict)

    def add(self, results: Sequence[AppliedBatch]) -> None:
        for r in results:
            self.applied += r.applied
            self.skipped += r.skipped
            self.backfilled += r.backfilled
            self.positions[(r.projection, r.book_id)] = r.position


class ProjectionWorker:
    """One member of a projection consumer group; :meth:`run` until ``stop`` is set.

    ``on_batch``, if given, is called on the worker thread after each projection's
    transaction for a batch (tests use it to kill a worker between two of them).
    """

    def __init__(
        self,
        database_url: str,
        projections: Sequence[Projection],
        config: WorkerConfig,
        *,
        on_batch: Callable[[AppliedBatch], None] | None = None,
    ) -> None:
        if not projections:
            raise ValueError("a worker needs at least one projection")
        self.database_url = database_url
        self.projections = list(projections)
        self.config = config
        self.stats = WorkerStats()
        self.on_batch = on_batch
        self._conns: dict[str, psycopg.Connection[Any]] = {}
        self._executor: ThreadPoolExecutor | None = None
        self._consumer: AIOKafkaConsumer | None = None

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Consume and apply until ``stop`` is set. A projection invariant violation
        propagates (the worker stops); Kafka errors are retried after a back-off."""
        stop = stop or asyncio.Event()
        idle_since = time.monotonic()
        failures = 0
        try:
            while not stop.is_set():
                try:
                    consumer = await self._consumer_started()
                    batch = await consumer.getmany(
                        timeout_ms=self.config.poll_timeout_ms,
                        max_records=self.config.batch_size_max,
                    )
                    failures = 0
                except KafkaError as exc:
                    failures += 1
                    _log.warning("projection worker: %s: %s; reconnecting", type(exc).__name__, exc)
                    await self._close_consumer()
                    delay_s = min(self.config.retry_max_ms, 100 * 2**failures) / 1000
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), delay_s)
                    continue
                messages = [m for records in batch.values() for m in records]
                if messages:
                    await self._apply_messages(consumer, messages)
                    idle_since = time.monotonic()
                elif time.monotonic() - idle_since >= self.config.catchup_interval_ms / 1000:
                    await asyncio.to_thread(self.catch_up)
                    idle_since = time.monotonic()
        finally:
            await self.close()

    async def close(self) -> None:
        await self._close_consumer()
        if self._executor is not None:
            executor, self._executor = self._executor, None
            await asyncio.to_thread(executor.shutdown)
        conns, self._conns = list(self._conns.values()), {}
        for conn in conns:
            await asyncio.to_thread(conn.close)

    def catch_up(self) -> list[AppliedBatch]:
        """Apply from the event store whatever the checkpoints lack (no Kafka needed)."""
        conn = self._connection()
        results: list[AppliedBatch] = []
        heads = book_heads(conn)
        for projection in self.projections:
            for book_id, head in heads.items():
                position = read_checkpoint(conn, projection.name, book_id)
                if position < head:
                    through = min(head, position + CATCH_UP_EVENTS_MAX)
                    results.append(apply_records(conn, projection, book_id, [], through=through))
        self.stats.add(results)
        return results

    def apply_batch(self, by_book: dict[str, list[EventRecord]]) -> list[AppliedBatch]:
        """Apply one batch: one transaction per projection and book. With ``parallel``,
        each projection uses its own connection and thread, so PostgreSQL works on all
        of them at once while Python prepares the next."""
        if self.config.parallel and len(self.projections) > 1:
            futures = [
                self._pool().submit(self._apply_one, projection, by_book)
                for projection in self.projections
            ]
            results = [r for future in futures for r in future.result()]
        else:
            results = [r for p in self.projections for r in self._apply_one(p, by_book)]
        self.stats.add(results)
        return results

    def _apply_one(
        self, projection: Projection, by_book: dict[str, list[EventRecord]]
    ) -> list[AppliedBatch]:
        conn = self._connection(projection.name)
        results = []
        for book_id, records in by_book.items():
            result = apply_records(conn, projection, book_id, records)
            results.append(result)
            if self.on_batch is not None:
                self.on_batch(result)
        return results

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=len(self.projections), thread_name_prefix="projection"
            )
        return self._executor

    # -- internals ---------------------------------------------------------------------

    async def _apply_messages(self, consumer: AIOKafkaConsumer, messages: Sequence[Any]) -> None:
        by_book: dict[str, list[EventRecord]] = {}
        for message in messages:
            book_id, envelope = decode_message(message.value)
            by_book.setdefault(book_id, []).append(record_from_dict(envelope))
        failures = 0
        while True:
            try:
                await asyncio.to_thread(self.apply_batch, by_book)
                break
            except psycopg.OperationalError as exc:
                # PostgreSQL went away mid-batch: nothing of the failed transactions was
                # kept and no offset was committed, so applying the batch again is exact.
                failures += 1
                _log.warning("projection worker: PostgreSQL: %s; retrying the batch", exc)
                await asyncio.to_thread(self._drop_connections)
                await asyncio.sleep(min(self.config.retry_max_ms, 100 * 2**failures) / 1000)
        self.stats.batches += 1
        self.stats.messages += len(messages)
        try:
            await consumer.commit()
        except KafkaError as exc:
            # The partitions moved to another member (or the broker is away): the
            # checkpoints make the redelivery that follows harmless.
            self.stats.commit_failures += 1
            _log.info("projection worker: offset commit failed (%s); continuing", exc)

    def _drop_connections(self) -> None:
        conns, self._conns = list(self._conns.values()), {}
        for conn in conns:
            with contextlib.suppress(psycopg.Error):
                conn.close()

    def _connection(self, name: str = "") -> psycopg.Connection[Any]:
        conn = self._conns.get(name)
        if conn is None or conn.closed:
            conn = self._conns[name] = connect(self.database_url)
        return conn

    async def _consumer_started(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            cfg = self.config
            await ensure_topic(cfg.bootstrap, cfg.topic, cfg.partitions)
            consumer = AIOKafkaConsumer(
                cfg.topic,
                bootstrap_servers=cfg.bootstrap,
                group_id=cfg.group_id,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                isolation_level=cfg.isolation_level,
                session_timeout_ms=cfg.session_timeout_ms,
                heartbeat_interval_ms=cfg.heartbeat_interval_ms,
                metadata_max_age_ms=3000,
                max_partition_fetch_bytes=4 << 20,
            )
            try:
                await consumer.start()
            except BaseException:
                with contextlib.suppress(Exception):
                    await consumer.stop()
                raise
            self._consumer = consumer
        return self._consumer

    async def _close_consumer(self) -> None:
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            with contextlib.suppress(Exception):
                await consumer.stop()
