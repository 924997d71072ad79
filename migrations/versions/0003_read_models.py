"""read models: account balances, account entries, transfers, trial balances

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _balances() -> list[sa.Column]:
    return [
        sa.Column(name, sa.BigInteger, nullable=False)
        for name in ("debits_pending", "debits_posted", "credits_pending", "credits_posted")
    ]


def upgrade() -> None:
    op.create_table(
        "account_balances",
        sa.Column("book_id", sa.String(64), nullable=False),
        sa.Column("account_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("ledger", sa.String(12), nullable=False),
        sa.Column("code", sa.Integer, nullable=False),
        *_balances(),
        sa.Column("closed", sa.Boolean, nullable=False),
        sa.Column("opened_at_us", sa.BigInteger, nullable=False),
        sa.Column("position", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("book_id", "account_id", name="pk_account_balances"),
    )
    op.create_table(
        "account_entries",
        sa.Column("book_id", sa.String(64), nullable=False),
        sa.Column("account_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("position", sa.BigInteger, nullable=False),
        sa.Column("transfer_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("pending_id", postgresql.UUID(as_uuid=True), nullable=True),
        sa.Column("type", sa.String(40), nullable=False),
        sa.Column("side", sa.String(6), nullable=False),
        sa.Column("amount_minor", sa.BigInteger, nullable=False),
        sa.Column("ledger", sa.String(12), nullable=False),
        sa.Column("timestamp_us", sa.BigInteger, nullable=False),
        *_balances(),
        sa.PrimaryKeyConstraint("book_id", "account_id", "position", name="pk_account_entries"),
    )
    op.create_index(
        "ix_account_entries_as_of", "account_entries", ["book_id", "account_id", "timestamp_us"]
    )
    op.create_table(
        "transfers",
        sa.Column("book_id", sa.String(64), nullable=False),
        sa.Column("transfer_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("position", sa.BigInteger, nullable=False),
        sa.Column("debit_account_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("credit_account_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("amount_minor", sa.BigInteger, nullable=False),
        sa.Column("ledger", sa.String(12), nullable=False),
        sa.Column("code", sa.Integer, nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("pending_id", postgresql.UUID(as_uuid=True), nullable=True),
        sa.Column("status", sa.String(8), nullable=False),
        sa.Column("amount_posted_minor", sa.BigInteger, nullable=False),
        sa.Column("timeout_s", sa.BigInteger, nullable=False),
        sa.Column("expires_at_us", sa.BigInteger, nullable=True),
        sa.Column("timestamp_us", sa.BigInteger, nullable=False),
        sa.Column("resolved_position", sa.BigInteger, nullable=True),
        sa.Column("metadata", postgresql.JSONB, nullable=False),
        sa.PrimaryKeyConstraint("book_id", "transfer_id", name="pk_transfers"),
    )
    op.create_index(
        "ix_transfers_debit", "transfers", ["book_id", "debit_account_id", "position"]
    )
    op.create_index(
        "ix_transfers_credit", "transfers", ["book_id", "credit_account_id", "position"]
    )
    op.create_table(
        "trial_balances",
        sa.Column("book_id", sa.String(64), nullable=False),
        sa.Column("ledger", sa.String(12), nullable=False),
        *[
            sa.Column(name, sa.Numeric(40, 0), nullable=False)
            for name in ("debits_pending", "debits_posted", "credits_pending", "credits_posted")
        ],
        sa.Column("position", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("book_id", "ledger", name="pk_trial_balances"),
    )


def downgrade() -> None:
    op.drop_table("trial_balances")
    op.drop_index("ix_transfers_credit", table_name="transfers")
    op.drop_index("ix_transfers_debit", table_name="transfers")
    op.drop_table("transfers")
    op.drop_index("ix_account_entries_as_of", table_name="account_entries")
    op.drop_table("account_entries")
    op.drop_table("account_balances")
