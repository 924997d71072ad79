"""Faults on real PostgreSQL and the local broker: workers killed or stopped, a broker
that restarts empty, a relay that publishes a range twice. After each, the read models
must equal the domain state exactly."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

import psycopg
import pytest
from aiokafka.errors import KafkaError

from ledger.devservices import KafkaService, free_port, start_tansu
from ledger.relay import Relay, RelayConfig
from projections import all_projections
from projections.tracking import AppliedBatch, dsn
from projections.worker import ProjectionWorker
from projections.workload import SyntheticBook, store_records
from tests.integration.projections.conftest import (
    checkpoints,
    read_model_problems,
    table_contents,
)
from tests.integration.projections.test_pipeline import (
    caught_up,
    kafka_names,
    wait_until,
    worker_config,
)

BOOKS = ("book-3", "book-0", "book-1")  # keys that land on partitions 0, 1 and 2 of 3


def relay_for(url: str, bootstrap: str, topic: str) -> Relay:
    return Relay(
        url,
        RelayConfig(
            bootstrap=bootstrap,
            topic=topic,
            partitions=3,
            poll_interval_ms=20,
            batch_size_max=500,
            retry_max_ms=500,
            request_timeout_ms=3000,
        ),
    )


async def publish_all(relay: Relay) -> None:
    """Publish everything stored so far, then close the relay."""
    try:
        while await relay.publish_pending():
            pass
    finally:
        await relay.close()


def assert_exact(url: str, books: dict[str, SyntheticBook]) -> None:
    for book_id, book in books.items():
        assert read_model_problems(url, book_id, book.state) == [], book_id


class Crash(BaseException):
    """Raised inside a batch to stop a worker between two projections' transactions."""


def test_a_worker_that_dies_between_projections_is_exact_after_restart(
    database_url: str, kafka: KafkaService
) -> None:
    topic, group = kafka_names()
    book = SyntheticBook(seed=31)
    store_records(database_url, "book-0", list(book.batches(6, 300)))
    seen: list[AppliedBatch] = []

    def crash_on_the_fifth(result: AppliedBatch) -> None:
        seen.append(result)
        if len(seen) == 5:  # the second batch: one projection committed, three not
            raise Crash

    async def scenario() -> None:
        relay = relay_for(database_url, kafka.bootstrap, topic)
        await publish_all(relay)
        config = worker_config(kafka.bootstrap, topic, group, batch_size_max=300)
        first = ProjectionWorker(
            database_url,
            all_projections(),
            replace(config, parallel=False),
            on_batch=crash_on_the_fifth,
        )
        with pytest.raises(Crash):
            await first.run()
        positions = checkpoints(database_url)
        assert len(set(positions.values())) == 2, positions  # projections disagree now
        second = ProjectionWorker(database_url, all_projections(), config)
        stop = asyncio.Event()
        task = asyncio.create_task(second.run(stop))
        try:
            await wait_until(caught_up(database_url, book.position, "book-0"))
        finally:
            stop.set()
            await task
        assert second.stats.skipped > 0  # the redelivered batch, already partly applied
        assert second.stats.backfilled == 0

    asyncio.run(scenario())
    assert_exact(database_url, {"book-0": book})


def test_a_worker_killed_mid_batch_is_exact_after_restart(
    database_url: str, kafka: KafkaService
) -> None:
    """SIGKILL a ``ledger project`` process while it applies; a new member of the same
    group takes over once the dead one's session expires (about 6-11 s, once)."""
    topic, group = kafka_names()
    book = SyntheticBook(seed=32)
    store_records(database_url, "book-0", list(book.batches(20, 1000)))
    asyncio.run(publish_all(relay_for(database_url, kafka.bootstrap, topic)))
    env = {
        **os.environ,
        "LEDGER_DATABASE_URL": database_url,
        "LEDGER_KAFKA_BOOTSTRAP": kafka.bootstrap,
        "LEDGER_KAFKA_TOPIC": topic,
        "LEDGER_KAFKA_PARTITIONS": "3",
        "LEDGER_PROJECTION_GROUP": group,
        "LEDGER_PROJECTION_BATCH_SIZE_MAX": "500",
        "LEDGER_PROJECTION_SESSION_TIMEOUT_MS": "6000",
        "LEDGER_PROJECTION_CATCHUP_INTERVAL_MS": "600000",
    }
    child = subprocess.Popen(
        [sys.executable, "-m", "ledger.cli", "project"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            done = checkpoints(database_url)
            if done and max(done.values()) >= 3000:
                break
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
    partial = checkpoints(database_url)
    assert partial and min(partial.values()) < book.position, partial

    async def restart() -> ProjectionWorker:
        worker = ProjectionWorker(
            database_url,
            all_projections(),
            worker_config(
                kafka.bootstrap, topic, f"{group}.balances+entries+transfers+trial_balance"
            ),
        )
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        try:
            await wait_until(caught_up(database_url, book.position, "book-0"), timeout_s=60)
        finally:
            stop.set()
            await task
        return worker

    worker = asyncio.run(restart())
    assert worker.stats.messages > 0 and worker.stats.backfilled == 0
    assert_exact(database_url, {"book-0": book})


def test_two_workers_in_one_group_and_one_stops_the_other_takes_over(
    database_url: str, kafka: KafkaService
) -> None:
    topic, group = kafka_names()
    books = {b: SyntheticBook(seed=40 + i) for i, b in enumerate(BOOKS)}
    for book_id, book in books.items():
        store_records(database_url, book_id, list(book.batches(2, 200)))

    async def scenario() -> None:
        relay = relay_for(database_url, kafka.bootstrap, topic)
        config = worker_config(kafka.bootstrap, topic, group, batch_size_max=100)
        a = ProjectionWorker(database_url, all_projections(), config)
        b = ProjectionWorker(database_url, all_projections(), config)
        stop_all, stop_a = asyncio.Event(), asyncio.Event()
        tasks = [
            asyncio.create_task(relay.run(stop_all)),
            asyncio.create_task(a.run(stop_a)),
            asyncio.create_task(b.run(stop_all)),
        ]
        try:
            await wait_until(lambda: _both_busy(a, b), timeout_s=30)
            stop_a.set()
            await tasks[1]
            b_before = b.stats.messages
            for book_id, book in books.items():
                await asyncio.to_thread(
                    store_records, database_url, book_id, list(book.batches(2, 200))
                )
            for book_id, book in books.items():
                await wait_until(caught_up(database_url, book.position, book_id))
            assert b.stats.messages > b_before
        finally:
            stop_a.set()
            stop_all.set()
            await asyncio.gather(*tasks)

    asyncio.run(scenario())
    assert_exact(database_url, books)


async def _both_busy(a: ProjectionWorker, b: ProjectionWorker) -> bool:
    return a.stats.messages > 0 and b.stats.messages > 0


def test_a_broker_that_restarts_empty_converges_by_backfill(database_url: str) -> None:
    """Messages the relay had published (and checkpointed) but no worker had read yet
    die with the broker; events keep flowing; the workers fill the hole from the store."""
    port = free_port()
    broker = start_tansu(port)
    topic, group = kafka_names()
    book = SyntheticBook(seed=50)

    async def scenario() -> ProjectionWorker:
        nonlocal broker
        relay = relay_for(database_url, broker.bootstrap, topic)
        config = worker_config(broker.bootstrap, topic, group)
        first = ProjectionWorker(database_url, all_projections(), config)
        stop, stop_first = asyncio.Event(), asyncio.Event()
        tasks = [asyncio.create_task(relay.run(stop)), asyncio.create_task(first.run(stop_first))]
        second = ProjectionWorker(database_url, all_projections(), config)
        try:
            await store(book, 3)
            await wait_until(caught_up(database_url, book.position, "book-0"))
            stop_first.set()
            await tasks[1]
            await store(book, 3)

            async def relayed() -> bool:
                return relay.stats.positions.get("book-0") == book.position

            await wait_until(relayed)  # acknowledged by the broker, read by nobody
            await asyncio.to_thread(broker.close)
            broker = await asyncio.to_thread(start_tansu, port)
            tasks.append(asyncio.create_task(second.run(stop)))
            for _ in range(12):  # events keep flowing while the topic comes back
                await store(book, 1, 50)
                await asyncio.sleep(0.5)
            await wait_until(caught_up(database_url, book.position, "book-0"), timeout_s=60)
        finally:
            stop_first.set()
            stop.set()
            await asyncio.gather(*tasks)
        return second

    async def store(book: SyntheticBook, batches: int, size: int = 200) -> None:
        await asyncio.to_thread(
            store_records, database_url, "book-0", list(book.batches(batches, size))
        )

    try:
        worker = asyncio.run(scenario())
    finally:
        broker.close()
    assert worker.stats.backfilled >= 600  # what the broker lost came from the store
    assert_exact(database_url, {"book-0": book})


def test_a_range_published_twice_changes_nothing(database_url: str, kafka: KafkaService) -> None:
    topic, group = kafka_names()
    book = SyntheticBook(seed=60)
    store_records(database_url, "book-0", list(book.batches(3, 300)))

    async def scenario() -> None:
        relay = relay_for(database_url, kafka.bootstrap, topic)
        worker = ProjectionWorker(
            database_url, all_projections(), worker_config(kafka.bootstrap, topic, group)
        )
        stop = asyncio.Event()
        tasks = [asyncio.create_task(relay.run(stop)), asyncio.create_task(worker.run(stop))]
        try:
            await wait_until(caught_up(database_url, book.position, "book-0"))
            before = await asyncio.to_thread(table_contents, database_url)
            positions = await asyncio.to_thread(checkpoints, database_url)
            seen = worker.stats.messages
            assert await relay.publish_range("book-0", 1, book.position) == book.position

            async def redelivered() -> bool:
                return worker.stats.messages >= seen + book.position

            await wait_until(redelivered)
            assert await asyncio.to_thread(table_contents, database_url) == before
            assert await asyncio.to_thread(checkpoints, database_url) == positions
            assert worker.stats.skipped >= 4 * book.position
        finally:
            stop.set()
            await asyncio.gather(*tasks)

    asyncio.run(scenario())
    assert_exact(database_url, {"book-0": book})


def test_an_idle_worker_catches_up_from_the_store_without_any_message(
    database_url: str, kafka: KafkaService
) -> None:
    """No relay runs at all: the broker never sees these events, and the worker still
    converges (a broker that lost the last messages of a book reveals no gap)."""
    topic, group = kafka_names()
    book = SyntheticBook(seed=80)
    store_records(database_url, "book-0", list(book.batches(2, 300)))

    async def scenario() -> ProjectionWorker:
        worker = ProjectionWorker(
            database_url,
            all_projections(),
            worker_config(kafka.bootstrap, topic, group, catchup_interval_ms=300),
        )
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        try:
            await wait_until(caught_up(database_url, book.position, "book-0"))
        finally:
            stop.set()
            await task
        return worker

    worker = asyncio.run(scenario())
    assert worker.stats.messages == 0
    assert worker.stats.backfilled == 4 * book.position
    assert_exact(database_url, {"book-0": book})


def test_the_relay_keeps_its_checkpoint_until_the_broker_acknowledges(
    database_url: str, kafka: KafkaService
) -> None:
    topic, _ = kafka_names()
    book = SyntheticBook(seed=81)
    store_records(database_url, "book-0", list(book.batches(1, 100)))
    unreachable = f"127.0.0.1:{free_port()}"

    async def scenario() -> None:
        dead = relay_for(database_url, unreachable, topic)
        try:
            with pytest.raises((KafkaError, OSError, TimeoutError)):
                await dead.publish_pending()
        finally:
            await dead.close()
        assert await relay_checkpoint(database_url) is None
        await publish_all(relay_for(database_url, kafka.bootstrap, topic))
        assert await relay_checkpoint(database_url) == book.position

    asyncio.run(scenario())


async def relay_checkpoint(database_url: str) -> int | None:
    def read() -> int | None:
        with psycopg.connect(dsn(database_url)) as conn:
            row = conn.execute(
                "SELECT position FROM relay_checkpoints WHERE book_id = 'book-0'"
            ).fetchone()
        return None if row is None else int(row[0])

    return await asyncio.to_thread(read)
