"""Moving a conflicting tail aside (for the recorder's recovery from a deposed writer)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ledger.adapters.wal import open_wal, verify_wal
from ledger.application.records import GENESIS_HASH

from .support import all_frames, make_records, segments, write_log


def test_moves_the_tail_across_segments_into_one_side_file(tmp_path: Path) -> None:
    records = write_log(tmp_path, [3] * 20, segment_size_bytes=4096)
    originals = {p.name: p.read_bytes() for p in segments(tmp_path)}
    moved_frames = [f for f in all_frames(tmp_path) if f.position > 24]
    wal, _ = open_wal(tmp_path, segment_size_bytes=4096)
    aside = wal.move_tail_aside(24)
    assert aside is not None
    assert aside.parent == tmp_path
    assert aside.name.startswith("conflict-") and aside.name.endswith(f"-{25:020d}.wal")
    assert aside.read_bytes() == b"".join(
        originals[f.segment.name][f.offset : f.end] for f in moved_frames
    )
    assert (wal.last_position, wal.last_hash) == (24, records[23].hash)
    assert list(wal.read()) == records[:24]
    assert all_frames(tmp_path)[-1].position == 24
    new = make_records(25, wal.last_hash, 2)
    wal.append_batch(new)
    wal.close()
    summary = verify_wal(tmp_path)
    assert summary.torn_tail is None and summary.last_position == 26
    wal, report = open_wal(tmp_path, segment_size_bytes=4096)
    assert report is None and list(wal.read()) == records[:24] + new
    wal.close()


def test_moving_after_a_segment_boundary_empties_that_segment(tmp_path: Path) -> None:
    records = write_log(tmp_path, [3] * 20, segment_size_bytes=4096)
    second = segments(tmp_path)[1]
    first_of_second = int(second.name[:20])
    wal, _ = open_wal(tmp_path, segment_size_bytes=4096)
    assert wal.move_tail_aside(first_of_second - 1) is not None
    assert wal.segments() == segments(tmp_path)[:2]
    assert list(wal.read()) == records[: first_of_second - 1]
    wal.append_batch(make_records(first_of_second, wal.last_hash, 1))
    wal.close()
    assert verify_wal(tmp_path).last_position == first_of_second


def test_moving_everything_leaves_an_empty_log(tmp_path: Path) -> None:
    write_log(tmp_path, [2] * 5)
    wal, _ = open_wal(tmp_path)
    assert wal.move_tail_aside(0) is not None
    assert (wal.last_position, wal.last_hash) == (0, GENESIS_HASH)
    wal.append_batch(make_records(1, GENESIS_HASH, 1))
    wal.close()
    assert verify_wal(tmp_path).last_position == 1


def test_nothing_after_the_position_returns_none(tmp_path: Path) -> None:
    write_log(tmp_path, [2])
    wal, _ = open_wal(tmp_path)
    assert wal.move_tail_aside(2) is None
    assert not list(tmp_path.glob("conflict-*"))
    wal.close()


def test_refuses_to_cut_inside_a_batch(tmp_path: Path) -> None:
    write_log(tmp_path, [3, 4])
    wal, _ = open_wal(tmp_path)
    with pytest.raises(ValueError, match=r"inside batch 4\.\.7; .* cut at 3 or 7"):
        wal.move_tail_aside(5)
    assert wal.last_position == 7
    assert not list(tmp_path.glob("conflict-*"))
    wal.close()


def test_refuses_a_position_outside_the_log(tmp_path: Path) -> None:
    write_log(tmp_path, [3])
    wal, _ = open_wal(tmp_path)
    for position in (-1, 4):
        with pytest.raises(ValueError, match="outside"):
            wal.move_tail_aside(position)
    wal.close()


def test_a_preallocated_segment_is_zero_filled_again_after_the_cut(tmp_path: Path) -> None:
    records = write_log(tmp_path, [2] * 6, segment_size_bytes=8192, preallocate=True)
    wal, _ = open_wal(tmp_path, segment_size_bytes=8192, preallocate=True)
    wal.move_tail_aside(6)
    (segment,) = wal.segments()
    assert segment.stat().st_size == 8192
    wal.append_batch(make_records(7, wal.last_hash, 1))
    wal.close()
    wal, report = open_wal(tmp_path, segment_size_bytes=8192, preallocate=True)
    assert report is None and list(wal.read())[:6] == records[:6]
    wal.close()
