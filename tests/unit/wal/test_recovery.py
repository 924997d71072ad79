"""Recovery: a torn tail is moved aside and truncated; anything else refuses to open.

Goal: after a crash the log keeps exactly its whole batches, and damage to acknowledged
records is never "repaired" silently. Method: real logs written by ``open_wal``, damaged
byte by byte on disk (truncation, bit flips, deleted, swapped and edited records,
dropped and renamed segments), then reopened.
"""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import google_crc32c
import pytest

from ledger.adapters.wal import TornTailReport, WalCorruption, open_wal, verify_wal
from ledger.application.records import EventRecord

from .support import (
    HEADER_BYTES,
    Frame,
    all_frames,
    flip_bit,
    frames,
    make_records,
    rewrite_crc,
    segments,
    write_log,
)


def reopen(directory: Path) -> tuple[list[EventRecord], TornTailReport | None]:
    """Open (recover), read everything, append one more batch, close; check it reopens."""
    wal, report = open_wal(directory, segment_size_bytes=4096)
    try:
        records = list(wal.read())
        wal.append_batch(make_records(wal.last_position + 1, wal.last_hash, 1))
    finally:
        wal.close()
    again, second = open_wal(directory, segment_size_bytes=4096)
    again.close()
    assert second is None
    return records, report


def expect_refusal(directory: Path, segment: Path, offset: int, reason: str) -> WalCorruption:
    before = {p.name: p.read_bytes() for p in directory.iterdir() if p.suffix == ".wal"}
    with pytest.raises(WalCorruption) as caught:
        open_wal(directory, segment_size_bytes=4096)
    error = caught.value
    assert (error.segment.name, error.offset) == (segment.name, offset), str(error)
    assert reason in error.reason
    assert str(error).startswith(f"corrupt WAL: {segment.name} at byte {offset}: ")
    after = {p.name: p.read_bytes() for p in directory.iterdir() if p.suffix == ".wal"}
    assert after == before  # a refusal changes nothing
    with pytest.raises(WalCorruption):
        verify_wal(directory)
    return error


# --- torn tails -------------------------------------------------------------------------


def test_truncation_at_every_byte_of_the_last_record_keeps_exactly_the_whole_records(
    tmp_path: Path,
) -> None:
    source = tmp_path / "source"
    records = write_log(source, [1] * 5)
    (segment,) = segments(source)
    intact = segment.read_bytes()
    last = frames(segment)[-1]
    for cut in range(last.offset, last.end):
        directory = tmp_path / f"cut-{cut}"
        directory.mkdir()
        (directory / segment.name).write_bytes(intact[:cut])
        read, report = reopen(directory)
        assert read == records[:4], cut
        if cut == last.offset:
            assert report is None  # the file ends on a record boundary: nothing torn
        else:
            assert report is not None
            assert (report.offset, report.bytes_removed, report.last_position) == (
                last.offset,
                cut - last.offset,
                4,
            )
            assert report.aside_path.read_bytes() == intact[last.offset : cut]
        shutil.rmtree(directory)


def test_a_torn_tail_is_copied_aside_truncated_and_reported(tmp_path: Path) -> None:
    records = write_log(tmp_path, [2, 2, 1])
    (segment,) = segments(tmp_path)
    last = frames(segment)[-1]
    intact = segment.read_bytes()
    flip_bit(segment, last.offset + 40)
    summary = verify_wal(tmp_path)  # verify reports it and changes nothing
    assert summary.torn_tail is not None and summary.torn_tail.offset == last.offset
    assert segment.stat().st_size == len(intact)
    wal, report = open_wal(tmp_path)
    assert report is not None and wal.recovery_report == report
    assert report.segment == segment
    assert report.offset == last.offset
    assert report.bytes_removed == last.end - last.offset
    assert report.aside_path == tmp_path / f"torn-{segment.stem}-{last.offset}.bin"
    assert report.last_position == 4
    assert "crc32c mismatch (record position 5), followed only by the end of the file" in (
        report.reason
    )
    assert segment.stat().st_size == last.offset
    assert list(wal.read()) == records[:4]
    wal.close()


def test_an_unfinished_batch_is_removed_whole(tmp_path: Path) -> None:
    """A crash in the middle of writing a batch leaves some of its records intact; none of
    the batch was acknowledged, so recovery removes all of it (a linked chain of commands
    must never be half-replayed into the event store)."""
    records = write_log(tmp_path, [3, 5])
    (segment,) = segments(tmp_path)
    batch = frames(segment)[3:]
    intact = segment.read_bytes()
    segment.write_bytes(intact[: batch[2].offset + 20])  # positions 4 and 5 are whole
    wal, report = open_wal(tmp_path)
    assert report is not None
    assert (report.offset, report.last_position) == (batch[0].offset, 3)
    assert "unfinished batch 4..8 (positions 4..5 written)" in report.reason
    assert report.aside_path.read_bytes() == intact[batch[0].offset : batch[2].offset + 20]
    assert list(wal.read()) == records[:3]
    wal.close()


def test_a_batch_cut_exactly_between_two_of_its_records_is_still_unfinished(
    tmp_path: Path,
) -> None:
    write_log(tmp_path, [3, 5])
    (segment,) = segments(tmp_path)
    batch = frames(segment)[3:]
    segment.write_bytes(segment.read_bytes()[: batch[3].offset])
    wal, report = open_wal(tmp_path)
    wal.close()
    assert report is not None and report.last_position == 3
    assert report.reason == "unfinished batch 4..8 (positions 4..6 written)"


def test_pages_of_the_last_batch_reaching_disk_out_of_order_are_a_torn_tail(
    tmp_path: Path,
) -> None:
    """Without its fdatasync, any subset of a batch's pages may be on disk after a crash:
    a hole in the last batch followed by more of the same batch is still a torn tail."""
    records = write_log(tmp_path, [2, 6])
    (segment,) = segments(tmp_path)
    batch_start, hole = frames(segment)[2].offset, frames(segment)[3]
    data = bytearray(segment.read_bytes())
    data[hole.offset : hole.end] = bytes(hole.end - hole.offset)
    segment.write_bytes(bytes(data))
    wal, report = open_wal(tmp_path)
    assert list(wal.read()) == records[:2]
    wal.close()
    assert report is not None and report.last_position == 2
    assert report.reason == (
        "zero length field followed by non-zero bytes (record position 4), followed only "
        "by 4 records of its own unfinished batch; unfinished batch 3..8 (position 3 written)"
    )
    assert (report.offset, report.bytes_removed) == (batch_start, len(data) - batch_start)


def test_a_torn_tail_followed_by_zeros_is_recovered(tmp_path: Path) -> None:
    records = write_log(tmp_path, [1] * 6, segment_size_bytes=8192, preallocate=True)
    (segment,) = segments(tmp_path)
    last = frames(segment)[-1]
    flip_bit(segment, last.end - 1)
    wal, report = open_wal(tmp_path, segment_size_bytes=8192, preallocate=True)
    assert report is not None and report.last_position == 5
    assert report.reason.endswith("followed only by zeros")
    assert report.bytes_removed == last.end - last.offset
    assert segment.stat().st_size == 8192  # preallocated again after the truncation
    assert list(wal.read()) == records[:5]
    wal.close()


def test_preallocated_zeros_after_the_last_record_are_not_damage(tmp_path: Path) -> None:
    records = write_log(tmp_path, [3, 3], segment_size_bytes=8192, preallocate=True)
    wal, report = open_wal(tmp_path, segment_size_bytes=8192, preallocate=True)
    assert report is None
    assert list(wal.read()) == records
    wal.close()


def test_garbage_after_a_zero_length_field_is_a_torn_tail(tmp_path: Path) -> None:
    records = write_log(tmp_path, [1] * 3, segment_size_bytes=8192, preallocate=True)
    (segment,) = segments(tmp_path)
    with segment.open("r+b") as f:
        f.seek(6000)
        f.write(b"\xff" * 13)
    wal, report = open_wal(tmp_path, segment_size_bytes=8192, preallocate=True)
    assert list(wal.read()) == records
    wal.close()
    assert report is not None and report.last_position == 3
    assert report.offset == frames(segment)[-1].end
    assert report.reason.startswith("zero length field followed by non-zero bytes")
    assert report.aside_path.stat().st_size == 6016 - report.offset


def test_an_empty_last_segment_after_a_rotation_is_fine(tmp_path: Path) -> None:
    """As if the process died between installing a new segment and writing to it."""
    records = write_log(tmp_path, [20], segment_size_bytes=4096)
    body = struct.pack("<8sIIQQ32s", b"ELWALSEG", 1, HEADER_BYTES, 2, 21, records[-1].hash)
    header = body + struct.pack("<II", google_crc32c.value(body), 0)
    (tmp_path / "00000000000000000021.wal").write_bytes(header)
    read, report = reopen(tmp_path)
    assert report is None and read == records
    assert len(segments(tmp_path)) == 2
    assert frames(segments(tmp_path)[1])[0].position == 21


def test_a_segment_that_never_got_its_name_is_removed(tmp_path: Path) -> None:
    records = write_log(tmp_path, [2])
    (tmp_path / "00000000000000000003.wal.tmp").write_bytes(b"partial header")
    (tmp_path / "spare-segment.tmp").write_bytes(bytes(100))
    read, report = reopen(tmp_path)
    assert report is None and read == records
    assert not list(tmp_path.glob("*.tmp"))


# --- corruption before the tail --------------------------------------------------------


def bit_flip_targets(frame: Frame) -> list[int]:
    """Offsets inside a record: length, CRC, position, batch fields, canonical length,
    canonical bytes, padding (if any) and the hash."""
    canonical_start = frame.offset + 32
    targets = [
        frame.offset,
        frame.offset + 2,
        frame.offset + 3,
        frame.offset + 5,
        frame.offset + 8,
        frame.offset + 16,
        frame.offset + 24,
        frame.offset + 28,
        canonical_start + len(frame.canonical) // 2,
        frame.end - 1,
    ]
    padding_start = canonical_start + len(frame.canonical)
    if padding_start < frame.end - 32:
        targets.append(padding_start)
    return targets


def test_one_flipped_bit_in_any_record_is_always_detected(tmp_path: Path) -> None:
    """In the last record it is a torn tail; anywhere else the log refuses to open,
    naming the segment and the byte offset of the damaged record."""
    source = tmp_path / "source"
    records = write_log(source, [1] * 20, segment_size_bytes=4096)
    assert len(segments(source)) >= 2
    parsed = all_frames(source)
    last = parsed[-1]
    directory = tmp_path / "damaged"
    for frame in parsed:
        for target in bit_flip_targets(frame):
            shutil.copytree(source, directory)
            segment = directory / frame.segment.name
            flip_bit(segment, target, bit=target % 8)
            if frame is last:
                read, report = reopen(directory)
                assert read == records[:-1]
                assert report is not None
                assert (report.segment.name, report.offset) == (segment.name, frame.offset)
            else:
                expect_refusal(directory, segment, frame.offset, f"position {frame.position}")
            shutil.rmtree(directory)


def test_a_bad_record_followed_by_valid_records_is_refused(tmp_path: Path) -> None:
    write_log(tmp_path, [1] * 6)
    (segment,) = segments(tmp_path)
    bad = frames(segment)[2]
    flip_bit(segment, bad.offset + 50)
    error = expect_refusal(tmp_path, segment, bad.offset, "crc32c mismatch")
    assert error.reason == "crc32c mismatch (record position 3), followed by valid records"
    assert error.position == 3


def test_damage_in_a_batch_before_the_last_is_refused_even_if_the_last_batch_is_whole(
    tmp_path: Path,
) -> None:
    write_log(tmp_path, [3, 4])
    (segment,) = segments(tmp_path)
    bad = frames(segment)[1]
    flip_bit(segment, bad.offset + 60)
    expect_refusal(tmp_path, segment, bad.offset, "followed by valid records")


def test_a_deleted_record_is_refused(tmp_path: Path) -> None:
    write_log(tmp_path, [1] * 6)
    (segment,) = segments(tmp_path)
    gone = frames(segment)[2]
    data = segment.read_bytes()
    segment.write_bytes(data[: gone.offset] + data[gone.end :])
    expect_refusal(tmp_path, segment, gone.offset, "record position 4 where 3 expected")


def test_two_swapped_records_are_refused(tmp_path: Path) -> None:
    write_log(tmp_path, [1] * 6)
    (segment,) = segments(tmp_path)
    a, b = frames(segment)[2:4]
    data = segment.read_bytes()
    swapped = data[: a.offset] + data[b.offset : b.end] + data[a.offset : a.end] + data[b.end :]
    segment.write_bytes(swapped)
    expect_refusal(tmp_path, segment, a.offset, "record position 4 where 3 expected")


def test_a_dropped_middle_segment_is_refused(tmp_path: Path) -> None:
    write_log(tmp_path, [2] * 30, segment_size_bytes=4096)
    paths = segments(tmp_path)
    assert len(paths) >= 4
    first_missing = frames(paths[1])[0].position
    after = frames(paths[2])[0].position
    paths[1].unlink()
    expect_refusal(
        tmp_path,
        paths[2],
        0,
        f"segment starts at position {after} where {first_missing} expected: "
        f"positions {first_missing}..{after - 1} are missing",
    )


def test_a_dropped_first_segment_is_refused(tmp_path: Path) -> None:
    write_log(tmp_path, [2] * 30, segment_size_bytes=4096)
    paths = segments(tmp_path)
    paths[0].unlink()
    expect_refusal(tmp_path, paths[1], 0, "where 1 expected")


def test_renamed_segments_are_refused(tmp_path: Path) -> None:
    write_log(tmp_path, [2] * 30, segment_size_bytes=4096)
    paths = segments(tmp_path)
    second, third = paths[1], paths[2]
    parked = tmp_path / "parked"
    second.rename(parked)
    third.rename(second)
    parked.rename(third)
    expect_refusal(tmp_path, second, 0, "header says first position")


def test_segment_contents_swapped_with_their_names_kept_are_refused(tmp_path: Path) -> None:
    """A header edited to match its new name, with a valid header CRC, still fails on
    the segment number and the chain link."""
    write_log(tmp_path, [2] * 30, segment_size_bytes=4096)
    paths = segments(tmp_path)
    raw = bytearray(paths[2].read_bytes())
    struct.pack_into("<Q", raw, 16, 2)
    struct.pack_into("<I", raw, 64, google_crc32c.value(bytes(raw[:64])))
    paths[2].write_bytes(bytes(raw))
    expect_refusal(tmp_path, paths[2], 0, "segment number 2 where 3 expected")


def test_a_header_whose_previous_hash_does_not_link_is_refused(tmp_path: Path) -> None:
    write_log(tmp_path, [2] * 30, segment_size_bytes=4096)
    paths = segments(tmp_path)
    raw = bytearray(paths[1].read_bytes())
    raw[40] ^= 1
    struct.pack_into("<I", raw, 64, google_crc32c.value(bytes(raw[:64])))
    paths[1].write_bytes(bytes(raw))
    expect_refusal(tmp_path, paths[1], 0, "hash chain broken between segments")


def test_a_damaged_segment_header_is_refused(tmp_path: Path) -> None:
    write_log(tmp_path, [2] * 30, segment_size_bytes=4096)
    paths = segments(tmp_path)
    flip_bit(paths[-1], 30)
    expect_refusal(tmp_path, paths[-1], 0, "segment header crc32c mismatch")


def test_a_segment_too_short_for_its_header_is_refused(tmp_path: Path) -> None:
    write_log(tmp_path, [2] * 30, segment_size_bytes=4096)
    paths = segments(tmp_path)
    paths[-1].write_bytes(paths[-1].read_bytes()[: HEADER_BYTES - 1])
    expect_refusal(tmp_path, paths[-1], 0, "segment header incomplete")


@pytest.mark.parametrize("which", ["middle", "last"])
def test_an_edited_payload_with_a_recomputed_crc_breaks_the_hash_chain(
    tmp_path: Path, which: str
) -> None:
    """CRC32C catches accidents; the hash chain catches edits. Even in the last record an
    edit with a valid CRC is corruption, never a torn tail."""
    write_log(tmp_path, [1] * 6)
    (segment,) = segments(tmp_path)
    target = frames(segment)[2 if which == "middle" else -1]
    data = bytearray(segment.read_bytes())
    at = target.offset + 32 + target.canonical.index(b'"amount_minor":') + 15
    data[at] = ord("9") if data[at] != ord("9") else ord("8")
    segment.write_bytes(bytes(data))
    rewrite_crc(segment, target)
    expect_refusal(tmp_path, segment, target.offset, "hash chain broken")


def test_an_edited_hash_with_a_recomputed_crc_is_refused(tmp_path: Path) -> None:
    write_log(tmp_path, [1] * 6)
    (segment,) = segments(tmp_path)
    target = frames(segment)[3]
    data = bytearray(segment.read_bytes())
    data[target.end - 5] ^= 0x10
    segment.write_bytes(bytes(data))
    rewrite_crc(segment, target)
    expect_refusal(tmp_path, segment, target.offset, "hash chain broken")


def test_a_record_whose_batch_fields_were_edited_is_refused(tmp_path: Path) -> None:
    write_log(tmp_path, [3, 3])
    (segment,) = segments(tmp_path)
    target = frames(segment)[1]
    data = bytearray(segment.read_bytes())
    struct.pack_into("<I", data, target.offset + 24, 2)
    segment.write_bytes(bytes(data))
    rewrite_crc(segment, target)
    expect_refusal(tmp_path, segment, target.offset, "inside batch 1..3")


def test_a_segment_ending_inside_a_batch_is_refused_unless_it_is_the_last(
    tmp_path: Path,
) -> None:
    write_log(tmp_path, [4] * 12, segment_size_bytes=4096)
    paths = segments(tmp_path)
    cut = frames(paths[0])[-2]
    paths[0].write_bytes(paths[0].read_bytes()[: cut.offset])
    expect_refusal(tmp_path, paths[0], cut.offset, "segment ends inside batch")


def test_a_bad_last_record_of_a_segment_that_is_not_the_last_is_refused(
    tmp_path: Path,
) -> None:
    write_log(tmp_path, [2] * 30, segment_size_bytes=4096)
    paths = segments(tmp_path)
    last_of_first = frames(paths[0])[-1]
    flip_bit(paths[0], last_of_first.offset + 40)
    expect_refusal(tmp_path, paths[0], last_of_first.offset, f"and {paths[1].name} follows")
