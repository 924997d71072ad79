"""The native check of the event store's rows (``_replay.store_chunk``) on binary COPY
buffers built here: each finding at its row, as the SQL check gives them."""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import struct
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from ledger import _replay, audit
from ledger.adapters.wal import HEADER_BYTES, open_wal, segment_paths
from ledger.application.records import EventRecord, canonical_bytes
from projections.workload import SyntheticBook
from tests.unit.test_audit_paths import _rechained

HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
TRAILER = struct.pack(">h", -1)
GENESIS = bytes(32)


def row(position: int, prev: bytes, canonical: bytes, stored: bytes | None = None) -> bytes:
    digest = stored if stored is not None else hashlib.sha256(prev + canonical).digest()
    fields = [struct.pack(">q", position), prev, digest, canonical]
    return struct.pack(">h", 4) + b"".join(struct.pack(">i", len(f)) + f for f in fields)


def chain(positions: list[int], prev: bytes = GENESIS) -> tuple[list[bytes], list[bytes]]:
    rows, hashes = [], []
    for p in positions:
        canonical = b'{"position":%d}' % p
        rows.append(row(p, prev, canonical))
        prev = hashlib.sha256(prev + canonical).digest()
        hashes.append(prev)
    return rows, hashes


def test_a_clean_chunk_gives_its_hashes_and_last_position() -> None:
    rows, hashes = chain([1, 2, 3])
    got = _replay.store_chunk(HEADER + b"".join(rows) + TRAILER, 0, GENESIS)
    assert got == (None, None, None, 0, b"".join(hashes), 3)


def test_an_empty_chunk_has_no_last_position() -> None:
    assert _replay.store_chunk(HEADER + TRAILER, 7, GENESIS) == (None, None, None, 0, b"", None)


def test_a_gap_a_broken_link_and_an_edit_are_each_found_at_their_row() -> None:
    rows, hashes = chain([1, 2, 3, 4, 5, 6])
    # position 3 deleted; row 5's prev_hash changed (the link breaks, and it no longer
    # hashes); row 6 edited with its hash left alone
    broken = row(5, bytes(32), b'{"position":5}', stored=hashes[4])
    edited = row(6, hashes[4], b'{"position":66}', stored=hashes[5])
    buf = HEADER + rows[0] + rows[1] + rows[3] + broken + edited + TRAILER
    gap, missing, unchained, unsame, got, top = _replay.store_chunk(buf, 0, GENESIS)
    assert (gap, missing) == (4, 3)
    assert unchained == 4  # row 4's prev_hash is row 3's hash, not row 2's
    assert unsame == 2  # rows 5 and 6
    assert got == b"".join([hashes[0], hashes[1], hashes[3], hashes[4], hashes[5]])
    assert top == 6


def test_the_chunk_follows_the_row_before_it() -> None:
    rows, hashes = chain([1, 2, 3, 4])
    buf = HEADER + rows[2] + rows[3] + TRAILER
    assert _replay.store_chunk(buf, 2, hashes[1])[:4] == (None, None, None, 0)
    gap, missing, unchained, _, _, _ = _replay.store_chunk(buf, 1, hashes[0])
    assert (gap, missing, unchained) == (3, 2, 3)


def test_hashes_of_another_length_are_findings_not_errors() -> None:
    rows, hashes = chain([1, 2, 3])
    short = row(2, b"", b'{"position":2}', stored=b"\x01" * 5)
    gap, missing, unchained, unsame, got, top = _replay.store_chunk(
        HEADER + rows[0] + short + rows[2] + TRAILER, 0, GENESIS
    )
    assert (gap, missing, top) == (None, None, 3)
    assert unchained == 2 and unsame == 1
    # the short hash comes back zero-padded, so it differs from the WAL's
    assert got[32:64] == b"\x01" * 5 + bytes(27)
    assert got[:32] == hashes[0] and got[64:] == hashes[2]


@pytest.mark.parametrize(
    "buf",
    [b"", b"COPY", HEADER, HEADER + chain([1])[0][0], HEADER + chain([1])[0][0][:-3] + TRAILER],
    ids=["empty", "no signature", "no trailer", "row then no trailer", "row cut short"],
)
def test_a_broken_buffer_is_an_error_not_a_finding(buf: bytes) -> None:
    with pytest.raises(ValueError, match="store_chunk"):
        _replay.store_chunk(buf, 0, GENESIS)


def test_a_last_hash_of_the_wrong_size_is_refused() -> None:
    with pytest.raises(ValueError, match="bad last hash"):
        _replay.store_chunk(HEADER + TRAILER, 0, b"short")


# The columns' form: (position, prev_hash, hash, data, event_id, recorded_at_us,
# schema_version, stream_id, stream_version, type), as the audit's COPY sends them; the
# extension puts the canonical bytes together as the node does (canonical_bytes).


def column_row(
    position: int,
    prev: bytes,
    *,
    recorded_at_us: int = 1_700_000_000_123_456,
    schema_version: int = 1,
    stream_version: int = 3,
    data: dict[str, object] | None = None,
    nulls: tuple[int, ...] = (),
    stored: bytes | None = None,
) -> tuple[bytes, bytes]:
    event_id = uuid.UUID(int=position * 0x9E3779B97F4A7C15 % (1 << 128))
    data = data if data is not None else {"amount_minor": position, "memo": "é ☃"}
    canonical = canonical_bytes(
        position,
        event_id,
        f"account-{position}",
        stream_version,
        "TransferCreated",
        schema_version,
        recorded_at_us,
        data,
        prev,
    )
    digest = hashlib.sha256(prev + canonical).digest()
    fields: list[bytes | None] = [
        struct.pack(">q", position),
        prev,
        stored if stored is not None else digest,
        orjson.dumps(data),
        event_id.bytes,
        struct.pack(">q", recorded_at_us),
        struct.pack(">i", schema_version),
        f"account-{position}".encode(),
        struct.pack(">q", stream_version),
        b"TransferCreated",
    ]
    for n in nulls:
        fields[n] = None
    body = b"".join(
        struct.pack(">i", -1) if f is None else struct.pack(">i", len(f)) + f for f in fields
    )
    return struct.pack(">h", len(fields)) + body, digest


def test_rows_of_columns_hash_as_the_node_put_them_together() -> None:
    prev, rows, hashes = GENESIS, [], []
    for p, extra in enumerate(
        [
            {},
            {"recorded_at_us": -5, "schema_version": -2},
            {"stream_version": 0},
            {"data": {}},
            {"recorded_at_us": 2**63 - 1},
        ],
        start=1,
    ):
        r, prev = column_row(p, prev, **extra)  # type: ignore[arg-type]
        rows.append(r)
        hashes.append(prev)
    got = _replay.store_chunk(HEADER + b"".join(rows) + TRAILER, 0, GENESIS)
    assert got == (None, None, None, 0, b"".join(hashes), 5)


def test_an_edited_or_null_column_makes_the_row_not_hash() -> None:
    first, h1 = column_row(1, GENESIS)
    _, h2 = column_row(2, h1)
    # Row 2's schema_version edited after it was hashed; row 3 with a NULL stream_id.
    edited, _ = column_row(2, h1, schema_version=2, stored=h2)
    null, _ = column_row(3, h2, nulls=(7,))
    _, _, unchained, unsame, hashes, top = _replay.store_chunk(
        HEADER + first + edited + null + TRAILER, 0, GENESIS
    )
    assert (unchained, unsame, top) == (None, 2, 3)
    assert hashes[32:64] == h2


# With a cursor over the WAL's segments: a row that is the byte-for-byte copy of its WAL
# record (canonical bytes, hash and prev_hash) is not hashed again, since the WAL pass
# checks that record's hash; every other row is hashed as without the cursor.


def _wal(directory: Path, count: int) -> list[EventRecord]:
    book = SyntheticBook(seed=3)
    records = [r for batch in book.batches(count // 50 + 1, 50) for r in batch][:count]
    wal, _ = open_wal(directory, 1 << 14)  # small segments: a chunk spans several
    for i in range(0, len(records), 25):
        wal.append_batch(records[i : i + 25])
    wal.close()
    return records


def _copy(records: list[EventRecord]) -> bytes:
    return HEADER + b"".join(row(r.position, r.prev_hash, r.canonical(), r.hash) for r in records)


def _cursor(directory: Path, stack: contextlib.ExitStack) -> list[Any]:
    segments = []
    for path in segment_paths(directory):
        with open(path, "rb") as fh:
            segments.append(stack.enter_context(mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)))
    return [segments, 0, HEADER_BYTES, 0, GENESIS]


def _chunks(records: list[EventRecord], size: int, wal: list[Any] | None) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    last, last_hash = 0, GENESIS
    for i in range(0, len(records), size):
        got = _replay.store_chunk(_copy(records[i : i + size]) + TRAILER, last, last_hash, wal)
        out.append(got)
        assert got[5] is not None
        last, last_hash = got[5], got[4][-32:]
    return out


def test_rows_checked_beside_the_wal_find_what_hashing_finds(tmp_path: Path) -> None:
    records = _wal(tmp_path, 400)
    assert len(segment_paths(tmp_path)) > 4
    with contextlib.ExitStack() as stack:
        wal = _cursor(tmp_path, stack)
        assert _chunks(records, 97, wal) == _chunks(records, 97, None)
        assert all(got[:4] == (None, None, None, 0) for got in _chunks(records, 97, None))
        # the cursor ends on the last record, in the last segment
        assert wal[3] == 400 and wal[1] == len(wal[0]) - 1 and wal[4] == records[-1].hash


def test_a_row_that_copies_its_wal_record_is_left_to_the_wal_pass(tmp_path: Path) -> None:
    """Row 150 and its WAL record carry the same edited bytes (the record's CRC no longer
    holds, which the WAL pass reports): hashed, the row does not give its hash; beside the
    WAL it is not hashed again. Row 151 edited in the store alone is hashed either way."""
    records = _wal(tmp_path, 300)
    r = records[149]
    canonical = r.canonical()
    edited = canonical.replace(b'"type":"', b'"type":"X', 1)[: len(canonical)]
    assert edited != canonical
    path, at = next(
        (p, p.read_bytes().find(canonical))
        for p in segment_paths(tmp_path)
        if canonical in p.read_bytes()
    )
    data = bytearray(path.read_bytes())
    data[at : at + len(canonical)] = edited
    path.write_bytes(bytes(data))
    rows = [row(x.position, x.prev_hash, x.canonical(), x.hash) for x in records]
    rows[149] = row(r.position, r.prev_hash, edited, r.hash)
    n = records[150]
    rows[150] = row(n.position, n.prev_hash, n.canonical() + b" ", n.hash)
    buf = HEADER + b"".join(rows) + TRAILER
    assert _replay.store_chunk(buf, 0, GENESIS)[3] == 2
    with contextlib.ExitStack() as stack:
        assert _replay.store_chunk(buf, 0, GENESIS, _cursor(tmp_path, stack))[3] == 1


def test_a_row_hashed_anew_is_not_taken_for_its_wal_record(tmp_path: Path) -> None:
    """Rows 10 and 11 replaced by other events hashed and chained anew: they hash, so no
    row is unsame, and their hashes come back to differ from the WAL's."""
    records = _wal(tmp_path, 60)
    other = _rechained(records, {i: {**records[i].data, "memo": "other"} for i in (9, 10)})
    with contextlib.ExitStack() as stack:
        got = _replay.store_chunk(_copy(other) + TRAILER, 0, GENESIS, _cursor(tmp_path, stack))
    assert got[:4] == (None, None, None, 0)
    assert got[4] == b"".join(r.hash for r in other)
    assert got[4][9 * 32 : 10 * 32] != records[9].hash


def test_rows_missing_from_the_store_are_stepped_over(tmp_path: Path) -> None:
    records = _wal(tmp_path, 200)
    kept = records[:40] + records[90:]
    with contextlib.ExitStack() as stack:
        wal = _cursor(tmp_path, stack)
        assert _chunks(kept, 50, wal) == _chunks(kept, 50, None)
        assert wal[3] == 200


def test_a_cursor_that_loses_the_wal_hashes_the_rows_after(tmp_path: Path) -> None:
    """Segments handed over out of order: the cursor stops at the first record that does
    not follow and every row after it is hashed (an edited one is still found)."""
    records = _wal(tmp_path, 200)
    rows = [row(x.position, x.prev_hash, x.canonical(), x.hash) for x in records]
    rows[180] = row(181, records[180].prev_hash, records[180].canonical() + b" ", records[180].hash)
    with contextlib.ExitStack() as stack:
        wal = _cursor(tmp_path, stack)
        wal[0] = [wal[0][0], *wal[0][2:]]
        got = _replay.store_chunk(HEADER + b"".join(rows) + TRAILER, 0, GENESIS, wal)
        assert got[:4] == (None, None, None, 1)
        assert wal[1] == len(wal[0])  # lost: past the last segment


@pytest.mark.parametrize(
    "wal",
    [[], [[], 0, 0, 0], [(), 0, HEADER_BYTES, 0, GENESIS], [[], 0, HEADER_BYTES, 0, b"x"]],
    ids=["empty", "short", "segments not a list", "bad prev"],
)
def test_a_bad_cursor_is_refused(wal: list[Any]) -> None:
    with pytest.raises((TypeError, ValueError), match="store_chunk"):
        _replay.store_chunk(HEADER + TRAILER, 0, GENESIS, wal)


# The audit's window over the segments (audit._WalBeside): per chunk it maps the segments
# the chunk's positions are in, at most _WAL_MAPPED_MAX at a time, and carries the cursor on.


def _windowed(
    records: list[EventRecord], size: int, beside: audit._WalBeside | None, mapped: list[int]
) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    last, last_hash = 0, GENESIS
    for i in range(0, len(records), size):
        chunk = records[i : i + size]
        wal = beside.cursor_for(i + 1, i + size) if beside is not None else None
        got = _replay.store_chunk(_copy(chunk) + TRAILER, last, last_hash, wal)
        if beside is not None:
            mapped.append(len(beside.maps))
            beside.moved()
        out.append(got)
        assert got[5] is not None
        last, last_hash = got[5], got[4][-32:]
    return out


def test_the_window_maps_only_what_a_chunk_needs_and_finds_what_hashing_finds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    records = _wal(tmp_path, 600)
    paths = segment_paths(tmp_path)
    assert len(paths) > 10
    monkeypatch.setattr(audit, "_WAL_MAPPED_MAX", 3)
    beside = audit._WalBeside(paths)
    mapped: list[int] = []
    try:
        assert _windowed(records, 40, beside, mapped) == _windowed(records, 40, None, [])
    finally:
        beside.close()
    assert max(mapped) <= 3 and beside.maps == {}
    # The cursor went the whole way: it ended on the last record.
    assert beside.at is not None and beside.at[2] == 600


@pytest.mark.parametrize("mapped_max", [64, 1])
def test_a_row_copied_from_its_record_is_not_hashed_in_any_window(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mapped_max: int
) -> None:
    """As test_a_row_that_copies_its_wal_record_is_left_to_the_wal_pass, in every chunk:
    a row and its record edited alike are taken as the record (the WAL pass reports it),
    so the window reached each chunk's records; with one segment mapped at a time, those
    past a chunk's first segment are hashed."""
    records = _wal(tmp_path, 300)
    edited = []
    for k in range(5, 300, 25):  # in each segment of 25 records (a chunk spans two)
        r = records[k]
        canonical = r.canonical()
        other = canonical.replace(b'"type":"', b'"type":"X', 1)[: len(canonical)]
        for path in segment_paths(tmp_path):
            data = path.read_bytes()
            if canonical in data:
                path.write_bytes(data.replace(canonical, other, 1))
                break
        edited.append((k, other))
    rows = [row(x.position, x.prev_hash, x.canonical(), x.hash) for x in records]
    for k, other in edited:
        rows[k] = row(records[k].position, records[k].prev_hash, other, records[k].hash)
    monkeypatch.setattr(audit, "_WAL_MAPPED_MAX", mapped_max)
    beside = audit._WalBeside(segment_paths(tmp_path))
    hashed = besides = 0
    last, last_hash = 0, GENESIS
    try:
        for i in range(0, 300, 50):
            buf = HEADER + b"".join(rows[i : i + 50]) + TRAILER
            hashed += _replay.store_chunk(buf, last, last_hash)[3]
            got = _replay.store_chunk(buf, last, last_hash, beside.cursor_for(i + 1, i + 50))
            beside.moved()
            besides += got[3]
            assert got[5] is not None
            last, last_hash = got[5], got[4][-32:]
    finally:
        beside.close()
    assert hashed == len(edited)
    if mapped_max == 1:
        assert 0 < besides < hashed
    else:
        assert besides == 0


def test_a_window_over_an_empty_segment_hashes_the_rows(tmp_path: Path) -> None:
    records = _wal(tmp_path, 100)
    (tmp_path / "99999999999999999999.wal").write_bytes(b"")  # past every position
    paths = segment_paths(tmp_path)
    beside = audit._WalBeside([paths[-1]])  # only the empty one
    try:
        assert beside.cursor_for(1, 100) is None
        beside.moved()
        assert _windowed(records, 100, None, []) == [
            _replay.store_chunk(_copy(records) + TRAILER, 0, GENESIS, None)
        ]
    finally:
        beside.close()
