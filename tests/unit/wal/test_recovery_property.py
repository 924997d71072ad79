"""Property: whatever the batches and wherever a crash cuts the last segment, recovery
keeps exactly the batches that were wholly written before the cut, and nothing else."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.adapters.wal import WalCorruption, open_wal

from .support import HEADER_BYTES, flip_bit, frames, segments, write_log


@settings(max_examples=60, deadline=None)
@given(
    batch_sizes=st.lists(st.integers(1, 5), min_size=1, max_size=8),
    segment_size_bytes=st.sampled_from([4096, 1 << 20]),
    cut_fraction=st.floats(0, 1),
    tail=st.sampled_from([b"", bytes(300), b"\xa5" * 37]),
)
def test_recovery_keeps_exactly_the_whole_batches_before_a_crash(
    batch_sizes: list[int], segment_size_bytes: int, cut_fraction: float, tail: bytes
) -> None:
    with tempfile.TemporaryDirectory() as temporary:
        directory = Path(temporary)
        records = write_log(directory, batch_sizes, segment_size_bytes)
        paths = segments(directory)
        last = paths[-1]
        kept = frames(paths[-2])[-1].position if len(paths) > 1 else 0
        kept_end = HEADER_BYTES
        data = last.read_bytes()
        cut = HEADER_BYTES + round(cut_fraction * (len(data) - HEADER_BYTES))
        for frame in frames(last):
            batch_last = frame.batch_first + frame.batch_count - 1
            if frame.end <= cut and frame.position == batch_last:
                kept, kept_end = frame.position, frame.end
        last.write_bytes(data[:cut] + tail)

        wal, report = open_wal(directory, segment_size_bytes)
        try:
            assert wal.last_position == kept
            assert list(wal.read()) == records[:kept]
            nothing_torn = cut == kept_end and not tail.strip(b"\0")
            assert (report is None) == nothing_torn
            if report is not None:
                assert (report.offset, report.last_position) == (kept_end, kept)
        finally:
            wal.close()


@settings(max_examples=80, deadline=None)
@given(
    batch_sizes=st.lists(st.integers(1, 4), min_size=1, max_size=10),
    where=st.floats(0, 1, exclude_max=True),
    bit=st.integers(0, 7),
)
def test_a_flipped_bit_anywhere_is_never_silently_accepted(
    batch_sizes: list[int], where: float, bit: int
) -> None:
    """Either the log refuses to open, or recovery reports a torn tail and keeps a prefix
    of what was written; it never opens with a changed record or without a report."""
    with tempfile.TemporaryDirectory() as temporary:
        directory = Path(temporary)
        records = write_log(directory, batch_sizes, 4096)
        paths = segments(directory)
        sizes = [p.stat().st_size for p in paths]
        target = int(where * sum(sizes))
        index = 0
        while target >= sizes[index]:
            target -= sizes[index]
            index += 1
        flip_bit(paths[index], target, bit)
        try:
            wal, report = open_wal(directory, 4096)
        except WalCorruption as error:
            assert error.segment == paths[index]
            return
        try:
            assert report is not None
            assert report.segment == paths[-1] and index == len(paths) - 1
            assert list(wal.read()) == records[: wal.last_position]
        finally:
            wal.close()
