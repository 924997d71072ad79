"""The node against real PostgreSQL: connection loss under load, one writer per book."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from pathlib import Path

import psycopg
import pytest

from ledger import domain
from ledger.adapters.postgres import PostgresEventStore
from ledger.adapters.wal import open_wal
from ledger.application.errors import LeaseHeld, NodeStopped
from ledger.application.node import LedgerNode, NodeConfig
from ledger.application.recorder import Recorder


async def open_node(url: str, wal_dir: Path, book: str = "pg") -> LedgerNode:
    wal, _ = open_wal(wal_dir, 1 << 20)
    return await LedgerNode.open(
        Recorder(wal, PostgresEventStore(url, book), retry_max_ms=100),
        NodeConfig(snapshot_every_events=50),
    )


def dsn(url: str) -> str:
    return url.replace("+psycopg", "")


def terminate_other_backends(url: str) -> int:
    with psycopg.connect(dsn(url), autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()
    return int(row[0]) if row else 0


def test_connections_killed_under_load_lose_nothing(database_url: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        node = await open_node(database_url, tmp_path / "wal")
        a, b = (domain.OpenAccount(id=uuid.uuid4(), ledger="EUR", code=1) for _ in range(2))
        await node.submit([a, b])
        killed: list[int] = []
        stop = threading.Event()

        def killer() -> None:
            while not stop.is_set() and len(killed) < 5:
                time.sleep(0.15)
                killed.append(terminate_other_backends(database_url))

        acked: list[uuid.UUID] = []

        async def submitter() -> None:
            for _ in range(40):
                t = domain.CreateTransfer(
                    id=uuid.uuid4(),
                    debit_account_id=a.id,
                    credit_account_id=b.id,
                    amount_minor=3,
                    ledger="EUR",
                    code=1,
                )
                [outcome] = await node.submit([t])
                assert outcome.status == "created"
                acked.append(t.id)
                await asyncio.sleep(0.005)

        thread = threading.Thread(target=killer)
        thread.start()
        try:
            await asyncio.gather(*(submitter() for _ in range(8)))
        finally:
            stop.set()
            thread.join()
        assert sum(killed) > 0, "no connection was terminated: the test proved nothing"
        assert node.ready
        with psycopg.connect(dsn(database_url)) as conn:
            stored = {
                r[0]
                for r in conn.execute(
                    "SELECT stream_id FROM events WHERE type = 'TransferCreated'"
                ).fetchall()
            }
        assert {f"transfer-{i}" for i in acked} <= stored and len(stored) == len(acked)
        account = await node.read_account(b.id)
        assert account is not None and account.credits_posted == 3 * len(acked)
        await node.close()

    asyncio.run(scenario())


def test_second_node_for_a_book_fails_with_a_clear_message(
    database_url: str, tmp_path: Path
) -> None:
    async def scenario() -> None:
        first = await open_node(database_url, tmp_path / "a")
        with pytest.raises(LeaseHeld, match=r"book 'pg' is already being written by .*epoch 1"):
            await open_node(database_url, tmp_path / "b")
        await first.close()
        second = await open_node(database_url, tmp_path / "b")
        assert second.recorder.epoch == 2
        await second.close()

    asyncio.run(scenario())


def test_deposed_writer_cannot_commit(database_url: str, tmp_path: Path) -> None:
    """The first node loses its lock connection; a second node takes the book over. The
    first node's next batch fails the epoch check: it stops and acknowledges nothing."""

    async def scenario() -> None:
        first = await open_node(database_url, tmp_path / "a")
        opened = domain.OpenAccount(id=uuid.uuid4(), ledger="EUR", code=1)
        await first.submit([opened])
        terminate_other_backends(database_url)  # drops the advisory lock with the session
        second = await open_node(database_url, tmp_path / "b")
        late = domain.OpenAccount(id=uuid.uuid4(), ledger="EUR", code=1)
        with pytest.raises(NodeStopped, match=r"LeaseLost|epoch"):
            await first.submit([late])
        assert not first.ready
        assert await second.read_account(late.id) is None
        assert await second.read_account(opened.id) is not None
        await second.close()
        await first.close()

    asyncio.run(scenario())
