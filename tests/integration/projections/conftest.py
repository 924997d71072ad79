"""Helpers for the projection tests: a synthetic book, and the read models compared with
the domain state that the same events produce."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from ledger import domain
from projections import all_projections
from projections.tables import READ_MODEL_TABLES
from projections.tracking import apply_records, dsn, read_events
from projections.workload import SyntheticBook, store_records


def replayed_state(database_url: str, book_id: str) -> domain.BookState:
    """The book as the domain sees it after every stored event (the node's balances)."""
    state = domain.BookState()
    with psycopg.connect(dsn(database_url)) as conn:
        position = 1
        while True:
            chunk = read_events(conn, book_id, position, 1 << 62)
            if not chunk:
                return state
            for r in chunk:
                domain.evolve(state, domain.event_from_data(r.type, r.schema_version, r.data))
            position = chunk[-1].position + 1


def read_model_problems(database_url: str, book_id: str, state: domain.BookState) -> list[str]:
    """Every difference between the read models of ``book_id`` and ``state``."""
    problems: list[str] = []
    with psycopg.connect(dsn(database_url)) as conn:
        rows = {
            r[0]: r[1:]
            for r in conn.execute(
                "SELECT account_id, debits_pending, debits_posted, credits_pending, "
                "credits_posted, closed FROM account_balances WHERE book_id = %s",
                (book_id,),
            )
        }
        for account in state.accounts.values():
            want = (*account.balances(), account.closed)
            if rows.pop(account.id, None) != want:
                problems.append(f"balances of {account.id}: want {want}")
        problems.extend(f"extra balance row {k}" for k in rows)
        last = {
            r[0]: r[1:]
            for r in conn.execute(
                "SELECT DISTINCT ON (account_id) account_id, debits_pending, debits_posted, "
                "credits_pending, credits_posted FROM account_entries WHERE book_id = %s "
                "ORDER BY account_id, position DESC",
                (book_id,),
            )
        }
        for account in state.accounts.values():
            if account.id in last and last[account.id] != tuple(account.balances()):
                problems.append(f"last entry of {account.id} != balances")
        transfers = {
            r[0]: r[1:]
            for r in conn.execute(
                "SELECT transfer_id, status, amount_minor, amount_posted_minor FROM transfers "
                "WHERE book_id = %s",
                (book_id,),
            )
        }
        for t in state.transfers.values():
            want_t = (t.pending_status.value, t.amount_minor, t.amount_posted_minor)
            if transfers.pop(t.id, None) != want_t:
                problems.append(f"transfer {t.id}: want {want_t}")
        problems.extend(f"extra transfer row {k}" for k in transfers)
        sums: dict[str, list[int]] = {}
        for a in state.accounts.values():
            line = sums.setdefault(a.ledger, [0, 0, 0, 0])
            for i, v in enumerate(a.balances()):
                line[i] += v
        tb = {
            r[0]: [int(x) for x in r[1:]]
            for r in conn.execute(
                "SELECT ledger, debits_pending, debits_posted, credits_pending, credits_posted "
                "FROM trial_balances WHERE book_id = %s",
                (book_id,),
            )
        }
        for ledger, line in sums.items():
            if any(line) and tb.get(ledger) != line:
                problems.append(f"trial balance {ledger}: want {line}, got {tb.get(ledger)}")
    return problems


def table_contents(database_url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every read-model table, sorted (for exact comparisons)."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    with psycopg.connect(dsn(database_url)) as conn:
        for table in READ_MODEL_TABLES:
            rows = conn.execute(f"SELECT * FROM {table.name}").fetchall()
            out[table.name] = sorted(rows, key=repr)
    return out


def checkpoints(database_url: str) -> dict[tuple[str, str], int]:
    with psycopg.connect(dsn(database_url)) as conn:
        return {
            (r[0], r[1]): int(r[2])
            for r in conn.execute(
                "SELECT projection, book_id, position FROM projection_checkpoints"
            )
        }


def project_from_store(database_url: str, book_id: str) -> None:
    """Bring every projection up to the head of ``book_id`` without Kafka."""
    with psycopg.connect(dsn(database_url), autocommit=True) as conn:
        head = conn.execute(
            "SELECT coalesce(max(position), 0) FROM events WHERE book_id = %s", (book_id,)
        ).fetchone()
        assert head is not None
        for projection in all_projections():
            apply_records(conn, projection, book_id, [], through=int(head[0]))


@pytest.fixture
def synthetic() -> Callable[..., SyntheticBook]:
    return SyntheticBook


def write_synthetic(
    database_url: str, book_id: str, batches: int = 5, size: int = 200, seed: int = 1, **kw: Any
) -> SyntheticBook:
    book = SyntheticBook(seed=seed)
    store_records(database_url, book_id, list(book.batches(batches, size)), **kw)
    return book
