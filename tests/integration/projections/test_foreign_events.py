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
