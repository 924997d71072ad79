"""Rebuild: a shadow replay from the event store, swapped in while reads go on."""

from __future__ import annotations

import threading

import psycopg
import pytest
from sqlalchemy import create_engine, inspect

from projections import PROJECTION_NAMES, UnknownProjection
from projections.rebuild import rebuild
from projections.tracking import dsn
from projections.workload import SyntheticBook, store_records
from tests.integration.projections.conftest import (
    checkpoints,
    project_from_store,
    read_model_problems,
    table_contents,
)


def test_a_rebuild_produces_tables_identical_to_the_live_ones(database_url: str) -> None:
    books = {"r1": SyntheticBook(seed=11), "r2": SyntheticBook(seed=12)}
    for book_id, book in books.items():
        store_records(database_url, book_id, [*book.batches(4, 250), book.expire_all()])
        project_from_store(database_url, book_id)
    live = table_contents(database_url)
    positions = checkpoints(database_url)
    assert all(live.values())
    stop = threading.Event()
    reads: list[int] = []
    errors: list[BaseException] = []

    def reader() -> None:
        with psycopg.connect(dsn(database_url), autocommit=True) as conn:
            while not stop.is_set():
                try:
                    row = conn.execute("SELECT count(*) FROM account_balances").fetchone()
                    assert row is not None and row[0] == 32
                    reads.append(1)
                except BaseException as exc:
                    errors.append(exc)
                    return

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        reports = [rebuild(database_url, name) for name in PROJECTION_NAMES]
    finally:
        stop.set()
        thread.join()
    assert errors == [] and len(reads) > 10
    assert table_contents(database_url) == live
    assert checkpoints(database_url) == positions
    assert {r.projection for r in reports} == set(PROJECTION_NAMES)
    assert sum(r.events for r in reports) == 4 * sum(b.position for b in books.values())
    for book_id, book in books.items():
        assert read_model_problems(database_url, book_id, book.state) == []
    # The swapped-in tables carry the live names, keys and indexes: no shadow is left.
    engine = create_engine(database_url)
    try:
        names = set(inspect(engine).get_table_names())
        assert not any(n.endswith("__rebuild") for n in names)
        indexes = {i["name"] for i in inspect(engine).get_indexes("transfers")}
        assert indexes == {"ix_transfers_debit", "ix_transfers_credit"}
        assert inspect(engine).get_pk_constraint("transfers")["name"] == "pk_transfers"
    finally:
        engine.dispose()


def test_a_rebuild_repairs_a_damaged_read_model(database_url: str) -> None:
    book = SyntheticBook(seed=13)
    store_records(database_url, "r", list(book.batches(2, 100)))
    project_from_store(database_url, "r")
    with psycopg.connect(dsn(database_url), autocommit=True) as conn:
        conn.execute("UPDATE account_balances SET credits_posted = credits_posted + 7")
        conn.execute("DELETE FROM account_entries WHERE position % 3 = 0")
    assert read_model_problems(database_url, "r", book.state) != []
    rebuild(database_url, "balances")
    rebuild(database_url, "entries")
    assert read_model_problems(database_url, "r", book.state) == []


def test_rebuilding_an_unknown_projection_names_the_known_ones(database_url: str) -> None:
    with pytest.raises(UnknownProjection, match="known: balances, entries"):
        rebuild(database_url, "nope")
