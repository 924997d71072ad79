"""SQLAlchemy Core definitions of every table; the migrations and the adapters share them.

``events`` is append-only: a trigger (created by the first migration) raises on UPDATE,
DELETE and TRUNCATE, so neither the application nor a careless operator can rewrite
history through the application role. Positions are assigned by the book's single writer
and are gap-free per book; ``event_id`` is globally unique and ``(book_id, stream_id,
stream_version)`` is unique as a safety net for the single-writer rule.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.dialects.postgresql import JSON, JSONB, UUID

__all__ = [
    "api_keys",
    "events",
    "idempotency_keys",
    "metadata",
    "projection_checkpoints",
    "relay_checkpoints",
    "snapshots",
    "writer_leases",
]

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    }
)

events = Table(
    "events",
    metadata,
    Column("book_id", String(64), nullable=False),
    Column("position", BigInteger, nullable=False),
    Column("event_id", UUID(as_uuid=True), nullable=False),
    Column("stream_id", String(200), nullable=False),
    Column("stream_version", BigInteger, nullable=False),
    Column("type", String(100), nullable=False),
    Column("schema_version", Integer, nullable=False),
    # json, not jsonb: kept as the exact bytes that were hashed (migration 0004)
    Column("data", JSON, nullable=False),
    Column("recorded_at_us", BigInteger, nullable=False),
    Column("prev_hash", LargeBinary(32), nullable=False),
    Column("hash", LargeBinary(32), nullable=False),
    Column("committed_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("book_id", "position"),
    UniqueConstraint("event_id"),
    UniqueConstraint("book_id", "stream_id", "stream_version"),
)

writer_leases = Table(
    "writer_leases",
    metadata,
    Column("book_id", String(64), primary_key=True),
    Column("epoch", BigInteger, nullable=False),
    Column("holder", Text, nullable=False),
    Column("acquired_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

snapshots = Table(
    "snapshots",
    metadata,
    Column("book_id", String(64), nullable=False),
    Column("stream_id", String(200), nullable=False),
    Column("stream_version", BigInteger, nullable=False),
    Column("position", BigInteger, nullable=False),
    Column("data", JSONB, nullable=False),
    Column("taken_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("book_id", "stream_id"),
)

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("book_id", String(64), nullable=False),
    Column("key", String(200), nullable=False),
    Column("request_sha256", LargeBinary(32), nullable=False),
    Column("status_code", Integer, nullable=False),
    Column("response", JSONB, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("book_id", "key"),
)

relay_checkpoints = Table(
    "relay_checkpoints",
    metadata,
    Column("relay", String(100), nullable=False),
    Column("book_id", String(64), nullable=False),
    Column("position", BigInteger, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("relay", "book_id"),
)

projection_checkpoints = Table(
    "projection_checkpoints",
    metadata,
    Column("projection", String(100), nullable=False),
    Column("book_id", String(64), nullable=False),
    Column("position", BigInteger, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("projection", "book_id"),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("key_id", String(32), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("secret_sha256", LargeBinary(32), nullable=False),
    Column("scopes", String(100), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
)
