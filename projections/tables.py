"""SQLAlchemy Core definitions of the read-model tables (migration ``0003``).

They live on the same :data:`ledger.adapters.tables.metadata` as the event store's tables,
so the migration check compares them too; ``migrations/env.py`` imports this module.

Why the names are spelled out: ``ledger projections rebuild`` builds a shadow copy of a
read model's tables (``<table>__rebuild``) and renames it into place, indexes included.
Every index and key therefore carries its table's name (``pk_<table>``,
``ix_<table>_<suffix>``), so :func:`shadow_names` can map one set of names onto the other.

Amounts are ``bigint`` (the domain caps every balance at ``2**63 - 1``); the trial
balance adds up many accounts, so its sums are ``numeric(40, 0)``.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Index,
    Integer,
    Numeric,
    PrimaryKeyConstraint,
    String,
    Table,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID

from ledger.adapters.tables import metadata

__all__ = [
    "READ_MODEL_TABLES",
    "SHADOW_SUFFIX",
    "account_balances",
    "account_entries",
    "shadow_names",
    "transfers",
    "trial_balances",
]

SHADOW_SUFFIX = "__rebuild"

account_balances = Table(
    "account_balances",
    metadata,
    Column("book_id", String(64), nullable=False),
    Column("account_id", UUID(as_uuid=True), nullable=False),
    Column("ledger", String(12), nullable=False),
    Column("code", Integer, nullable=False),
    Column("debits_pending", BigInteger, nullable=False),
    Column("debits_posted", BigInteger, nullable=False),
    Column("credits_pending", BigInteger, nullable=False),
    Column("credits_posted", BigInteger, nullable=False),
    Column("closed", Boolean, nullable=False),
    Column("opened_at_us", BigInteger, nullable=False),
    Column("position", BigInteger, nullable=False),
    PrimaryKeyConstraint("book_id", "account_id", name="pk_account_balances"),
)

account_entries = Table(
    "account_entries",
    metadata,
    Column("book_id", String(64), nullable=False),
    Column("account_id", UUID(as_uuid=True), nullable=False),
    Column("position", BigInteger, nullable=False),
    Column("transfer_id", UUID(as_uuid=True), nullable=False),
    Column("pending_id", UUID(as_uuid=True), nullable=True),
    Column("type", String(40), nullable=False),
    Column("side", String(6), nullable=False),
    Column("amount_minor", BigInteger, nullable=False),
    Column("ledger", String(12), nullable=False),
    Column("timestamp_us", BigInteger, nullable=False),
    Column("debits_pending", BigInteger, nullable=False),
    Column("debits_posted", BigInteger, nullable=False),
    Column("credits_pending", BigInteger, nullable=False),
    Column("credits_posted", BigInteger, nullable=False),
    PrimaryKeyConstraint("book_id", "account_id", "position", name="pk_account_entries"),
)
Index(
    "ix_account_entries_as_of",
    account_entries.c.book_id,
    account_entries.c.account_id,
    account_entries.c.timestamp_us,
)

transfers = Table(
    "transfers",
    metadata,
    Column("book_id", String(64), nullable=False),
    Column("transfer_id", UUID(as_uuid=True), nullable=False),
    Column("position", BigInteger, nullable=False),
    Column("debit_account_id", UUID(as_uuid=True), nullable=False),
    Column("credit_account_id", UUID(as_uuid=True), nullable=False),
    Column("amount_minor", BigInteger, nullable=False),
    Column("ledger", String(12), nullable=False),
    Column("code", Integer, nullable=False),
    Column("kind", String(8), nullable=False),
    Column("pending_id", UUID(as_uuid=True), nullable=True),
    Column("status", String(8), nullable=False),
    Column("amount_posted_minor", BigInteger, nullable=False),
    Column("timeout_s", BigInteger, nullable=False),
    Column("expires_at_us", BigInteger, nullable=True),
    Column("timestamp_us", BigInteger, nullable=False),
    Column("resolved_position", BigInteger, nullable=True),
    Column("metadata", JSONB, nullable=False),
    PrimaryKeyConstraint("book_id", "transfer_id", name="pk_transfers"),
)
Index("ix_transfers_debit", transfers.c.book_id, transfers.c.debit_account_id, transfers.c.position)
Index(
    "ix_transfers_credit", transfers.c.book_id, transfers.c.credit_account_id, transfers.c.position
)

trial_balances = Table(
    "trial_balances",
    metadata,
    Column("book_id", String(64), nullable=False),
    Column("ledger", String(12), nullable=False),
    Column("debits_pending", Numeric(40, 0), nullable=False),
    Column("debits_posted", Numeric(40, 0), nullable=False),
    Column("credits_pending", Numeric(40, 0), nullable=False),
    Column("credits_posted", Numeric(40, 0), nullable=False),
    Column("position", BigInteger, nullable=False),
    PrimaryKeyConstraint("book_id", "ledger", name="pk_trial_balances"),
)

READ_MODEL_TABLES: tuple[Table, ...] = (
    account_balances,
    account_entries,
    transfers,
    trial_balances,
)


def shadow_names(table: Table) -> dict[str, str]:
    """Every name of ``table`` (itself, its key, its indexes) -> its shadow counterpart."""
    names = {table.name: table.name + SHADOW_SUFFIX}
    pk_name = str(table.primary_key.name)
    names[pk_name] = pk_name.replace(table.name, table.name + SHADOW_SUFFIX, 1)
    for index in table.indexes:
        name = str(index.name)
        names[name] = name.replace(table.name, table.name + SHADOW_SUFFIX, 1)
    return names
