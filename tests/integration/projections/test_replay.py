"""``ledger wal replay``: a clean bill, and each kind of tampering found and located."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from ledger.adapters.wal import segment_paths
from ledger.audit import Finding, replay_wal
from ledger.cli import main
from projections.tracking import dsn
from projections.workload import SyntheticBook, store_records
from tests.integration.projections.conftest import project_from_store

BOOK = "audit"


@pytest.fixture
def audited(database_url: str, tmp_path: Path) -> tuple[str, Path, SyntheticBook]:
    """A book in the WAL, the event store and every read model."""
    book = SyntheticBook(seed=21)
    wal_dir = tmp_path / "wal"
    store_records(database_url, BOOK, [*book.batches(8, 400), book.expire_all()], wal_dir=wal_dir)
    project_from_store(database_url, BOOK)
    return database_url, wal_dir, book


def test_a_clean_book_gets_a_clean_bill(
    audited: tuple[str, Path, SyntheticBook], capsys: pytest.CaptureFixture[str]
) -> None:
    url, wal_dir, book = audited
    report = replay_wal(wal_dir, url, BOOK, domain_check=True)
    assert report.events == report.store_events == book.position
    assert report.head_hash == book.last_hash
    assert report.accounts == len(book.state.accounts)
    assert report.transfers == len(book.state.transfers)
    assert set(report.read_models) == {"balances", "entries", "transfers", "trial_balance"}
    code = main(["wal", "replay", str(wal_dir), "--database-url", url, "--book", BOOK])
    out = capsys.readouterr().out
    assert code == 0
    assert f"hash-chain head {book.last_hash.hex()}" in out
    assert f"{book.position} events" in out


def test_rows_stored_in_another_json_text_still_check_out(
    audited: tuple[str, Path, SyntheticBook],
) -> None:
    # Rows written before events.data became json hold the database's normalised text
    # ({"a": 1}, not {"a":1}); their canonical bytes come from parsing it again.
    url, wal_dir, book = audited
    with psycopg.connect(dsn(url), autocommit=True) as conn:
        conn.execute("ALTER TABLE events DISABLE TRIGGER events_no_update_delete")
        changed = conn.execute(
            "UPDATE events SET data = data::jsonb::json WHERE book_id = %s AND position %% 97 = 3",
            (BOOK,),
        ).rowcount
        sample = conn.execute(
            "SELECT data::text FROM events WHERE book_id = %s AND position = 3", (BOOK,)
        ).fetchone()
    assert changed > 10 and sample is not None and '": ' in sample[0]
    report = replay_wal(wal_dir, url, BOOK)
    assert report.store_events == book.position


def test_a_tampered_events_row_is_found_at_its_position(
    audited: tuple[str, Path, SyntheticBook], capsys: pytest.CaptureFixture[str]
) -> None:
    url, wal_dir, _ = audited
    with psycopg.connect(dsn(url), autocommit=True) as conn:
        conn.execute("ALTER TABLE events DISABLE TRIGGER events_no_update_delete")
        conn.execute(
            "UPDATE events SET data = jsonb_set(data::jsonb, '{amount_minor}', '1')::json "
            "WHERE book_id = %s AND position = 1234",
            (BOOK,),
        )
        event_id = conn.execute(
            "SELECT event_id FROM events WHERE book_id = %s AND position = 1234", (BOOK,)
        ).fetchone()
    assert event_id is not None
    code = main(["wal", "replay", str(wal_dir), "--database-url", url, "--book", BOOK])
    err = capsys.readouterr().err
    assert code == 1
    assert f"events row book 'audit' position 1234 (event {event_id[0]})" in err
    assert "does not match its hash" in err


def test_a_deleted_wal_record_is_found_at_its_segment_and_offset(
    audited: tuple[str, Path, SyntheticBook],
) -> None:
    url, wal_dir, _ = audited
    [segment] = segment_paths(wal_dir)
    data = bytearray(segment.read_bytes())
    # Cut the 500th record out (each record: u32 length of the payload that follows).
    offset = 72
    for _ in range(499):
        offset += 8 + int.from_bytes(data[offset : offset + 4], "little")
    length = 8 + int.from_bytes(data[offset : offset + 4], "little")
    del data[offset : offset + length]
    segment.write_bytes(bytes(data))
    with pytest.raises(Finding) as found:
        replay_wal(wal_dir, url, BOOK)
    assert found.value.where == f"{segment} at byte {offset}"
    assert "500" in found.value.what


def test_an_altered_read_model_row_is_found_with_its_table_and_key(
    audited: tuple[str, Path, SyntheticBook],
) -> None:
    url, wal_dir, book = audited
    account_id = sorted(str(a) for a in book.state.accounts)[3]
    with psycopg.connect(dsn(url), autocommit=True) as conn:
        conn.execute(
            "UPDATE account_balances SET debits_posted = debits_posted + 1 WHERE account_id = %s",
            (account_id,),
        )
    with pytest.raises(Finding) as found:
        replay_wal(wal_dir, url, BOOK)
    assert found.value.where == f"account_balances row (book 'audit', account {account_id})"


def test_an_altered_entry_and_transfer_are_found(
    audited: tuple[str, Path, SyntheticBook],
) -> None:
    url, wal_dir, _ = audited
    with psycopg.connect(dsn(url), autocommit=True) as conn:
        row = conn.execute(
            "UPDATE account_entries SET amount_minor = amount_minor + 1 "
            "WHERE position = 777 AND side = 'debit' RETURNING account_id"
        ).fetchone()
    assert row is not None
    with pytest.raises(Finding, match="sum of amounts") as found:
        replay_wal(wal_dir, url, BOOK)
    assert found.value.where == f"account_entries of account {row[0]} (book 'audit')"
    with psycopg.connect(dsn(url), autocommit=True) as conn:
        conn.execute(
            "UPDATE account_entries SET amount_minor = amount_minor - 1 "
            "WHERE position = 777 AND side = 'debit'"
        )
        tid = conn.execute(
            "UPDATE transfers SET status = 'voided' WHERE status = 'posted' "
            "AND transfer_id = (SELECT min(transfer_id::text)::uuid FROM transfers "
            "WHERE status = 'posted') RETURNING transfer_id"
        ).fetchone()
    assert tid is not None
    with pytest.raises(Finding) as found:
        replay_wal(wal_dir, url, BOOK)
    assert found.value.where == f"transfers row (book 'audit', transfer {tid[0]})"
