"""``ledger.pgcopy.copy_out`` against a real PostgreSQL: the same bytes as psycopg's
COPY, the server's errors as errors, and the connection usable after either."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from ledger import pgcopy
from projections.tracking import dsn

SERIES = (
    "COPY (SELECT g, md5(g::text), CASE WHEN g %% 7 = 0 THEN NULL ELSE g * 1.5 END "
    "FROM generate_series(%(lo)s::int, %(hi)s::int) AS g) TO STDOUT"
)


def psycopg_copy(conn: psycopg.Connection[Any], sql: str, params: dict[str, int]) -> bytes:
    with conn.cursor() as cur, cur.copy(sql, params) as copy:
        return b"".join(copy)


def status(conn: psycopg.Connection[Any]) -> psycopg.pq.TransactionStatus:
    """Read afresh each time (a function, so that the checker does not narrow it)."""
    return conn.info.transaction_status


def test_the_native_reader_is_the_one_taken_here() -> None:
    # Linux with psycopg's own libpq loaded: a fallback here would hide a broken reader.
    assert pgcopy.native()


@pytest.mark.parametrize("fmt", ["text", "binary"])
def test_a_copy_gives_the_same_bytes_as_psycopg(database_url: str, fmt: str) -> None:
    sql = SERIES if fmt == "text" else SERIES.replace("TO STDOUT", "TO STDOUT (FORMAT binary)")
    params = {"lo": 1, "hi": 50_000}
    with psycopg.connect(dsn(database_url), autocommit=True) as conn:
        got = bytes(pgcopy.copy_out(conn, sql, params))
        assert got == psycopg_copy(conn, sql, params)
        hinted = pgcopy.copy_out(conn, sql, params, size_hint=len(got) // 3)
        assert bytes(hinted) == got and len(memoryview(hinted)) == len(got)
        assert len(got) > 1_000_000  # more than one buffer's growth
        assert got.count(b"\n") == 50_000 if fmt == "text" else got.startswith(b"PGCOPY\n")
        # The connection is idle again and takes the next statement.
        assert conn.execute("SELECT 41 + 1").fetchone() == (42,)


def test_an_empty_copy_and_a_parameterless_one(database_url: str) -> None:
    with psycopg.connect(dsn(database_url), autocommit=True) as conn:
        assert bytes(pgcopy.copy_out(conn, "COPY (SELECT 1 WHERE false) TO STDOUT")) == b""
        assert bytes(pgcopy.copy_out(conn, "COPY (SELECT 'it''s') TO STDOUT")) == b"it's\n"


def test_a_server_error_is_raised_with_its_message_and_the_connection_recovers(
    database_url: str,
) -> None:
    with psycopg.connect(dsn(database_url), autocommit=True) as conn:
        with pytest.raises(pgcopy.CopyFailed, match="division by zero"):
            # Fails after rows have been sent: the reader stops at the error.
            pgcopy.copy_out(
                conn, "COPY (SELECT 1 / (5000 - g) FROM generate_series(1, 10000) g) TO STDOUT"
            )
        with pytest.raises(pgcopy.CopyFailed, match="no_such_table"):
            pgcopy.copy_out(conn, "COPY no_such_table TO STDOUT")
        with pytest.raises(pgcopy.CopyFailed, match="not a COPY"):
            pgcopy.copy_out(conn, "SELECT 1")
        assert conn.execute("SELECT 'still here'").fetchone() == ("still here",)


def test_inside_a_transaction_the_copy_sees_its_snapshot_and_an_error_aborts_it(
    database_url: str,
) -> None:
    with psycopg.connect(dsn(database_url)) as conn:
        conn.execute("CREATE TEMP TABLE t (v int)")
        conn.execute("INSERT INTO t VALUES (1), (2)")  # not committed: only this one sees it
        assert bytes(pgcopy.copy_out(conn, "COPY t TO STDOUT")) == b"1\n2\n"
        assert status(conn) == psycopg.pq.TransactionStatus.INTRANS
        with pytest.raises(pgcopy.CopyFailed):
            pgcopy.copy_out(conn, "COPY (SELECT 1 / 0) TO STDOUT")
        assert status(conn) == psycopg.pq.TransactionStatus.INERROR
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            conn.execute("SELECT 1")
        conn.rollback()
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_with_no_transaction_open_one_is_opened_as_psycopg_would(database_url: str) -> None:
    with psycopg.connect(dsn(database_url)) as conn:
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert bytes(pgcopy.copy_out(conn, "COPY (SELECT 7) TO STDOUT")) == b"7\n"
        assert status(conn) == psycopg.pq.TransactionStatus.INTRANS
