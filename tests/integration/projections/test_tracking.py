"""Checkpointed apply: exactly once, in order, gaps filled from the event store."""

from __future__ import annotations

import psycopg
import pytest

from projections import ProjectionInvariantViolated, all_projections
from projections.models import TrialBalanceProjection
from projections.tracking import apply_records, dsn, read_events
from projections.workload import SyntheticBook, store_records
from tests.integration.projections.conftest import (
    checkpoints,
    read_model_problems,
    replayed_state,
    table_contents,
)

BOOK = "b1"


def test_projecting_the_store_reproduces_the_domain_state(database_url: str) -> None:
    book = SyntheticBook(seed=3)
    batches = [*book.batches(6, 300), book.expire_all()]
    store_records(database_url, BOOK, batches)
    records = [r for batch in batches for r in batch]
    with psycopg.connect(dsn(database_url), autocommit=True) as conn:
        for projection in all_projections():
            for batch in batches:
                apply_records(conn, projection, BOOK, batch)
    assert {r.type for r in records} >= {
        "AccountOpened",
        "TransferCreated",
        "PendingTransferPosted",
        "PendingTransferVoided",
        "PendingTransferExpired",
    }
    assert read_model_problems(database_url, BOOK, book.state) == []
    assert read_model_problems(database_url, BOOK, replayed_state(database_url, BOOK)) == []
    assert set(checkpoints(database_url).values()) == {records[-1].position}


def test_duplicates_are_skipped_and_gaps_backfilled_from_the_store(database_url: str) -> None:
    book = SyntheticBook(seed=4)
    records = [r for batch in book.batches(4, 100) for r in batch]
    store_records(database_url, BOOK, [records])
    head = records[-1].position
    with psycopg.connect(dsn(database_url), autocommit=True) as conn:
        for projection in all_projections():
            first = apply_records(conn, projection, BOOK, records[:50])
            assert (first.applied, first.backfilled, first.position) == (50, 0, 50)
            # 40..60 repeats 40..50; 100..head skips 61..99, which come from the store.
            again = apply_records(conn, projection, BOOK, records[39:60] + records[99:])
            assert again.skipped == 11
            assert again.backfilled == 39
            assert again.position == head
            # A whole batch of duplicates, shuffled and repeated, changes nothing.
            before = table_contents(database_url)
            noop = apply_records(conn, projection, BOOK, records[::-1] + records)
            assert (noop.applied, noop.position) == (0, head)
            assert table_contents(database_url) == before
    assert read_model_problems(database_url, BOOK, book.state) == []


def test_a_message_from_another_history_is_refused(database_url: str) -> None:
    ours = SyntheticBook(seed=5)
    theirs = SyntheticBook(seed=6)
    records = [r for batch in ours.batches(2, 50) for r in batch]
    foreign = [r for batch in theirs.batches(2, 50) for r in batch]
    store_records(database_url, BOOK, [records])
    projection = all_projections()[0]
    with psycopg.connect(dsn(database_url), autocommit=True) as conn:
        apply_records(conn, projection, BOOK, records[:10])
        with pytest.raises(ProjectionInvariantViolated, match="prev_hash"):
            apply_records(conn, projection, BOOK, records[10:20] + foreign[20:30])
    assert checkpoints(database_url)[(projection.name, BOOK)] == 10


def test_a_trial_balance_that_does_not_balance_stops_the_batch(database_url: str) -> None:
    book = SyntheticBook(seed=7)
    records = [r for batch in book.batches(2, 100) for r in batch]
    store_records(database_url, BOOK, [records])
    projection = TrialBalanceProjection()
    with psycopg.connect(dsn(database_url), autocommit=True) as conn:
        apply_records(conn, projection, BOOK, records[:100])
        conn.execute("UPDATE trial_balances SET debits_posted = debits_posted + 1")
        with pytest.raises(ProjectionInvariantViolated, match=r"Σ debits must equal Σ credits"):
            apply_records(conn, projection, BOOK, records[100:])
        assert read_events(conn, BOOK, 1, 1)[0].position == 1
    assert checkpoints(database_url)[(projection.name, BOOK)] == 100
