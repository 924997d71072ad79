"""The sub-transaction barrier on real PostgreSQL: duplicates, empty cancellation, no hanging."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import psycopg
import pytest

from ledger.sagas.participant import abarrier, barrier, create_barrier_table, tcc_operation


def dsn(url: str) -> str:
    return url.replace("+psycopg", "")


@pytest.fixture
def conn(database_url: str) -> Any:
    with psycopg.connect(dsn(database_url), autocommit=True) as c:
        create_barrier_table(c)
        c.execute("CREATE TABLE stock (sku text PRIMARY KEY, free int, held int)")
        c.execute("INSERT INTO stock VALUES ('apple', 10, 0)")
        yield c


def stock(conn: Any) -> tuple[int, int]:
    row = conn.execute("SELECT free, held FROM stock WHERE sku = 'apple'").fetchone()
    return int(row[0]), int(row[1])


@tcc_operation("try")
def reserve(conn: Any, gid: str, branch: str, n: int) -> str:
    conn.execute("UPDATE stock SET free = free - %s, held = held + %s WHERE sku = 'apple'", (n, n))
    return "reserved"


@tcc_operation("confirm")
def confirm(conn: Any, gid: str, branch: str, n: int) -> str:
    conn.execute("UPDATE stock SET held = held - %s WHERE sku = 'apple'", (n,))
    return "confirmed"


@tcc_operation("cancel")
def cancel(conn: Any, gid: str, branch: str, n: int) -> str:
    conn.execute("UPDATE stock SET free = free + %s, held = held - %s WHERE sku = 'apple'", (n, n))
    return "cancelled"


def test_try_confirm_runs_once_each(conn: Any) -> None:
    assert reserve(conn, "g1", "b1", 3) == "reserved"
    assert reserve(conn, "g1", "b1", 3) is None  # duplicate try
    assert stock(conn) == (7, 3)
    assert confirm(conn, "g1", "b1", 3) == "confirmed"
    assert confirm(conn, "g1", "b1", 3) is None  # duplicate confirm
    assert stock(conn) == (7, 0)


def test_cancel_undoes_a_try_once(conn: Any) -> None:
    reserve(conn, "g2", "b1", 4)
    assert cancel(conn, "g2", "b1", 4) == "cancelled"
    assert cancel(conn, "g2", "b1", 4) is None
    assert stock(conn) == (10, 0)


def test_cancel_before_try_is_empty_and_blocks_the_late_try(conn: Any) -> None:
    assert cancel(conn, "g3", "b1", 5) is None  # empty cancellation: nothing to undo
    assert cancel(conn, "g3", "b1", 5) is None  # and a second one too
    assert reserve(conn, "g3", "b1", 5) is None  # the late try is refused: no hanging hold
    assert stock(conn) == (10, 0)


def test_failed_business_change_rolls_back_the_barrier(conn: Any) -> None:
    with (
        pytest.raises(psycopg.errors.DivisionByZero),
        conn.transaction(),
        barrier(conn, "g4", "b1", "try") as run,
    ):
        assert run
        conn.execute("SELECT 1/0")
    assert reserve(conn, "g4", "b1", 1) == "reserved"  # the retry is not a duplicate


def test_concurrent_duplicates_run_the_business_once(database_url: str, conn: Any) -> None:
    results: list[str | None] = []

    def call() -> None:
        with psycopg.connect(dsn(database_url), autocommit=True) as c:
            results.append(reserve(c, "g5", "b1", 1))

    threads = [threading.Thread(target=call) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count("reserved") == 1 and stock(conn) == (9, 1)


def test_async_barrier_matches(database_url: str, conn: Any) -> None:
    async def scenario() -> list[bool]:
        async with await psycopg.AsyncConnection.connect(dsn(database_url)) as ac:
            seen = []
            for op in ("cancel", "try", "cancel"):
                async with ac.transaction(), abarrier(ac, "g6", "b1", op) as run:
                    seen.append(run)
            return seen

    assert asyncio.run(scenario()) == [False, False, False]


def test_rejects_unknown_operations(conn: Any) -> None:
    with pytest.raises(ValueError, match="op must be"), barrier(conn, "g", "b", "undo"):  # type: ignore[arg-type]
        pass
