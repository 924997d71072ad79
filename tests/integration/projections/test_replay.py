"""``ledger wal replay``: a clean bill, and each kind of tampering found and located."""

from __future__ import annotations

import gc
import os
import sys
import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest

from ledger import audit
from ledger.adapters.wal import segment_paths
from ledger.audit import Finding, replay_wal
from ledger.cli import main
from projections.tracking import dsn
from projections.workload import SyntheticBook, store_records
from tests.integration.projections.conftest import project_from_store

BOOK = "audit"


@pytest.fixture(params=["native", "native beside the WAL", "sql"])
def store_way(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The event store's rows checked from a binary COPY here (natively: each row hashed,
    or compared with its WAL record and hashed only when it differs), or by PostgreSQL
    itself: all must find the same things at the same places."""
    if request.param == "sql":
        monkeypatch.setattr(audit, "_store_chunk", audit._store_chunk_sql)
    else:
        monkeypatch.setattr(audit, "_store_chunk", audit._store_chunk_native)
    if request.param == "native":
        monkeypatch.setattr(audit._WalBeside, "cursor_for", lambda self, lo, hi: None)
    return str(request.param)


@pytest.fixture(params=["native", "sql"])
def digest_way(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The read models' rows hashed here from a binary COPY (natively), or by PostgreSQL:
    both must give the WAL's digests, and differ from them at the same rows."""
    native = request.param == "native"
    monkeypatch.setattr(
        audit, "_entry_digests", audit._entry_digests_native if native else audit._entry_digests_sql
    )
    monkeypatch.setattr(
        audit,
        "_transfer_digest",
        audit._transfer_digest_native if native else audit._transfer_digest_sql,
    )
    return str(request.param)


@pytest.fixture
def audited(database_url: str, tmp_path: Path) -> tuple[str, Path, SyntheticBook]:
    """A book in the WAL, the event store and every read model."""
    book = SyntheticBook(seed=21)
    wal_dir = tmp_path / "wal"
    store_records(database_url, BOOK, [*book.batches(8, 400), book.expire_all()], wal_dir=wal_dir)
    project_from_store(database_url, BOOK)
    return database_url, wal_dir, book


@pytest.mark.usefixtures("digest_way")
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


def test_the_store_check_reads_the_wal_beside_it(
    audited: tuple[str, Path, SyntheticBook], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The audit hands the event store check the WAL's segments, so that the rows that
    copy their records are not hashed a second time (tests/unit/test_store_chunk.py)."""
    url, wal_dir, book = audited
    seen: list[tuple[int, int, bool]] = []
    cursor_for = audit._WalBeside.cursor_for

    def spy(self: Any, lo: int, hi: int) -> Any:
        assert self.paths == segment_paths(wal_dir)
        cursor = cursor_for(self, lo, hi)
        seen.append((lo, hi, cursor is not None))
        return cursor

    monkeypatch.setattr(audit._WalBeside, "cursor_for", spy)
    replay_wal(wal_dir, url, BOOK)
    chunks = -(-book.position // audit.CHUNK_POSITIONS)
    assert [(lo, cursor) for lo, _, cursor in seen] == [
        (i * audit.CHUNK_POSITIONS + 1, True) for i in range(chunks)
    ]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread priority is Linux's")
def test_the_checks_beside_the_pass_run_at_a_lower_priority(
    audited: tuple[str, Path, SyntheticBook], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The WAL pass is one thread that nothing can share; the event store check and the
    read models' digests run at a lower priority so that they fill the idle core instead
    of holding the pass back."""
    url, wal_dir, _ = audited
    seen: dict[str, int] = {}

    def niceness() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    def spy(name: str, real: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            seen[name] = niceness()
            return real(*args, **kwargs)

        return call

    for name in ("_verify_store", "_entry_digests", "_transfer_digest"):
        monkeypatch.setattr(audit, name, spy(name, getattr(audit, name)))
    mine = niceness()
    replay_wal(wal_dir, url, BOOK)
    assert niceness() == mine  # the pass's own thread is left as it was
    expected = min(mine + audit._BESIDE_NICE, 19)
    assert seen == dict.fromkeys(("_verify_store", "_entry_digests", "_transfer_digest"), expected)


def test_the_pass_state_is_freed_when_the_audit_returns(
    audited: tuple[str, Path, SyntheticBook],
) -> None:
    """Nothing of the pass outlives the audit in a reference cycle: the collector would
    otherwise walk every account and transfer of the book again before freeing them."""
    url, wal_dir, _ = audited
    gc.collect()
    gc.disable()
    try:
        replay_wal(wal_dir, url, BOOK)
        left = [o for o in gc.get_objects() if isinstance(o, (audit._WalScan, audit._Books))]
    finally:
        gc.enable()
    assert left == []


@pytest.mark.usefixtures("store_way")
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


@pytest.mark.usefixtures("store_way")
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


def _entry_of(conn: psycopg.Connection[Any], position: int) -> tuple[str, int]:
    """(account id, entries of the account) of the debit entry at ``position``."""
    row = conn.execute(
        "SELECT account_id::text, (SELECT count(*) FROM account_entries AS o "
        "WHERE o.account_id = e.account_id) FROM account_entries AS e "
        "WHERE book_id = %s AND position = %s AND side = 'debit'",
        (BOOK, position),
    ).fetchone()
    assert row is not None
    return str(row[0]), int(row[1])


@pytest.mark.parametrize(
    ("column", "change"),
    [
        ("debits_posted", "debits_posted = debits_posted + 7"),
        ("credits_pending", "credits_pending = credits_pending + 1"),
        ("transfer_id", "transfer_id = gen_random_uuid()"),
        ("timestamp_us", "timestamp_us = timestamp_us + 1"),
        ("type", "type = 'PendingTransferVoided'"),
        ("ledger", "ledger = 'XXX'"),
    ],
)
@pytest.mark.usefixtures("digest_way")
def test_an_entry_edited_in_the_middle_of_an_account_is_found_by_column(
    audited: tuple[str, Path, SyntheticBook], column: str, change: str
) -> None:
    # Not the account's last entry, and counts and sums of amounts unchanged: only a
    # comparison of every row finds it.
    url, wal_dir, _ = audited
    with psycopg.connect(dsn(url), autocommit=True) as conn:
        account_id, entries = _entry_of(conn, 777)
        assert entries > 2
        last = conn.execute(
            "SELECT max(position) FROM account_entries WHERE account_id = %s", (account_id,)
        ).fetchone()
        assert last is not None and last[0] > 777
        conn.execute(
            f"UPDATE account_entries SET {change} WHERE position = 777 AND account_id = %s",
            (account_id,),
        )
    with pytest.raises(Finding) as found:
        replay_wal(wal_dir, url, BOOK)
    assert found.value.where == (
        f"account_entries row (book 'audit', account {account_id}, position 777)"
    )
    assert found.value.what.startswith(f"{column} is ")
    assert ", the WAL gives " in found.value.what
    assert "the WAL gives" in found.value.what


_SWAP = (
    "UPDATE account_entries AS e SET amount_minor = o.amount_minor "
    "FROM account_entries AS o WHERE e.account_id = %(a)s AND o.account_id = %(a)s "
    "AND ((e.position = %(p)s AND o.position = %(q)s) "
    "OR (e.position = %(q)s AND o.position = %(p)s))"
)


@pytest.mark.usefixtures("digest_way")
def test_entries_swapped_or_deleted_are_found(
    audited: tuple[str, Path, SyntheticBook],
) -> None:
    url, wal_dir, _ = audited
    with psycopg.connect(dsn(url), autocommit=True) as conn:
        account_id, _ = _entry_of(conn, 777)
        rows = conn.execute(
            "SELECT position, amount_minor FROM account_entries WHERE account_id = %s "
            "ORDER BY position",
            (account_id,),
        ).fetchall()
        # Two entries of one account with different amounts, swapped: the account's count
        # and sum of amounts stay the same.
        first = rows[0]
        second = next(r for r in rows[1:] if r[1] != first[1])
        keys = {"a": account_id, "p": first[0], "q": second[0]}
        conn.execute(_SWAP, keys)
    with pytest.raises(Finding) as found:
        replay_wal(wal_dir, url, BOOK)
    assert found.value.where == (
        f"account_entries row (book 'audit', account {account_id}, position {first[0]})"
    )
    assert found.value.what.startswith(f"amount_minor is {second[1]}, the WAL gives {first[1]}")
    with psycopg.connect(dsn(url), autocommit=True) as conn:
        conn.execute(_SWAP, keys)  # back
        conn.execute(
            "DELETE FROM account_entries WHERE account_id = %s AND position = %s",
            (account_id, second[0]),
        )
    with pytest.raises(Finding) as found:
        replay_wal(wal_dir, url, BOOK)
    assert found.value.where == (
        f"account_entries row (book 'audit', account {account_id}, position {second[0]})"
    )
    assert found.value.what == f"no entry at position {second[0]}, which the WAL gives"


@pytest.mark.usefixtures("digest_way")
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
    with pytest.raises(Finding) as found:
        replay_wal(wal_dir, url, BOOK)
    assert found.value.what.startswith("amount_minor is ")
    assert found.value.where == (
        f"account_entries row (book 'audit', account {row[0]}, position 777)"
    )
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


@pytest.mark.parametrize(
    ("column", "change", "which"),
    [
        ("code", "code = code + 1", "kind = 'single'"),
        ("timestamp_us", "timestamp_us = timestamp_us - 5", "kind = 'post'"),
        ("timeout_s", "timeout_s = timeout_s + 60", "kind = 'pending'"),
        ("pending_id", "pending_id = gen_random_uuid()", "kind = 'void'"),
        ("metadata", """metadata = '{"n": "tampered"}'""", "metadata <> '{}'"),
        ("metadata", """metadata = '{"added": "1"}'""", "metadata = '{}' AND kind = 'post'"),
        ("metadata", "metadata = '{}'", "metadata <> '{}'"),
    ],
)
@pytest.mark.usefixtures("digest_way")
def test_a_transfer_column_outside_its_state_is_found(
    audited: tuple[str, Path, SyntheticBook], column: str, change: str, which: str
) -> None:
    url, wal_dir, _ = audited
    with psycopg.connect(dsn(url), autocommit=True) as conn:
        row = conn.execute(
            f"UPDATE transfers SET {change} WHERE transfer_id = (SELECT transfer_id "
            f"FROM transfers WHERE {which} ORDER BY position LIMIT 1 OFFSET 3) "
            "RETURNING transfer_id"
        ).fetchone()
    assert row is not None
    with pytest.raises(Finding) as found:
        replay_wal(wal_dir, url, BOOK)
    assert found.value.where == f"transfers row (book 'audit', transfer {row[0]})"
    assert found.value.what.startswith(f"{column} is ")


@pytest.mark.usefixtures("digest_way")
def test_a_hold_resolved_elsewhere_is_found(audited: tuple[str, Path, SyntheticBook]) -> None:
    url, wal_dir, _ = audited
    with psycopg.connect(dsn(url), autocommit=True) as conn:
        row = conn.execute(
            "UPDATE transfers SET resolved_position = resolved_position + 1 "
            "WHERE transfer_id = (SELECT transfer_id FROM transfers WHERE kind = 'pending' "
            "AND status = 'posted' ORDER BY position LIMIT 1) RETURNING transfer_id"
        ).fetchone()
    assert row is not None
    with pytest.raises(Finding) as found:
        replay_wal(wal_dir, url, BOOK)
    assert found.value.where == f"transfers row (book 'audit', transfer {row[0]})"
    assert found.value.what.startswith("resolved_position is ")


TRICKY_METADATA = [
    {"b": "1", "aa": "2", "ccc": ""},  # PostgreSQL keeps jsonb keys by length, then bytes
    {"ключ": "значение", "key": "naïve ☃", "Z": "\U0001f600"},
    {"quote": 'say "hi"', "back\\slash": "tab\there", "nl": "a\nb", "ctl": "\u0001\u007f"},
    {"é": "1", "e": "2", "f": "3"},  # é sorts after f by its UTF-8 bytes
]


@pytest.mark.parametrize("native", [True, False], ids=["native", "reference"])
def test_metadata_of_any_text_checks_out_and_an_edit_is_found(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, native: bool
) -> None:
    from ledger import domain

    if not native:
        monkeypatch.setattr(audit, "_native_books", None)
    book = SyntheticBook(seed=5)
    batches = list(book.batches(2, 200))
    debit, credit = book._accounts["EUR"][:2]
    commands: list[domain.Command] = [
        domain.CreateTransfer(
            id=book._uuid(),
            debit_account_id=debit,
            credit_account_id=credit,
            amount_minor=1,
            ledger="EUR",
            code=1,
            metadata=metadata,
        )
        for metadata in TRICKY_METADATA
    ]
    batches.append(book.decide(commands))
    wal_dir = tmp_path / "wal"
    store_records(database_url, BOOK, batches, wal_dir=wal_dir)
    project_from_store(database_url, BOOK)
    url = database_url
    report = replay_wal(wal_dir, url, BOOK)
    assert report.transfers == len(book.state.transfers)
    with psycopg.connect(dsn(url), autocommit=True) as conn:
        row = conn.execute(
            "UPDATE transfers SET metadata = jsonb_set(metadata, '{ccc}', '\"x\"') "
            "WHERE metadata ? 'ccc' RETURNING transfer_id"
        ).fetchone()
    assert row is not None
    with pytest.raises(Finding) as found:
        replay_wal(wal_dir, url, BOOK)
    assert found.value.where == f"transfers row (book 'audit', transfer {row[0]})"
    assert "'ccc': 'x'" in found.value.what


class _Sink:
    def __init__(self) -> None:
        self.items: list[tuple[Any, ...]] = []

    def put(self, item: tuple[Any, ...]) -> None:
        self.items.append(item)


def _store_check(url: str, wal_dir: Path) -> list[tuple[Any, ...]]:
    sink = _Sink()
    audit._verify_store(url, BOOK, sink, wal_paths=segment_paths(wal_dir))
    return sink.items


def _stored_hashes(url: str) -> list[bytes]:
    with psycopg.connect(dsn(url), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT hash FROM events WHERE book_id = %s ORDER BY position", (BOOK,)
        ).fetchall()
    return [bytes(r[0]) for r in rows]


def _tamper(url: str, statement: str, *params: Any) -> None:
    with psycopg.connect(dsn(url), autocommit=True) as conn:
        conn.execute("ALTER TABLE events DISABLE TRIGGER events_no_update_delete")
        conn.execute(statement, (BOOK, *params))


@pytest.mark.usefixtures("store_way")
def test_the_store_check_sends_the_stored_hashes_chunk_by_chunk(
    audited: tuple[str, Path, SyntheticBook], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, wal_dir, book = audited
    monkeypatch.setattr(audit, "CHUNK_POSITIONS", 97)
    # Rows PostgreSQL cannot put together as they were hashed (normalised json text) are
    # checked again in Python, and pass.
    _tamper(
        url, "UPDATE events SET data = data::jsonb::json WHERE book_id = %s AND position %% 89 = 5"
    )
    items = _store_check(url, wal_dir)
    hashes = _stored_hashes(url)
    assert items[-1] == ("done", book.position, None)
    chunks = [("chunk", i, b"".join(hashes[i * 97 : (i + 1) * 97])) for i in range(len(items) - 1)]
    assert items[:-1] == chunks
    assert len(items) == -(-book.position // 97) + 1
    # Then an edited row, with its hash left alone.
    _tamper(
        url,
        "UPDATE events SET recorded_at_us = recorded_at_us + 1 "
        "WHERE book_id = %s AND position = 1500",
    )
    items = _store_check(url, wal_dir)
    assert items[-1][0] == "finding"
    assert "position 1500 (event " in items[-1][1]
    assert items[-1][2] == "the row's content does not match its hash (edited?)"
    # Every chunk before the edited row's was sent, none after it.
    assert [i[1] for i in items[:-1]] == list(range(1499 // 97))


@pytest.mark.parametrize(
    ("deleted", "found_at"),
    [((700,), 701), ((97 * 7 - 1, 97 * 7), 97 * 7 + 1), (tuple(range(98, 195)), 195)],
    ids=["inside a chunk", "at a chunk's end", "a whole chunk"],
)
@pytest.mark.usefixtures("store_way")
def test_a_deleted_events_row_is_found_as_missing(
    audited: tuple[str, Path, SyntheticBook],
    monkeypatch: pytest.MonkeyPatch,
    deleted: tuple[int, ...],
    found_at: int,
) -> None:
    url, wal_dir, _ = audited
    monkeypatch.setattr(audit, "CHUNK_POSITIONS", 97)
    _tamper(url, "DELETE FROM events WHERE book_id = %s AND position = ANY(%s)", list(deleted))
    items = _store_check(url, wal_dir)
    assert items[-1][0] == "finding"
    assert f"position {found_at} (event " in items[-1][1]
    assert items[-1][2] == f"position {deleted[0]} is missing"
    with pytest.raises(Finding) as found:
        replay_wal(wal_dir, url, BOOK)
    assert found.value.what == f"position {deleted[0]} is missing"


@pytest.mark.usefixtures("store_way")
def test_a_broken_link_is_found_before_the_content(
    audited: tuple[str, Path, SyntheticBook],
) -> None:
    url, wal_dir, _ = audited
    # A prev_hash changed: the row no longer hashes either; the link is what is named.
    _tamper(
        url,
        "UPDATE events SET prev_hash = sha256(prev_hash) WHERE book_id = %s AND position = 321",
    )
    with pytest.raises(Finding) as found:
        replay_wal(wal_dir, url, BOOK)
    assert found.value.where.startswith("events row book 'audit' position 321 (event ")
    assert found.value.what == "prev_hash is not the hash of the row before it"


@pytest.mark.usefixtures("store_way")
def test_a_row_re_hashed_after_an_edit_is_found_by_the_wal(
    audited: tuple[str, Path, SyntheticBook],
) -> None:
    url, wal_dir, _ = audited
    # The last row edited and its hash recomputed as the node would: the store's own
    # chain holds, the WAL's hash at that position differs.
    with psycopg.connect(dsn(url), autocommit=True) as conn:
        row = conn.execute(
            "SELECT max(position) FROM events WHERE book_id = %s", (BOOK,)
        ).fetchone()
    assert row is not None
    last = int(row[0])
    _tamper(
        url,
        f"UPDATE events SET recorded_at_us = recorded_at_us + 1, hash = sha256(prev_hash || "
        f"textsend({audit._ROW_TEXT.replace('recorded_at_us, ', '(recorded_at_us + 1), ')})) "
        "WHERE book_id = %s AND position = %s",
        last,
    )
    assert _store_check(url, wal_dir)[-1] == ("done", last, None)
    with pytest.raises(Finding) as found:
        replay_wal(wal_dir, url, BOOK)
    assert found.value.where == f"events row book 'audit' position {last}"
    assert found.value.what == "hash differs from the WAL's (a different event at this position)"


@pytest.mark.usefixtures("digest_way")
def test_a_book_of_accounts_without_transfers_gets_a_clean_bill(
    database_url: str, tmp_path: Path
) -> None:
    book = SyntheticBook(seed=5, accounts_per_ledger=3)
    wal_dir = tmp_path / "wal"
    store_records(database_url, "accounts-only", [book.open_accounts()], wal_dir=wal_dir)
    project_from_store(database_url, "accounts-only")
    report = replay_wal(wal_dir, database_url, "accounts-only")
    assert report.transfers == 0 and report.accounts == len(book.state.accounts) > 0
    assert report.read_models["transfers"] == "0 transfers match"
    assert report.read_models["entries"] == "0 entries of 0 accounts match"


def test_both_ways_of_hashing_the_read_models_give_the_same_digests(
    audited: tuple[str, Path, SyntheticBook],
) -> None:
    url, _, book = audited
    native = audit._entry_digests_native(url, BOOK)
    assert native == audit._entry_digests_sql(url, BOOK)
    assert len(native[1]) == len(book.state.accounts)
    transfers = audit._transfer_digest_native(url, BOOK)
    assert transfers == audit._transfer_digest_sql(url, BOOK)
    assert transfers[1] == len(book.state.transfers)
    # A book with no rows at all: no accounts, and the digests of nothing.
    assert audit._entry_digests_native(url, "empty") == audit._entry_digests_sql(url, "empty")
    assert audit._transfer_digest_native(url, "empty") == audit._transfer_digest_sql(url, "empty")


def test_entries_read_in_slices_or_out_of_order_give_the_same_digests(
    audited: tuple[str, Path, SyntheticBook], monkeypatch: pytest.MonkeyPatch
) -> None:
    from ledger import pgcopy

    url, _, _ = audited
    want = audit._entry_digests_sql(url, BOOK)
    statements: list[str] = []
    real = pgcopy.copy_out

    def recorded(conn: Any, sql: str, params: Any = None, **kw: Any) -> Any:
        statements.append(sql)
        return real(conn, sql, params, **kw)

    def kinds() -> tuple[int, int, int]:
        """(slices, accounts read again, whole reads) among the COPYs made."""
        sliced = sum("ctid >= " in s for s in statements)
        again = sum("account_id = %s" in s for s in statements)
        return sliced, again, len(statements) - sliced - again

    monkeypatch.setattr(pgcopy, "copy_out", recorded)
    # A slice per heap page: many COPYs in one snapshot, each row hashed as it comes.
    monkeypatch.setattr(audit, "_SLICE_PAGES", 1)
    assert audit._entry_digests_native(url, BOOK) == want
    sliced, _, whole = kinds()
    assert sliced > 20 and whole == 0
    # Rows moved in the heap (an update writes the new row version elsewhere): those
    # accounts' rows come out of order, and each is read again by itself.
    with psycopg.connect(dsn(url), autocommit=True) as conn:
        moved = conn.execute(
            "UPDATE account_entries SET ledger = ledger WHERE book_id = %s AND position < 40",
            (BOOK,),
        ).rowcount
    assert moved > 0
    statements.clear()
    assert audit._entry_digests_native(url, BOOK) == want
    _, again, whole = kinds()
    assert again > 1 and whole == 0
    # More such accounts than are read one by one: the table is read whole and sorted.
    monkeypatch.setattr(audit, "_REREAD_GROUPS_MAX", 1)
    statements.clear()
    assert audit._entry_digests_native(url, BOOK) == want
    assert kinds()[1:] == (0, 1)
