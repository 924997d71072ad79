"""The suite runs against real servers: prove it, and prove the schema rules hold."""

from __future__ import annotations

import asyncio
import uuid

import psycopg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from sqlalchemy import create_engine, inspect

from ledger.adapters.migrate import downgrade, upgrade
from ledger.devservices import KafkaService, PostgresService, kafka_api_versions_ok


def _dsn(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def test_postgres_is_a_real_server(pg_server: PostgresService) -> None:
    with psycopg.connect(_dsn(pg_server.url)) as conn:
        row = conn.execute("SHOW server_version").fetchone()
        assert row is not None
        major = int(str(row[0]).split(".")[0])
    assert major >= 13


def test_kafka_broker_answers_api_versions(kafka: KafkaService) -> None:
    host, port = kafka.bootstrap.rsplit(":", 1)
    assert kafka_api_versions_ok(host, int(port))


def test_kafka_round_trip_through_a_consumer_group(kafka: KafkaService) -> None:
    topic = f"t-{uuid.uuid4().hex[:8]}"
    group = f"g-{uuid.uuid4().hex[:8]}"
    sent = [f"message-{i}".encode() for i in range(20)]

    async def scenario() -> list[bytes]:
        producer = AIOKafkaProducer(
            bootstrap_servers=kafka.bootstrap, acks="all", enable_idempotence=False
        )
        await producer.start()
        try:
            for value in sent:
                await producer.send_and_wait(topic, value, key=b"book-1")
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=kafka.bootstrap,
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_uncommitted",
            session_timeout_ms=6000,
            heartbeat_interval_ms=200,
        )
        await consumer.start()
        got: list[bytes] = []
        try:
            async with asyncio.timeout(30):
                while len(got) < len(sent):
                    batch = await consumer.getmany(timeout_ms=500, max_records=100)
                    for records in batch.values():
                        got.extend(r.value for r in records if r.value is not None)
            await consumer.commit()
            committed = [await consumer.committed(tp) for tp in consumer.assignment()]
            assert sum(c or 0 for c in committed) == len(sent)
        finally:
            await consumer.stop()
        return got

    assert asyncio.run(scenario()) == sent


def test_migrations_upgrade_downgrade_upgrade(empty_database_url: str) -> None:
    upgrade(empty_database_url)
    downgrade(empty_database_url, "base")
    engine = create_engine(empty_database_url)
    try:
        assert "events" not in inspect(engine).get_table_names()
        upgrade(empty_database_url)
        names = set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert {
        "events",
        "writer_leases",
        "snapshots",
        "idempotency_keys",
        "relay_checkpoints",
        "projection_checkpoints",
    } <= names


INSERT_EVENT = """
INSERT INTO events (book_id, position, event_id, stream_id, stream_version, type,
                    schema_version, data, recorded_at_us, prev_hash, hash)
VALUES ('b', 1, %s, 's', 1, 'T', 1, '{}', 0, %s, %s)
"""


@pytest.mark.parametrize(
    "statement",
    ["UPDATE events SET type = 'X'", "DELETE FROM events", "TRUNCATE events"],
)
def test_events_table_refuses_rewrites(database_url: str, statement: str) -> None:
    with psycopg.connect(_dsn(database_url)) as conn:
        conn.execute(INSERT_EVENT, (uuid.uuid4(), bytes(32), bytes(32)))
        conn.commit()
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
            conn.execute(statement)
        conn.rollback()
        row = conn.execute("SELECT count(*), min(type) FROM events").fetchone()
    assert row == (1, "T")


def test_migrations_match_the_code_tables(empty_database_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    import projections.tables  # noqa: F401  (adds the read-model tables to the metadata)
    from ledger.adapters.tables import metadata

    upgrade(empty_database_url)
    engine = create_engine(empty_database_url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), metadata)
    finally:
        engine.dispose()
    assert diff == []
