"""Events that are not the ledger's (the coordinator's journal) pass through projections."""

from __future__ import annotations

import uuid

import psycopg

from ledger.application.records import GENESIS_HASH, PendingRecord, chain_records
from projections import get_projections
from projections.tracking import apply_records, read_checkpoint


def test_foreign_events_advance_the_checkpoint_and_change_no_read_model(
    database_url: str,
) -> None:
    pending = [
        PendingRecord(uuid.uuid4(), "tcc-g1", 1, "TransactionStarted", 1, 1, {"gid": "g1"}),
        PendingRecord(uuid.uuid4(), "tcc-g1", 2, "TransactionFinished", 1, 2, {"gid": "g1"}),
    ]
    records = chain_records(pending, 1, GENESIS_HASH)
    with psycopg.connect(database_url.replace("+psycopg", "")) as conn:
        for projection in get_projections():
            apply_records(conn, projection, "coordinator", records)
            assert read_checkpoint(conn, projection.name, "coordinator") == 2
        rows = conn.execute("SELECT count(*) FROM account_balances").fetchone()
    assert rows == (0,)


def test_the_relay_never_publishes_the_coordinators_journal(database_url: str) -> None:
    """The coordinator's book holds participant credentials: it must stay out of Kafka."""
    import asyncio

    from ledger.config import load_settings
    from ledger.relay import Relay, relay_config

    with psycopg.connect(database_url.replace("+psycopg", "")) as conn:
        for book in ("main", "coordinator"):
            conn.execute(
                "INSERT INTO writer_leases (book_id, epoch, holder) VALUES (%s, 1, 'x')", (book,)
            )
        conn.commit()

    async def books() -> list[str]:
        relay = Relay(database_url, relay_config(load_settings(), "127.0.0.1:9"))
        try:
            return await relay._books(await relay._connection())
        finally:
            await relay.close()

    assert asyncio.run(books()) == ["main"]
