"""The node's stream filter against real PostgreSQL: built from the store at start (in
pages), exact for every id the book has used, after restarts and after recovery re-inserts
a batch that PostgreSQL never committed."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest

from ledger import domain
from ledger.adapters.postgres import PostgresEventStore
from ledger.adapters.wal import open_wal
from ledger.application import cache as cache_module
from ledger.application.node import LedgerNode, NodeConfig
from ledger.application.recorder import Recorder
from ledger.application.records import PendingRecord, chain_records

BOOK = "filter"
Rejection = domain.RejectionCode


async def open_node(url: str, wal_dir: Path) -> LedgerNode:
    wal, _ = open_wal(wal_dir, 1 << 20)
    return await LedgerNode.open(
        Recorder(wal, PostgresEventStore(url, BOOK), retry_max_ms=100),
        NodeConfig(snapshot_every_events=40),
        expire_pending=False,
    )


def numbered(n: int) -> uuid.UUID:
    """Ids as a client that numbers them would send."""
    return uuid.UUID(f"00000000-0000-4000-8000-{n:012d}")


def stored_streams(url: str) -> int:
    with psycopg.connect(url.replace("+psycopg", "")) as conn:
        row = conn.execute(
            "SELECT count(*) FROM events WHERE book_id = %s AND stream_version = 1", (BOOK,)
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_used_ids_are_known_after_restarts_and_recovery(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cache_module, "STREAM_PAGE_ROWS", 7)  # many pages

    async def scenario() -> None:
        wal_dir = tmp_path / "wal"
        node = await open_node(database_url, wal_dir)
        accounts = [domain.OpenAccount(id=numbered(i), ledger="USD", code=1) for i in range(4)]
        await node.submit(accounts)
        a, b = accounts[0].id, accounts[1].id
        plain = [
            domain.CreateTransfer(
                id=numbered(100 + i),
                debit_account_id=a,
                credit_account_id=b,
                amount_minor=i + 1,
                ledger="USD",
                code=1,
            )
            for i in range(60)
        ]
        hold = replace(plain[0], id=numbered(500), flags=domain.TransferFlags(pending=True))
        for i in range(0, 60, 20):
            assert {o.status for o in await node.submit(plain[i : i + 20])} == {"created"}
        post = domain.CreateTransfer(
            id=numbered(501),
            pending_id=hold.id,
            flags=domain.TransferFlags(post_pending_transfer=True),
        )
        cancel = domain.CancelPendingTransfer(id=numbered(502), pending_id=numbered(503))
        outcomes = await node.submit([hold, post, cancel])
        assert [o.status for o in outcomes] == ["created"] * 3
        await node.close()

        again = await open_node(database_url, wal_dir)
        streams = again.cache.streams
        assert streams is not None and streams.count == stored_streams(database_url) == 67
        looked_up = again.cache.looked_up
        fresh = [replace(plain[0], id=numbered(1000 + i)) for i in range(50)]
        assert {o.status for o in await again.submit(fresh)} == {"created"}
        assert again.cache.looked_up - looked_up <= 2  # the two accounts, not the new ids
        resent: list[domain.Command] = [*accounts, *plain, hold, post]
        for command in resent:
            [outcome] = await again.submit([command])
            assert outcome.status == "exists", (command, outcome)
        for command in (accounts[2], plain[7], hold, post):
            [outcome] = await again.submit([replace(command, code=9)])
            assert outcome.code == Rejection.id_already_used_with_different_fields, outcome
        [late] = await again.submit([replace(plain[0], id=numbered(503))])
        assert late.code == Rejection.id_already_cancelled
        # A batch decided but never committed to PostgreSQL (the crash between the WAL
        # fsync and the commit), made here on a copy of the node's state.
        lost = replace(plain[0], id=numbered(2000), amount_minor=77)
        state = again.state.copy()
        await again.close()
        [decided] = domain.decide_batch(state, [lost], 1_700_000_000_000_000)
        wal, _ = open_wal(wal_dir, 1 << 20)
        pending = [
            PendingRecord(
                uuid.uuid4(),
                event.stream_id,
                event.stream_version,
                event.type,
                event.schema_version,
                1_700_000_000_000_000,
                domain.event_to_data(event),
            )
            for event in decided.events
        ]
        wal.append_batch(chain_records(pending, wal.last_position + 1, wal.last_hash))
        wal.close()

        third = await open_node(database_url, wal_dir)
        assert third.recovery is not None and third.recovery.reinserted == 1
        for command in (lost, fresh[0], plain[59]):
            [outcome] = await third.submit([command])
            assert outcome.status == "exists", (command, outcome)
        [changed] = await third.submit([replace(lost, amount_minor=78)])
        assert changed.code == Rejection.id_already_used_with_different_fields
        await third.close()

    asyncio.run(scenario())
