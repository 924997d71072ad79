"""``ledger projections rebuild NAME``: replay a read model into a shadow table and swap.

Why this way. The live tables keep serving reads and the workers keep applying while the
rebuild runs, so the rebuild never touches them until the very end:

1. create ``<table>__rebuild`` for each of the projection's tables (same columns and
   key; secondary indexes only after the bulk load, which is then faster), with its own
   checkpoint ``<name>__rebuild``;
2. replay every book from the event store into it, in chunks of ``CHUNK_EVENTS`` (each
   chunk commits with its checkpoint, so an interrupted rebuild can simply be restarted);
3. catch up again while the head moves, until the rest is small;
4. in **one** transaction: take the projection's advisory lock (live workers for this
   projection wait), apply the last events, lock the live tables, drop them, rename the
   shadow tables and their indexes into place and move the shadow checkpoint onto the
   live one; commit.

A reader is delayed by step 4 at most (PostgreSQL re-resolves a table name after waiting
for its lock, so it then reads the new table); a worker that was waiting continues from
the new checkpoint, which is at the head at the moment of the swap, so whatever it had
in hand is skipped or applied exactly once. Kafka is not needed.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy import MetaData, Table
from sqlalchemy.dialects import postgresql
from sqlalchemy.schema import CreateIndex, CreateTable
from sqlalchemy.sql.elements import quoted_name

from projections import get_projections
from projections.base import Projection
from projections.tables import SHADOW_SUFFIX, shadow_names
from projections.tracking import (
    apply_records,
    book_heads,
    connect,
    iter_events,
    lock_key,
    read_checkpoint,
)

__all__ = ["RebuildReport", "rebuild"]

Advance = Callable[[int], None]
CATCH_UP_ROUNDS_MAX = 10
SWAP_LAG_EVENTS_MAX = 5000


@dataclass(frozen=True)
class RebuildReport:
    """What a rebuild did: events replayed, books, final positions and how long the
    swap held the lock."""

    projection: str
    events: int
    books: int
    positions: dict[str, int]
    swap_ms: float
    duration_s: float


def _shadow(table: Table) -> tuple[Table, dict[str, str]]:
    names = shadow_names(table)
    shadow = table.to_metadata(MetaData(), name=names[table.name])
    shadow.primary_key.name = names[str(table.primary_key.name)]
    for index in shadow.indexes:
        index.name = quoted_name(names[str(index.name)], None)
    return shadow, names


def _create_shadow(conn: psycopg.Connection[Any], projection: Projection) -> None:
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    with conn.transaction():
        for table in projection.tables:
            shadow, _ = _shadow(table)
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(shadow.name)))
            conn.execute(
                str(
                    CreateTable(shadow, include_foreign_key_constraints=[]).compile(dialect=dialect)
                )
            )
        conn.execute(
            "DELETE FROM projection_checkpoints WHERE projection = %s",
            (projection.name + SHADOW_SUFFIX,),
        )


def _create_shadow_indexes(conn: psycopg.Connection[Any], projection: Projection) -> None:
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    with conn.transaction():
        for table in projection.tables:
            shadow, _ = _shadow(table)
            for index in shadow.indexes:
                conn.execute(str(CreateIndex(index).compile(dialect=dialect)))


def _catch_up(
    conn: psycopg.Connection[Any],
    projection: Projection,
    shadow: dict[str, str],
    heads: dict[str, int],
    progress: Advance | None,
) -> int:
    """Replay into the shadow every book up to ``heads``; return the events applied."""
    checkpoint = projection.name + SHADOW_SUFFIX
    applied = 0
    for book_id, head in heads.items():
        start = read_checkpoint(conn, checkpoint, book_id)
        for chunk in iter_events(conn, book_id, start + 1, head):
            result = apply_records(
                conn, projection, book_id, chunk, names=shadow, checkpoint=checkpoint
            )
            applied += result.applied
            if progress is not None:
                progress(result.applied)
    return applied


def _remaining(conn: psycopg.Connection[Any], projection: Projection) -> tuple[dict[str, int], int]:
    heads = book_heads(conn)
    checkpoint = projection.name + SHADOW_SUFFIX
    lag = sum(head - read_checkpoint(conn, checkpoint, book) for book, head in heads.items())
    return heads, lag


def _swap(
    conn: psycopg.Connection[Any], projection: Projection, shadow: dict[str, str]
) -> tuple[dict[str, int], int]:
    """The final, atomic step (see the module docstring); returns the new positions and
    the number of events applied in it."""
    live = projection.name
    checkpoint = live + SHADOW_SUFFIX
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key(live),))
        heads = book_heads(conn)
        applied = _catch_up(conn, projection, shadow, heads, None)
        for table in projection.tables:
            conn.execute(
                sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(table.name))
            )
        for table in projection.tables:
            names = shadow_names(table)
            conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(table.name)))
            conn.execute(
                sql.SQL("ALTER TABLE {} RENAME TO {}").format(
                    sql.Identifier(names[table.name]), sql.Identifier(table.name)
                )
            )
            for live_name, shadow_name in names.items():
                if live_name != table.name:
                    conn.execute(
                        sql.SQL("ALTER INDEX {} RENAME TO {}").format(
                            sql.Identifier(shadow_name), sql.Identifier(live_name)
                        )
                    )
        conn.execute("DELETE FROM projection_checkpoints WHERE projection = %s", (live,))
        conn.execute(
            "UPDATE projection_checkpoints SET projection = %s, updated_at = now() "
            "WHERE projection = %s",
            (live, checkpoint),
        )
        rows = conn.execute(
            "SELECT book_id, position FROM projection_checkpoints WHERE projection = %s", (live,)
        ).fetchall()
    return {r[0]: int(r[1]) for r in rows}, applied


def rebuild(
    database_url: str,
    name: str,
    *,
    progress: Callable[[int, int], Advance | None] | None = None,
) -> RebuildReport:
    """Rebuild projection ``name`` from the event store (see the module docstring).

    ``progress(total_events, already_done)`` may return a callable that is given the
    number of events applied after each chunk (for a progress bar)."""
    [projection] = get_projections([name])
    started = time.monotonic()
    shadow = {t.name: t.name + SHADOW_SUFFIX for t in projection.tables}
    with connect(database_url) as conn:
        _create_shadow(conn, projection)
        heads, lag = _remaining(conn, projection)
        advance = progress(lag, 0) if progress is not None else None
        events = _catch_up(conn, projection, shadow, heads, advance)
        _create_shadow_indexes(conn, projection)
        for _ in range(CATCH_UP_ROUNDS_MAX):
            heads, lag = _remaining(conn, projection)
            if lag <= SWAP_LAG_EVENTS_MAX:
                break
            events += _catch_up(conn, projection, shadow, heads, advance)
        swap_started = time.monotonic()
        positions, last = _swap(conn, projection, shadow)
        events += last
        swap_ms = (time.monotonic() - swap_started) * 1000
    return RebuildReport(
        projection=projection.name,
        events=events,
        books=len(positions),
        positions=positions,
        swap_ms=round(swap_ms, 1),
        duration_s=round(time.monotonic() - started, 3),
    )


@contextlib.contextmanager
def rich_progress(enabled: bool = True) -> Iterator[Callable[[int, int], Advance | None]]:
    """A factory for :func:`rebuild`'s ``progress``: a rich bar on stderr when it is a
    terminal, nothing otherwise."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    console = Console(stderr=True)
    if not enabled or not console.is_terminal:
        yield lambda total, done: None
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True) as bar:

        def factory(total: int, done: int) -> Advance | None:
            task = bar.add_task("replaying", total=total, completed=done)
            return lambda n: bar.advance(task, n)

        yield factory
