"""The PostgreSQL helpers that the audit shares with the projections, kept apart from
:mod:`projections.tracking` (which brings in SQLAlchemy and the domain model, about 0.3 s
of imports) so that ``ledger wal replay`` starts without them."""

from __future__ import annotations

from typing import Any

import orjson
import psycopg
from psycopg.types.json import set_json_loads

from ledger.devservices import normalise_pg_url

__all__ = ["PROJECTION_NAMES", "connect", "dsn", "read_checkpoint"]

PROJECTION_NAMES: tuple[str, ...] = ("balances", "entries", "transfers", "trial_balance")
"""The read models, by the names of their checkpoints (``projection_checkpoints``)."""


def dsn(url: str) -> str:
    """A libpq URL from any of the accepted database URL spellings."""
    return normalise_pg_url(url).replace("postgresql+psycopg://", "postgresql://", 1)


def connect(url: str, *, autocommit: bool = True) -> psycopg.Connection[Any]:
    """An autocommit psycopg connection (``conn.transaction()`` opens real transactions)
    that decodes ``jsonb`` with orjson."""
    conn = psycopg.connect(dsn(url), autocommit=autocommit)
    set_json_loads(orjson.loads, conn)
    return conn


def read_checkpoint(conn: psycopg.Connection[Any], checkpoint: str, book_id: str) -> int:
    """The last position of ``book_id`` applied to ``checkpoint`` (0 for none)."""
    row = conn.execute(
        "SELECT position FROM projection_checkpoints WHERE projection = %s AND book_id = %s",
        (checkpoint, book_id),
    ).fetchone()
    return int(row[0]) if row else 0
