"""End to end on real PostgreSQL and the local broker: node -> relay -> workers."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from ledger import domain
from ledger.adapters.postgres import PostgresEventStore
from ledger.adapters.wal import open_wal
from ledger.application.node import LedgerNode, NodeConfig
from ledger.application.recorder import Recorder
from ledger.devservices import KafkaService
from ledger.relay import Relay, RelayConfig
from projections import all_projections
from projections.worker import ProjectionWorker, WorkerConfig
from tests.integration.projections.conftest import (
    checkpoints,
    read_model_problems,
    replayed_state,
)

BOOK = "e2e"


async def open_node(url: str, wal_dir: Path, book: str = BOOK) -> LedgerNode:
    wal, _ = open_wal(wal_dir, 1 << 20)
    return await LedgerNode.open(
        Recorder(wal, PostgresEventStore(url, book), retry_max_ms=100),
        NodeConfig(snapshot_every_events=200),
    )


async def drive(node: LedgerNode, accounts: list[uuid.UUID], rounds: int, seed: int) -> None:
    """Plain transfers, holds, posts (in part) and voids, some of them rejected."""
    rng = random.Random(seed)
    holds: list[tuple[uuid.UUID, int]] = []
    for _ in range(rounds):
        commands: list[domain.Command] = []
        for _ in range(rng.randint(1, 20)):
            roll = rng.random()
            if holds and roll < 0.2:
                hold, amount = holds.pop()
                flags = (
                    domain.TransferFlags(post_pending_transfer=True)
                    if roll < 0.1
                    else domain.TransferFlags(void_pending_transfer=True)
                )
                commands.append(
                    domain.CreateTransfer(
                        id=uuid.uuid4(),
                        pending_id=hold,
                        amount_minor=rng.randint(1, amount) if roll < 0.1 else 0,
                        flags=flags,
                    )
                )
                continue
            debit, credit = rng.sample(accounts, 2)
            amount = rng.randint(1, 500)
            transfer = domain.CreateTransfer(
                id=uuid.uuid4(),
                debit_account_id=debit,
                credit_account_id=credit,
                amount_minor=amount,
                ledger="EUR",
                code=1,
                flags=domain.TransferFlags(pending=roll > 0.8),
            )
            if roll > 0.8:
                holds.append((transfer.id, amount))
            commands.append(transfer)
        await node.submit(commands)


async def open_accounts(node: LedgerNode, n: int = 6) -> list[uuid.UUID]:
    ids = [uuid.uuid4() for _ in range(n)]
    outcomes = await node.submit([domain.OpenAccount(id=i, ledger="EUR", code=1) for i in ids])
    assert all(o.status == "created" for o in outcomes)
    return ids


async def wait_until(predicate: Callable[[], Awaitable[bool]], timeout_s: float = 30) -> None:
    async with asyncio.timeout(timeout_s):
        while True:
            if await predicate():
                return
            await asyncio.sleep(0.05)


def caught_up(database_url: str, head: int, book: str = BOOK) -> Callable[[], Awaitable[bool]]:
    names = [p.name for p in all_projections()]

    async def check() -> bool:
        got = await asyncio.to_thread(checkpoints, database_url)
        return all(got.get((n, book), 0) >= head for n in names)

    return check


async def assert_matches_node(
    database_url: str, node: LedgerNode, accounts: list[uuid.UUID], book: str = BOOK
) -> None:
    """Balances and trial balance equal the node's accounts; every read model equals the
    domain replay of the event store."""
    state = domain.BookState()
    for account_id in accounts:
        account = await node.read_account(account_id)
        assert account is not None
        state.accounts[account_id] = account
    problems = await asyncio.to_thread(read_model_problems, database_url, book, state)
    assert [p for p in problems if "transfer" not in p] == []
    replayed = await asyncio.to_thread(replayed_state, database_url, book)
    assert await asyncio.to_thread(read_model_problems, database_url, book, replayed) == []


def kafka_names() -> tuple[str, str]:
    return f"t-{uuid.uuid4().hex[:10]}", f"g-{uuid.uuid4().hex[:10]}"


def worker_config(bootstrap: str, topic: str, group: str, **kw: Any) -> WorkerConfig:
    """Fast group joins; no idle catch-up unless asked (events must come via Kafka)."""
    base = WorkerConfig(
        bootstrap=bootstrap,
        topic=topic,
        group_id=group,
        partitions=3,
        session_timeout_ms=2000,
        heartbeat_interval_ms=200,
        catchup_interval_ms=60_000,
        batch_size_max=200,
    )
    return replace(base, **kw)


def test_transfers_through_node_relay_and_workers_match_the_node(
    database_url: str, kafka: KafkaService, tmp_path: Path
) -> None:
    topic, group = kafka_names()

    async def scenario() -> None:
        node = await open_node(database_url, tmp_path / "wal")
        relay = Relay(
            database_url,
            RelayConfig(bootstrap=kafka.bootstrap, topic=topic, partitions=3, poll_interval_ms=20),
        )
        worker = ProjectionWorker(
            database_url, all_projections(), worker_config(kafka.bootstrap, topic, group)
        )
        stop = asyncio.Event()
        tasks = [asyncio.create_task(relay.run(stop)), asyncio.create_task(worker.run(stop))]
        try:
            accounts = await open_accounts(node)
            await drive(node, accounts, rounds=40, seed=1)
            await wait_until(caught_up(database_url, node.position))
            await assert_matches_node(database_url, node, accounts)
            assert worker.stats.messages >= node.position
            assert worker.stats.backfilled == 0
            assert relay.stats.published == node.position
        finally:
            stop.set()
            await asyncio.gather(*tasks)
            await node.close()

    asyncio.run(scenario())
