"""The relay: publishes the event store to Kafka, book by book, in position order.

Why it is shaped like this. The command path ends when a batch is in the WAL and in
PostgreSQL; Kafka is never on it. The relay runs beside the nodes and *tails* the
``events`` table by position: for each book it reads the rows after its checkpoint
(``relay_checkpoints``), sends them keyed by book id (so one book's events stay in order
in one partition) with ``acks="all"``, waits until the broker has acknowledged every one
of them, and only then stores the new checkpoint. A crash or a broker outage at any point
therefore re-sends, never skips: delivery is at-least-once, and the projection workers
drop what they have already applied and backfill what the broker lost
(:mod:`projections.tracking`). Positions are gap-free and commit in order per book (the
single-writer rule), so "after the checkpoint" never misses a row that commits later.

Broker outages delay publishing and nothing else: every Kafka error closes the producer,
waits with bounded exponential back-off and starts again from the stored checkpoint.
A broker that lost its memory (the local broker keeps topics only in memory) loses the
topic too, so the relay re-creates a missing topic every ``TOPIC_CHECK_INTERVAL_S``.

Message format: key = book id (UTF-8); value = the stored envelope as JSON
(:meth:`~ledger.application.records.EventRecord.to_dict`, hashes in hex) plus
``"book_id"``; headers ``position`` (decimal) and ``type``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
import psycopg
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from ledger.config import Settings
from ledger.devservices import normalise_pg_url

_JITTER = random.Random()
"""Back-off jitter from a generator of this module's own: the process-wide one is left alone."""

__all__ = [
    "Relay",
    "RelayConfig",
    "RelayStats",
    "decode_message",
    "ensure_topic",
    "relay_config",
]

_log = logging.getLogger(__name__)

TOPIC_CHECK_INTERVAL_S: Final = 5.0
RETRY_BASE_MS: Final = 100
TOPIC_ALREADY_EXISTS: Final = 36

_SELECT: Final = (
    "SELECT position, event_id::text, stream_id, stream_version, type, schema_version, "
    "data::text, recorded_at_us, encode(prev_hash, 'hex'), encode(hash, 'hex') FROM events "
    "WHERE book_id = %s AND position >= %s AND position <= %s ORDER BY position LIMIT %s"
)


@dataclass(frozen=True)
class RelayConfig:
    """Where to publish and how: see ``ledger.config.Settings`` for the defaults."""

    bootstrap: str
    topic: str
    name: str = "kafka"
    idempotence: bool = False
    partitions: int = 6
    poll_interval_ms: int = 50
    batch_size_max: int = 5000
    retry_max_ms: int = 5000
    request_timeout_ms: int = 10_000
    excluded_books: tuple[str, ...] = ()
    """Books never published: the coordinator's journal holds participant credentials
    (branch headers) and is not a ledger book, so it stays out of Kafka."""


def relay_config(settings: Settings, bootstrap: str) -> RelayConfig:
    return RelayConfig(
        bootstrap=bootstrap,
        topic=settings.kafka_topic,
        idempotence=settings.kafka_idempotence,
        partitions=settings.kafka_partitions,
        poll_interval_ms=settings.relay_poll_interval_ms,
        batch_size_max=settings.relay_batch_size_max,
        excluded_books=(settings.coordinator_book_id,),
    )


@dataclass
class RelayStats:
    """Counters for logs and metrics."""

    published: int = 0
    batches: int = 0
    errors: int = 0
    last_error: str | None = None
    positions: dict[str, int] = field(default_factory=dict)


async def ensure_topic(bootstrap: str, topic: str, partitions: int) -> None:
    """Create ``topic`` with ``partitions`` partitions unless it exists."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    await admin.start()
    try:
        response = await admin.create_topics(
            [NewTopic(name=topic, num_partitions=partitions, replication_factor=1)]
        )
        for error in getattr(response, "topic_errors", ()):
            code = error[1]
            if code not in (0, TOPIC_ALREADY_EXISTS):
                raise KafkaError(f"cannot create topic {topic!r}: error code {code} {error[2:]}")
    finally:
        await admin.close()


def encode_message(book_id: str, row: Sequence[Any]) -> bytes:
    """The JSON value of one ``events`` row (``data`` is spliced in as stored)."""
    return orjson.dumps(
        {
            "book_id": book_id,
            "position": row[0],
            "event_id": row[1],
            "stream_id": row[2],
            "stream_version": row[3],
            "type": row[4],
            "schema_version": row[5],
            "recorded_at_us": row[7],
            "data": orjson.Fragment(row[6]),
            "prev_hash": row[8],
            "hash": row[9],
        }
    )


def decode_message(value: bytes) -> tuple[str, dict[str, Any]]:
    """``(book_id, envelope dict)`` of a message value."""
    envelope: dict[str, Any] = orjson.loads(value)
    return str(envelope.pop("book_id")), envelope


class Relay:
    """Tails ``events`` per book and publishes to Kafka; see the module docstring."""

    def __init__(self, database_url: str, config: RelayConfig) -> None:
        self._dsn = normalise_pg_url(database_url).replace("+psycopg", "", 1)
        self.config = config
        self.stats = RelayStats()
        self._producer: AIOKafkaProducer | None = None
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._topic_checked_at = 0.0

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Publish until ``stop`` is set (forever if None), surviving any outage."""
        stop = stop or asyncio.Event()
        failures = 0
        try:
            while not stop.is_set():
                try:
                    published = await self.publish_pending()
                    failures = 0
                except (KafkaError, OSError, TimeoutError, psycopg.OperationalError) as exc:
                    failures += 1
                    await self._on_error(exc)
                    await _wait(stop, _backoff_s(failures, self.config.retry_max_ms))
                    continue
                if not published:
                    await _wait(stop, self.config.poll_interval_ms / 1000)
        finally:
            await self.close()

    async def publish_pending(self) -> int:
        """One pass: publish what every book has after its checkpoint (a bounded chunk per
        book); store each checkpoint after the broker acknowledged. Returns the count."""
        conn = await self._connection()
        await self._check_topic()
        total = 0
        for book_id in await self._books(conn):
            checkpoint = await self._checkpoint(conn, book_id)
            rows = await self._read(conn, book_id, checkpoint + 1, 1 << 62)
            if not rows:
                continue
            await self._publish(book_id, rows)
            last = int(rows[-1][0])
            await conn.execute(
                "INSERT INTO relay_checkpoints (relay, book_id, position) VALUES (%s, %s, %s) "
                "ON CONFLICT (relay, book_id) DO UPDATE SET position = EXCLUDED.position, "
                "updated_at = now()",
                (self.config.name, book_id, last),
            )
            self.stats.positions[book_id] = last
            total += len(rows)
        return total

    async def publish_range(self, book_id: str, first: int, last: int) -> int:
        """Publish positions ``first..last`` again, leaving the checkpoint alone (an
        operator's re-send; consumers must not change anything)."""
        conn = await self._connection()
        await self._check_topic(force=True)
        sent = 0
        while first <= last:
            rows = await self._read(conn, book_id, first, last)
            if not rows:
                break
            await self._publish(book_id, rows)
            sent += len(rows)
            first = int(rows[-1][0]) + 1
        return sent

    async def close(self) -> None:
        if self._producer is not None:
            producer, self._producer = self._producer, None
            with contextlib.suppress(Exception):
                await producer.stop()
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(Exception):
                await conn.close()

    # -- internals ---------------------------------------------------------------------

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = await psycopg.AsyncConnection.connect(self._dsn, autocommit=True)
        return self._conn

    async def _books(self, conn: psycopg.AsyncConnection[Any]) -> list[str]:
        cur = await conn.execute(
            "SELECT book_id FROM writer_leases UNION "
            "SELECT book_id FROM relay_checkpoints WHERE relay = %s ORDER BY 1",
            (self.config.name,),
        )
        return [r[0] for r in await cur.fetchall() if r[0] not in self.config.excluded_books]

    async def _checkpoint(self, conn: psycopg.AsyncConnection[Any], book_id: str) -> int:
        cur = await conn.execute(
            "SELECT position FROM relay_checkpoints WHERE relay = %s AND book_id = %s",
            (self.config.name, book_id),
        )
        row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def _read(
        self, conn: psycopg.AsyncConnection[Any], book_id: str, first: int, last: int
    ) -> list[tuple[Any, ...]]:
        cur = await conn.execute(_SELECT, (book_id, first, last, self.config.batch_size_max))
        return await cur.fetchall()

    async def _publish(self, book_id: str, rows: Sequence[Sequence[Any]]) -> None:
        producer = await self._producer_started()
        key = book_id.encode()
        topic = self.config.topic
        futures = []
        for row in rows:
            headers = [("position", str(row[0]).encode()), ("type", str(row[4]).encode())]
            futures.append(
                await producer.send(topic, encode_message(book_id, row), key=key, headers=headers)
            )
        timeout_s = self.config.request_timeout_ms / 1000 + 5
        async with asyncio.timeout(timeout_s):
            await asyncio.gather(*futures)
        self.stats.published += len(rows)
        self.stats.batches += 1

    async def _producer_started(self) -> AIOKafkaProducer:
        if self._producer is None:
            producer = AIOKafkaProducer(
                bootstrap_servers=self.config.bootstrap,
                acks="all",
                enable_idempotence=self.config.idempotence,
                linger_ms=5,
                max_batch_size=1 << 20,
                request_timeout_ms=self.config.request_timeout_ms,
                metadata_max_age_ms=5000,
            )
            try:
                async with asyncio.timeout(self.config.request_timeout_ms / 1000):
                    await producer.start()
            except BaseException:
                with contextlib.suppress(Exception):
                    await producer.stop()
                raise
            self._producer = producer
        return self._producer

    async def _check_topic(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._topic_checked_at >= TOPIC_CHECK_INTERVAL_S:
            async with asyncio.timeout(self.config.request_timeout_ms / 1000):
                await ensure_topic(self.config.bootstrap, self.config.topic, self.config.partitions)
            self._topic_checked_at = now

    async def _on_error(self, exc: BaseException) -> None:
        self.stats.errors += 1
        self.stats.last_error = f"{type(exc).__name__}: {exc}"
        _log.warning("relay: %s; retrying from the checkpoint", self.stats.last_error)
        self._topic_checked_at = 0.0
        if self._producer is not None:
            producer, self._producer = self._producer, None
            with contextlib.suppress(Exception):
                await producer.stop()
        if isinstance(exc, psycopg.OperationalError) and self._conn is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(Exception):
                await conn.close()


def _backoff_s(failures: int, cap_ms: int) -> float:
    ceiling = min(cap_ms, RETRY_BASE_MS * 2 ** min(failures, 16))
    return _JITTER.uniform(ceiling / 2, ceiling) / 1000


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def run_relay(database_url: str, config: RelayConfig, stop: asyncio.Event) -> RelayStats:
    """Run a relay until ``stop`` is set; return its counters."""
    relay = Relay(database_url, config)
    await relay.run(stop)
    return relay.stats


def relay_command(args: Any) -> int:
    """``ledger relay``: publish until SIGINT/SIGTERM (exit 0), printing what it did."""
    import signal
    import sys

    from ledger.config import get_settings

    settings = get_settings()
    url = getattr(args, "database_url", None) or settings.database_url
    if not url:
        print(
            "ledger relay: no database: set LEDGER_DATABASE_URL or --database-url", file=sys.stderr
        )
        return 2
    if not settings.kafka_bootstrap:
        print("ledger relay: no broker: set LEDGER_KAFKA_BOOTSTRAP", file=sys.stderr)
        return 2
    config = relay_config(settings, settings.kafka_bootstrap)
    relay = Relay(url, config)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await relay.run(stop)

    print(f"relaying events to topic {config.topic!r} at {config.bootstrap}", flush=True)
    asyncio.run(main())
    print(f"stopped: {relay.stats.published} events published, {relay.stats.errors} errors")
    return 0
