"""The audit's WAL passes agree: the native one (a helper thread checks each span of
records in C while the main thread applies the span before, its transfer events by the
native arithmetic of ledger/_replay.c), the same with the arithmetic in Python, and the
reference loop.

Goal: the faster passes find exactly what the reference finds, at the same place, end
in the same state, and never apply a record that has not been checked. Method: the same
logs (clean, with a flipped bit, with a wrong balance re-chained so that only the
arithmetic can catch it, with a field missing) through every pass, with spans made small
so that a log crosses many spans and segments.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ledger import audit
from ledger.adapters.wal import HEADER_BYTES, open_wal, segment_paths
from ledger.application.records import GENESIS_HASH, EventRecord, PendingRecord, chain_records
from projections.workload import SyntheticBook
from tests.unit.wal.support import frames


def _write(directory: Path, batches: list[list[EventRecord]]) -> None:
    wal, _ = open_wal(directory, 1 << 16)
    for batch in batches:
        wal.append_batch(batch)
    wal.close()


def _rechained(records: list[EventRecord], changes: dict[int, dict[str, Any]]) -> list[EventRecord]:
    """``records`` with the data of ``records[i]`` replaced by ``changes[i]``, chained
    anew from the genesis hash (so every CRC and hash holds)."""
    pending = [
        PendingRecord(
            r.event_id,
            r.stream_id,
            r.stream_version,
            r.type,
            r.schema_version,
            r.recorded_at_us,
            changes.get(i, r.data),
        )
        for i, r in enumerate(records)
    ]
    return chain_records(pending, 1, GENESIS_HASH)


def _book_batches() -> tuple[SyntheticBook, list[list[EventRecord]]]:
    book = SyntheticBook(seed=5)
    return book, [*book.batches(6, 300), book.expire_all()]


PASSES = ("native", "native check, Python arithmetic", "reference")
CODEC = vars(audit)["_native"]  # the module's private handles on the native code
BOOKS = vars(audit)["_native_books"]


def _set_pass(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    assert CODEC is not None and BOOKS is not None
    monkeypatch.setattr(audit, "_native", None if name == "reference" else CODEC)
    monkeypatch.setattr(audit, "_native_books", BOOKS if name == "native" else None)


def _both(directory: Path, monkeypatch: pytest.MonkeyPatch) -> list[tuple[object, ...]]:
    """The report (or the finding) of each pass, in the order of PASSES."""
    out: list[tuple[object, ...]] = []
    monkeypatch.setattr(audit, "_SPAN_RECORDS", 37)
    monkeypatch.setattr(audit, "_FIRST_SPAN_RECORDS", 5)
    for name in PASSES:
        _set_pass(monkeypatch, name)
        try:
            report = audit.replay_wal(directory, None, "book")
            out.append(
                (
                    report.events,
                    report.segments,
                    report.head_hash,
                    report.accounts,
                    report.transfers,
                )
            )
        except audit.Finding as finding:
            out.append(("finding", finding.where, finding.what))
    return out


def test_both_passes_give_the_same_clean_bill(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    book, batches = _book_batches()
    _write(tmp_path, batches)
    assert len(segment_paths(tmp_path)) > 3
    native, python, reference = _both(tmp_path, monkeypatch)
    assert native == python == reference
    assert native == (
        book.position,
        len(segment_paths(tmp_path)),
        book.last_hash,
        len(book.state.accounts),
        len(book.state.transfers),
    )


def test_both_passes_locate_a_flipped_bit_alike(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, batches = _book_batches()
    _write(tmp_path, batches)
    segment = segment_paths(tmp_path)[2]
    frame = frames(segment)[len(frames(segment)) // 2]
    data = bytearray(segment.read_bytes())
    data[frame.offset + 60] ^= 0x01
    segment.write_bytes(bytes(data))
    native, python, reference = _both(tmp_path, monkeypatch)
    assert native == python == reference
    assert native[:2] == ("finding", f"{segment} at byte {frame.offset}")
    assert "crc32c" in str(native[2])


def test_both_passes_find_a_wrong_balance_in_a_well_chained_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The log is re-chained after the edit, so CRCs and hashes all hold: only the
    # re-derived arithmetic can see that the event's balance is wrong.
    _, batches = _book_batches()
    records = [r for batch in batches for r in batch]
    victim = next(
        i for i, r in enumerate(records) if r.type == "TransferCreated" and i > len(records) // 2
    )
    data = dict(records[victim].data)
    after = dict(data["credit_account_after"])
    after["credits_posted"] += 1
    data["credit_account_after"] = after
    rechained = _rechained(records, {victim: data})
    _write(tmp_path, [rechained[i : i + 500] for i in range(0, len(rechained), 500)])
    native, python, reference = _both(tmp_path, monkeypatch)
    assert native == python == reference
    assert native[:2] == ("finding", f"position {victim + 1}")
    assert "re-derives to" in str(native[2])


def test_an_event_missing_a_field_is_a_finding_not_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, batches = _book_batches()
    records = [r for batch in batches[:2] for r in batch]
    victim = next(i for i, r in enumerate(records) if r.type == "TransferCreated")
    broken = {k: v for k, v in records[victim].data.items() if k != "debit_account_after"}
    _write(tmp_path, [_rechained(records, {victim: broken})])
    native, python, reference = _both(tmp_path, monkeypatch)
    assert native == python == reference
    assert native[0] == "finding"
    assert f"position {victim + 1}" in str(native[1])
    assert "cannot be applied" in str(native[2])


def _comparable(accounts: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """The accounts with each entries hash replaced by its digest (hash objects compare
    by identity)."""
    return {k: [*v[:9], v[9].digest()] for k, v in accounts.items()}


def test_every_pass_ends_in_the_same_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Holds placed, posted, voided and expired, across many spans, segments and chunks.
    book, batches = _book_batches()
    _write(tmp_path, batches)
    types = {r.type for batch in batches for r in batch}
    assert {"PendingTransferPosted", "PendingTransferVoided", "PendingTransferExpired"} <= types
    monkeypatch.setattr(audit, "_SPAN_RECORDS", 37)
    monkeypatch.setattr(audit, "_FIRST_SPAN_RECORDS", 5)
    monkeypatch.setattr(audit, "CHUNK_POSITIONS", 101)
    states = []
    for name in PASSES:
        _set_pass(monkeypatch, name)
        scan = audit._WalScan(tmp_path)
        books = audit._Books()
        scan.books = books
        scan.run(books.apply, None)
        states.append(
            (
                _comparable(books.accounts),
                books.transfers,
                books.rows.digest(),
                audit._transfer_states(books.transfers),
                books.forbidden,
                scan.chunk_hashes,
                scan.position,
            )
        )
    assert states[0] == states[1] == states[2]
    accounts = states[0][0]
    for account in book.state.accounts.values():  # and the state is the node's
        assert tuple(accounts[str(account.id)][:4]) == tuple(account.balances())


def test_envelopes_read_ahead_are_used_only_for_their_own_buffer(tmp_path: Path) -> None:
    # apply_records takes the envelopes parse_records read on the checking thread; given
    # those of another buffer, or at other offsets, it reads the records itself.
    _, batches = _book_batches()
    _write(tmp_path, batches)
    data = segment_paths(tmp_path)[0].read_bytes()
    copy = bytes(bytearray(data))  # the same bytes at another address
    start = HEADER_BYTES
    parsed = BOOKS.parse_records(data, start, 50)
    states = []
    for buf, ahead, first in (
        (data, None, 0),
        (data, parsed, 0),
        (copy, parsed, 0),
        (data, parsed, 7),
    ):
        books = audit._Books()
        hashes: list[bytes] = []
        off, position = start, 0
        while position < 50:  # accounts are opened in Python, transfers natively
            off, position, applied = BOOKS.apply_records(
                buf, off, 50 - position, position, books.accounts, books.transfers,
                books.forbidden, hashes, books.rows, 1 << 40, ahead, first + position,
            )  # fmt: skip
            if not applied:
                length, clen = audit._LENGTHS.unpack_from(buf, off)
                position += 1
                books.apply(position, audit._envelope(position, buf[off + 32 : off + 32 + clen]))
                hashes.append(buf[off + 8 + length - 32 : off + 8 + length])
                off += 8 + length
        states.append(
            (off, _comparable(books.accounts), books.transfers, books.rows.digest(), hashes)
        )
    assert states[0] == states[1] == states[2] == states[3]
    assert len(states[0][4]) > 0  # some transfers were applied


def test_strings_with_escapes_anywhere_read_alike(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Metadata strings of every length, with quotes, backslashes, control characters
    # (which JSON escapes) and non-ASCII text at every offset around 16-byte blocks.
    _, batches = _book_batches()
    records = [r for batch in batches[:3] for r in batch]
    changes = {}
    for i, r in enumerate(records):
        if r.type == "TransferCreated" and i % 3 == 0:
            n = i % 40
            text = "x" * n + '"\\\n\t\x01é'[i % 6] + "y" * (i % 17)
            changes[i] = {**r.data, "metadata": {"note" * (i % 3): text, "k" + "z" * n: "ü" * n}}
    _write(tmp_path, [_rechained(records, changes)])
    native, python, reference = _both(tmp_path, monkeypatch)
    assert native == python == reference
    assert native[0] == len(records)
    # ... and the native pass read every transfer event itself, none fell back.
    _set_pass(monkeypatch, "native")
    by_python: list[str] = []
    apply = audit._Books.apply

    def counted(self: audit._Books, position: int, env: audit._Envelope) -> None:
        by_python.append(env.type)
        apply(self, position, env)

    monkeypatch.setattr(audit._Books, "apply", counted)
    audit.replay_wal(tmp_path, None, "book")
    assert by_python and set(by_python) == {"AccountOpened"}


def test_the_transfers_states_hash_alike_natively_and_in_python(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    debit, credit = "5c47577b-3f12-468e-b2ff-d03d4eac98d6", "8262cdc5-56b2-43e4-ac4c-277b5481e736"
    transfers: dict[str, Any] = {
        "a": ("none", 5, 0, debit, credit, "single", "EUR"),
        "b": ["pending", 7, 0, debit, credit, "pending", "USD", None],
        "c": ["posted", 7, 6, credit, debit, "pending", "USD", 42],
        "d": ("none", 6, 0, debit.upper(), credit, "post", "USD"),
        "e": ["expired", (1 << 63) - 1, 0, debit, credit, "pending", "ÉUR", 1 << 40],
    }
    native = BOOKS.transfer_states(transfers)
    monkeypatch.setattr(audit, "_native_books", None)
    reference = audit._transfer_states(transfers)
    assert native is not None and native == reference
    # Each field is in the digest: any change to any of them changes it.
    for key in transfers:
        for i in range(len(transfers[key])):
            changed = dict(transfers)
            row = list(transfers[key])
            value = row[i]
            if i in (3, 4):
                row[i] = credit if value.lower() == debit else debit
            elif isinstance(value, str):
                row[i] = value + "x"
            else:
                row[i] = 9 if value is None else value - 1
            changed[key] = type(transfers[key])(row)
            assert audit._transfer_states(changed) != reference, (key, i)
    # An id the native code does not read (braces) is left to the reference, alike.
    braced = {**transfers, "f": ("none", 1, 0, "{" + debit + "}", credit, "single", "EUR")}
    assert BOOKS.transfer_states(braced) is None
    monkeypatch.setattr(audit, "_native_books", BOOKS)
    with_native = audit._transfer_states(braced)
    monkeypatch.setattr(audit, "_native_books", None)
    assert with_native == audit._transfer_states(braced) != reference
    # A state that cannot be put in bytes: no digest (the rows are then compared one by one).
    assert audit._transfer_states({"g": ("none", "5", 0, debit, credit, "single", "EUR")}) is None
