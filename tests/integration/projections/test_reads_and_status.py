"""ReadModels (the API's reads), projection status and the CLI around them."""

from __future__ import annotations

import asyncio
import uuid

import psycopg
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from ledger.cli import main
from projections.read import ReadModels
from projections.status import StatusCollector, collect
from projections.tracking import dsn
from projections.workload import SyntheticBook, store_records
from tests.integration.projections.conftest import project_from_store

BOOK = "reads"


def test_balance_as_of_a_time_and_entries_follow_the_account(database_url: str) -> None:
    book = SyntheticBook(seed=70)
    batches = list(book.batches(5, 100))
    store_records(database_url, BOOK, batches)
    project_from_store(database_url, BOOK)
    records = [r for batch in batches for r in batch]
    account_id = next(iter(book.state.accounts))
    opened_at = records[0].recorded_at_us
    with psycopg.connect(dsn(database_url)) as conn:
        entry_rows = conn.execute(
            "SELECT position, timestamp_us, debits_pending, debits_posted, credits_pending, "
            "credits_posted FROM account_entries WHERE account_id = %s ORDER BY position",
            (account_id,),
        ).fetchall()
    assert len(entry_rows) > 10
    middle = entry_rows[len(entry_rows) // 2]

    async def scenario() -> None:
        reads = ReadModels(database_url, BOOK)
        try:
            assert await reads.balance_as_of(account_id, opened_at - 1) is None
            zero = await reads.balance_as_of(account_id, opened_at)
            assert zero is not None and set(zero.values()) == {0}
            at = await reads.balance_as_of(account_id, middle[1])
            # The last movement at or before that time (several may share a batch time).
            last = [r for r in entry_rows if r[1] <= middle[1]][-1]
            assert at is not None
            assert [at[k] for k in ("debits_pending", "debits_posted")] == [last[2], last[3]]
            assert at["available"] == last[5] - last[3] - last[2]
            now = await reads.balance_as_of(account_id, 1 << 62)
            account = book.state.accounts[account_id]
            assert now == await reads.balance(account_id)
            assert now is not None and now["credits_posted"] == account.credits_posted
            assert await reads.balance_as_of(uuid.uuid4(), 1 << 62) is None
            page1 = await reads.entries(account_id, 5, 0)
            page2 = await reads.entries(account_id, 5, page1[-1]["position"])
            assert [e["position"] for e in page1 + page2] == [r[0] for r in entry_rows[:10]]
            assert {e["side"] for e in page1 + page2} <= {"debit", "credit"}
            transfer = await reads.transfer(uuid.UUID(page1[0]["transfer_id"]))
            assert transfer is not None and transfer["position"] <= page1[0]["position"]
            mine = await reads.transfers_of_account(account_id, 1000)
            assert {t["id"] for t in mine} >= {e["transfer_id"] for e in page1}
            lines = await reads.trial_balance()
            assert {line["ledger"] for line in lines} == {"EUR", "USD"}
            assert all(line["debits_posted"] == line["credits_posted"] for line in lines)
        finally:
            await reads.close()

    asyncio.run(scenario())


def test_status_reports_position_and_lag_per_projection_and_book(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    book = SyntheticBook(seed=71)
    store_records(database_url, BOOK, list(book.batches(2, 100)))
    rows = collect(database_url)
    assert {(r.name, r.lag_events) for r in rows} == {
        (name, book.position) for name in ("balances", "entries", "transfers", "trial_balance")
    }
    assert all(r.lag_seconds >= 0 for r in rows)
    project_from_store(database_url, BOOK)
    rows = collect(database_url)
    assert {(r.position, r.lag_events, r.lag_seconds) for r in rows} == {(book.position, 0, 0)}
    assert main(["projections", "status", "--database-url", database_url]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:6] == [
        "KIND",
        "NAME",
        "BOOK",
        "POSITION",
        "HEAD",
        "LAG_EVENTS",
    ]
    balances = next(line.split() for line in out.splitlines() if " balances " in line)
    assert balances[:6] == ["projection", "balances", BOOK, *[str(book.position)] * 2, "0"]
    registry = CollectorRegistry()
    registry.register(StatusCollector(database_url))
    text = generate_latest(registry).decode()
    assert (
        f'ledger_projection_lag_events{{book="{BOOK}",kind="projection",name="entries"}} 0.0'
        in text
    )


def test_rebuild_from_the_command_line(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    book = SyntheticBook(seed=72)
    store_records(database_url, BOOK, list(book.batches(2, 100)))
    code = main(["projections", "rebuild", "trial_balance", "--database-url", database_url])
    assert code == 0
    assert f"rebuilt trial_balance: {book.position} events replayed" in capsys.readouterr().out
    assert main(["projections", "rebuild", "nope", "--database-url", database_url]) == 2
    assert "unknown projection 'nope'" in capsys.readouterr().err
