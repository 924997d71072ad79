"""A sub-transaction barrier for services that take part in TCC transactions and sagas.

The coordinator may call a participant's operations more than once (retries), late (a
try that arrives after its cancel), or in the wrong order (a cancel for a try that never
arrived). Modelled on DTM's sub-transaction barrier, this module makes each operation run
its business logic **at most once, never after its cancellation, and never as a
compensation of something that did not happen**, by recording the operation in a barrier
table in the participant's own database, *in the same transaction* as the business
change:

* ``try`` / ``action``: insert the row ``(gid, branch, try)``; if it already exists
  (a duplicate, or a cancel already ran first) the business logic is skipped.
* ``confirm``: insert ``(gid, branch, confirm)``; a duplicate is skipped.
* ``cancel`` / ``compensate``: first insert ``(gid, branch, try)`` with reason
  ``cancel``: if that insert *succeeds*, the try never ran, so the cancellation is empty
  (nothing to undo) and the row now blocks a late try (no hanging reservation); then insert
  ``(gid, branch, cancel)``; a duplicate is skipped.

Every check is an ``INSERT ... ON CONFLICT DO NOTHING`` and its row count, never a
check-then-insert, so concurrent duplicates cannot both pass. Barrier rows must outlive the
longest possible late request; delete them only well after the global transaction ended.

Usage (psycopg 3)::

    with conn.transaction(), barrier(conn, gid, branch, "try") as run:
        if run:
            reserve_stock(conn, sku, quantity)
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any, Literal, TypeVar

import psycopg
from psycopg import sql

__all__ = [
    "BARRIER_DDL",
    "Op",
    "abarrier",
    "barrier",
    "create_barrier_table",
    "tcc_operation",
]

Op = Literal["try", "confirm", "cancel", "action", "compensate"]
_ORIGIN: dict[str, str] = {"cancel": "try", "compensate": "action"}
TABLE = "tcc_barrier"

BARRIER_DDL = """
CREATE TABLE IF NOT EXISTS {table} (
    gid        text        NOT NULL,
    branch_id  text        NOT NULL,
    op         text        NOT NULL,
    reason     text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (gid, branch_id, op)
)
"""

_INSERT = (
    "INSERT INTO {table} (gid, branch_id, op, reason) VALUES (%s, %s, %s, %s) "
    "ON CONFLICT DO NOTHING"
)

R = TypeVar("R")


def create_barrier_table(conn: psycopg.Connection[Any], table: str = TABLE) -> None:
    """Create the barrier table in the participant's database (idempotent)."""
    conn.execute(sql.SQL(BARRIER_DDL).format(table=sql.Identifier(table)))


def _check(op: str, gid: str, branch_id: str) -> None:
    if op not in ("try", "confirm", "cancel", "action", "compensate"):
        raise ValueError(f"op must be try, confirm, cancel, action or compensate (got {op!r})")
    if not gid or not branch_id:
        raise ValueError("gid and branch_id must not be empty")


def _steps(op: str) -> list[tuple[str, str]]:
    """The inserts for ``op``: (op column, reason), in order."""
    origin = _ORIGIN.get(op)
    if origin is not None:
        return [(origin, op), (op, op)]
    return [(op, op)]


@contextmanager
def barrier(
    conn: psycopg.Connection[Any], gid: str, branch_id: str, op: Op, table: str = TABLE
) -> Iterator[bool]:
    """Yield True when the business logic of ``op`` must run, False when it must be
    skipped (duplicate, late try after cancel, or empty cancellation).

    Must run inside the transaction that makes the business change (``conn.transaction()``
    or a non-autocommit connection): the barrier rows commit or roll back with it.
    """
    _check(op, gid, branch_id)
    stmt = sql.SQL(_INSERT).format(table=sql.Identifier(table))
    run = True
    for i, (row_op, reason) in enumerate(_steps(op)):
        inserted = conn.execute(stmt, (gid, branch_id, row_op, reason)).rowcount == 1
        if len(_steps(op)) == 2 and i == 0:
            # Inserting the origin row succeeded: the try/action never ran.
            run = not inserted
            continue
        if not inserted:
            run = False
    yield run


@asynccontextmanager
async def abarrier(
    conn: psycopg.AsyncConnection[Any], gid: str, branch_id: str, op: Op, table: str = TABLE
) -> AsyncIterator[bool]:
    """:func:`barrier` for ``psycopg.AsyncConnection``."""
    _check(op, gid, branch_id)
    stmt = sql.SQL(_INSERT).format(table=sql.Identifier(table))
    run = True
    steps = _steps(op)
    for i, (row_op, reason) in enumerate(steps):
        cur = await conn.execute(stmt, (gid, branch_id, row_op, reason))
        inserted = cur.rowcount == 1
        if len(steps) == 2 and i == 0:
            run = not inserted
            continue
        if not inserted:
            run = False
    yield run


def tcc_operation(
    op: Op, table: str = TABLE
) -> Callable[[Callable[..., R]], Callable[..., R | None]]:
    """Decorator for ``fn(conn, gid, branch_id, *args)``: runs it in one transaction with
    the barrier, and only when the barrier allows; returns None when skipped."""

    def wrap(fn: Callable[..., R]) -> Callable[..., R | None]:
        def run(
            conn: psycopg.Connection[Any], gid: str, branch_id: str, *args: Any, **kw: Any
        ) -> R | None:
            with conn.transaction(), barrier(conn, gid, branch_id, op, table) as allowed:
                if not allowed:
                    return None
                return fn(conn, gid, branch_id, *args, **kw)

        run.__name__ = fn.__name__
        run.__doc__ = fn.__doc__
        return run

    return wrap
