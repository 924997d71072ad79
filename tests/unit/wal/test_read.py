"""Reading: from any position, across segments, checked again after reading."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import google_crc32c
import pytest

from ledger.adapters.wal import WalCorruption, open_wal, read_wal, scan_records, verify_wal
from ledger.application.records import GENESIS_HASH, compute_hash, verify_chain

from .support import all_frames, flip_bit, frames, make_records, segments, write_log


def test_reads_from_every_position_across_segments(tmp_path: Path) -> None:
    records = write_log(tmp_path, [1, 3, 2, 5, 4] * 4, segment_size_bytes=4096)
    wal, _ = open_wal(tmp_path, segment_size_bytes=4096)
    assert len(wal.segments()) > 3
    for first in range(1, len(records) + 2):
        assert list(wal.read(first)) == records[first - 1 :]
        assert list(wal.read(first, first + 6)) == records[first - 1 : first + 6]
    wal.close()


def test_reads_a_single_record_from_a_large_segment_without_scanning_all_of_it(
    tmp_path: Path,
) -> None:
    """Recovery's scan and each append leave an index entry every 1024 records or so, at
    a batch start, so ``read(p, p)`` (the node's binary search) starts close to ``p``."""
    records = write_log(tmp_path, [50] * 60, segment_size_bytes=64 << 20)
    wal, _ = open_wal(tmp_path, segment_size_bytes=64 << 20)
    more = make_records(wal.last_position + 1, wal.last_hash, 40)
    for start in range(0, 40, 8):
        wal.append_batch(more[start : start + 8])
    records += more
    for position in (1, 2, 1023, 1024, 1025, 1051, 2047, 2999, 3000, 3001, 3033, 3040):
        assert list(wal.read(position, position)) == [records[position - 1]]
    assert len(wal._indexes[0]) >= 3  # the index exists (white-box: the speed-up itself)
    wal.close()


def test_a_read_sees_the_records_appended_before_it_was_started(tmp_path: Path) -> None:
    wal, _ = open_wal(tmp_path)
    first = make_records(1, GENESIS_HASH, 3)
    wal.append_batch(first)
    reading = wal.read()
    wal.append_batch(make_records(4, wal.last_hash, 2))
    assert list(reading) == first
    wal.close()


def test_read_records_verify_against_the_chain(tmp_path: Path) -> None:
    records = write_log(tmp_path, [4, 4, 4], segment_size_bytes=4096)
    read = list(read_wal(tmp_path))
    assert read == records
    assert list(verify_chain(read, 1, GENESIS_HASH)) == records
    for record in read:
        assert compute_hash(record.prev_hash, record.canonical()) == record.hash


def test_damage_after_opening_is_found_by_the_next_read(tmp_path: Path) -> None:
    wal, _ = open_wal(tmp_path)
    wal.append_batch(make_records(1, GENESIS_HASH, 6))
    (segment,) = segments(tmp_path)
    bad = frames(segment)[2]
    flip_bit(segment, bad.offset + 44)
    with pytest.raises(WalCorruption) as caught:
        list(wal.read())
    assert (caught.value.segment, caught.value.offset) == (segment, bad.offset)
    assert list(wal.read(1, 2)) == list(read_wal(tmp_path, 1, 2))
    wal.close()


def test_reading_refuses_an_envelope_that_disagrees_with_its_frame(tmp_path: Path) -> None:
    """A forged last record whose JSON position differs from its frame, with the hash and
    CRC recomputed: the fast verify (stored bytes and chain) accepts it; decoding, which
    cross-checks the envelope, does not."""
    write_log(tmp_path, [1] * 3)
    (segment,) = segments(tmp_path)
    last = all_frames(tmp_path)[-1]
    forged = last.canonical.replace(b'"position":3,', b'"position":7,')
    assert forged != last.canonical
    prev = all_frames(tmp_path)[-2].hash
    payload = (
        struct.pack("<QQII", 3, 3, 1, len(forged))
        + forged
        + bytes(-len(forged) & 7)
        + hashlib.sha256(prev + forged).digest()
    )
    frame = struct.pack("<II", len(payload), google_crc32c.value(payload)) + payload
    segment.write_bytes(segment.read_bytes()[: last.offset] + frame)
    assert verify_wal(tmp_path).last_position == 3
    with pytest.raises(WalCorruption, match="envelope disagrees"):
        list(read_wal(tmp_path))


def test_read_wal_stops_before_a_torn_tail_and_never_changes_the_log(tmp_path: Path) -> None:
    records = write_log(tmp_path, [1] * 4)
    (segment,) = segments(tmp_path)
    size = segment.stat().st_size
    flip_bit(segment, frames(segment)[-1].offset + 50)
    assert list(read_wal(tmp_path)) == records[:3]
    assert segment.stat().st_size == size


def test_read_rejects_a_position_below_one(tmp_path: Path) -> None:
    write_log(tmp_path, [1])
    with pytest.raises(ValueError):
        list(read_wal(tmp_path, 0))


def test_scan_records_yields_the_checked_canonical_bytes_and_hashes(tmp_path: Path) -> None:
    records = write_log(tmp_path, [3, 1, 4, 1, 5] * 3, segment_size_bytes=4096)
    expected = [(r.position, r.canonical(), r.hash) for r in records]
    assert list(scan_records(tmp_path)) == expected
    assert list(scan_records(tmp_path, 7, 19)) == expected[6:19]
    assert list(scan_records(tmp_path, len(records))) == expected[-1:]
    assert list(scan_records(tmp_path, 5, 4)) == []


def test_scan_records_raises_where_the_log_is_damaged(tmp_path: Path) -> None:
    write_log(tmp_path, [1] * 6)
    (segment,) = segments(tmp_path)
    bad = frames(segment)[3]
    flip_bit(segment, bad.offset + 40)
    seen: list[int] = []
    with pytest.raises(WalCorruption) as caught:
        for position, _, _ in scan_records(tmp_path):
            seen.append(position)
    assert seen == [1, 2, 3]
    assert (caught.value.segment, caught.value.offset) == (segment, bad.offset)


def test_scan_records_does_not_stop_quietly_at_a_zeroed_length_field(tmp_path: Path) -> None:
    write_log(tmp_path, [1] * 6)
    (segment,) = segments(tmp_path)
    hole = frames(segment)[2]
    data = bytearray(segment.read_bytes())
    data[hole.offset : hole.offset + 4] = bytes(4)
    segment.write_bytes(bytes(data))
    with pytest.raises(WalCorruption, match="zero length field followed by non-zero bytes"):
        list(scan_records(tmp_path))


def test_scan_records_raises_at_an_unfinished_last_batch(tmp_path: Path) -> None:
    write_log(tmp_path, [2, 4])
    (segment,) = segments(tmp_path)
    segment.write_bytes(segment.read_bytes()[: frames(segment)[4].offset])
    with pytest.raises(WalCorruption, match=r"unfinished batch 3\.\.6"):
        list(scan_records(tmp_path))
