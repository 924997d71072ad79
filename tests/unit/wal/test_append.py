"""Appending: group commit, rotation, reopen-and-continue, fatal I/O errors, the pre-write
assertions, the directory lock and preallocation. Real files, real fsync."""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from ledger.adapters import wal as wal_module
from ledger.adapters.wal import (
    HEADER_BYTES,
    WalClosed,
    WalFailed,
    WalFsyncFailed,
    WalInvariantViolated,
    WalLocked,
    WalWriteFailed,
    open_wal,
    verify_wal,
)
from ledger.application.records import GENESIS_HASH, ChainBroken, EventRecord, verify_chain

from .support import edited, frames, make_records, segments, write_log


class Calls:
    def __init__(self, real: Callable[[int], None]) -> None:
        self.real = real
        self.count = 0

    def __call__(self, fd: int) -> None:
        self.count += 1
        self.real(fd)


def test_a_batch_is_written_with_one_fdatasync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wal, _ = open_wal(tmp_path)
    datasyncs = Calls(os.fdatasync)
    monkeypatch.setattr(os, "fdatasync", datasyncs)
    wal.append_batch(make_records(1, GENESIS_HASH, 100))
    assert datasyncs.count == 1
    wal.append_batch(make_records(101, wal.last_hash, 1))
    assert datasyncs.count == 2
    wal.close()


def test_an_empty_batch_writes_and_syncs_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wal, _ = open_wal(tmp_path)
    datasyncs = Calls(os.fdatasync)
    monkeypatch.setattr(os, "fdatasync", datasyncs)
    wal.append_batch([])
    assert datasyncs.count == 0
    assert (tmp_path / "00000000000000000001.wal").stat().st_size == HEADER_BYTES
    wal.close()


def test_rotation_fsyncs_the_new_segment_and_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wal, _ = open_wal(tmp_path, segment_size_bytes=4096)
    while len(wal.segments()) == 1:
        before = wal.last_position
        fsyncs = Calls(os.fsync)
        monkeypatch.setattr(os, "fsync", fsyncs)
        wal.append_batch(make_records(before + 1, wal.last_hash, 2))
    assert fsyncs.count == 2  # the new segment file, then the directory
    wal.close()


def test_a_batch_never_spans_two_segments(tmp_path: Path) -> None:
    write_log(tmp_path, [1, 5, 2, 7, 3, 4, 6] * 3, segment_size_bytes=4096)
    for path in segments(tmp_path):
        parsed = frames(path)
        assert parsed[0].batch_first == parsed[0].position
        last = parsed[-1]
        assert last.position == last.batch_first + last.batch_count - 1
        assert path.stat().st_size <= 4096


def test_a_batch_larger_than_the_limit_gets_a_segment_of_its_own(tmp_path: Path) -> None:
    write_log(tmp_path, [2, 40, 2], segment_size_bytes=4096)
    counts = [len(frames(p)) for p in segments(tmp_path)]
    assert counts == [2, 40, 2]
    assert segments(tmp_path)[1].stat().st_size > 4096


def test_reopening_continues_the_chain_across_many_segments(tmp_path: Path) -> None:
    appended: list[EventRecord] = []
    for round_ in range(6):
        wal, report = open_wal(tmp_path, segment_size_bytes=4096)
        assert report is None
        assert wal.last_position == len(appended)
        assert wal.last_hash == (appended[-1].hash if appended else GENESIS_HASH)
        for size in (1, 4, 2, 3):
            batch = make_records(wal.last_position + 1, wal.last_hash, size + round_)
            wal.append_batch(batch)
            appended += batch
        wal.close()
    wal, _ = open_wal(tmp_path, segment_size_bytes=4096)
    assert len(wal.segments()) >= 10
    read = list(wal.read())
    wal.close()
    assert read == appended
    assert list(verify_chain(read, 1, GENESIS_HASH)) == appended
    summary = verify_wal(tmp_path)
    assert (summary.last_position, summary.last_hash) == (len(appended), appended[-1].hash)
    assert [s.segment_number for s in summary.segments] == list(range(1, len(summary.segments) + 1))


def test_an_fsync_error_is_fatal_and_never_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wal, _ = open_wal(tmp_path)
    wal.append_batch(make_records(1, GENESIS_HASH, 3))

    def failing(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", failing)
    with pytest.raises(WalFsyncFailed, match="fdatasync"):
        wal.append_batch(make_records(4, wal.last_hash, 2))
    monkeypatch.undo()
    assert wal.last_position == 3
    with pytest.raises(WalFailed, match="reopen"):
        wal.append_batch(make_records(4, wal.last_hash, 2))
    wal.close()
    # Recovery is from disk: the written but unsynced batch is either there whole or not.
    wal, _ = open_wal(tmp_path)
    assert wal.last_position in (3, 5)
    assert [r.position for r in wal.read()] == list(range(1, wal.last_position + 1))
    wal.close()


def test_a_write_error_is_fatal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wal, _ = open_wal(tmp_path)

    def failing(fd: int, data: object, offset: int) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", failing)
    with pytest.raises(WalWriteFailed, match="No space"):
        wal.append_batch(make_records(1, GENESIS_HASH, 1))
    monkeypatch.undo()
    with pytest.raises(WalFailed):
        wal.append_batch(make_records(1, GENESIS_HASH, 1))
    assert wal.last_position == 0
    wal.close()


@pytest.mark.parametrize(
    "tamper",
    ["gap", "wrong_prev_hash", "wrong_hash", "edited_content", "reordered"],
)
def test_records_that_do_not_continue_the_chain_are_refused_before_writing(
    tmp_path: Path, tamper: str
) -> None:
    wal, _ = open_wal(tmp_path)
    wal.append_batch(make_records(1, GENESIS_HASH, 2))
    size = wal.segments()[-1].stat().st_size
    batch = make_records(3, wal.last_hash, 3)
    if tamper == "gap":
        batch = make_records(4, wal.last_hash, 3)
    elif tamper == "wrong_prev_hash":
        batch = make_records(3, bytes(32), 3)
    elif tamper == "wrong_hash":
        batch[1] = edited(batch[1], hash=bytes(32))
    elif tamper == "edited_content":
        batch[2] = edited(batch[2], data={"amount_minor": 1})
    else:
        batch = [batch[1], batch[0], batch[2]]
    with pytest.raises(WalInvariantViolated) as caught:
        wal.append_batch(batch)
    assert isinstance(caught.value, AssertionError) and isinstance(caught.value, ChainBroken)
    assert "record position" in str(caught.value)
    assert wal.segments()[-1].stat().st_size == size
    assert wal.last_position == 2
    wal.append_batch(make_records(3, wal.last_hash, 1))
    wal.close()


def test_a_second_writer_is_locked_out(tmp_path: Path) -> None:
    wal, _ = open_wal(tmp_path)
    with pytest.raises(WalLocked):
        open_wal(tmp_path)
    wal.close()
    again, _ = open_wal(tmp_path)
    again.close()


def test_a_closed_log_refuses_appends_and_reads(tmp_path: Path) -> None:
    wal, _ = open_wal(tmp_path)
    wal.close()
    with pytest.raises(WalClosed):
        wal.append_batch(make_records(1, GENESIS_HASH, 1))
    with pytest.raises(WalClosed):
        wal.read()


def test_preallocated_segments_are_zero_filled_to_the_limit(tmp_path: Path) -> None:
    records = write_log(tmp_path, [3] * 30, segment_size_bytes=8192, preallocate=True)
    paths = segments(tmp_path)
    assert len(paths) > 2
    for path in paths:
        assert path.stat().st_size == 8192
        raw = path.read_bytes()
        assert raw[frames(path)[-1].end :] == bytes(8192 - frames(path)[-1].end)
    assert not list(tmp_path.glob("*.tmp"))  # close() removed the unused spare
    wal, report = open_wal(tmp_path, segment_size_bytes=8192, preallocate=True)
    assert report is None
    assert list(wal.read()) == records
    batch = make_records(wal.last_position + 1, wal.last_hash, 2)
    wal.append_batch(batch)
    wal.close()
    assert verify_wal(tmp_path).last_position == len(records) + 2


def test_preallocation_prepares_the_next_segment_in_the_background(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fills: list[str] = []
    real_zero_fill = wal_module._zero_fill

    def recording_zero_fill(fd: int, start: int, end: int) -> None:
        fills.append(threading.current_thread().name)
        real_zero_fill(fd, start, end)

    monkeypatch.setattr(wal_module, "_zero_fill", recording_zero_fill)
    wal, _ = open_wal(tmp_path, segment_size_bytes=8192, preallocate=True)
    assert fills == ["MainThread"]  # the first segment, while opening
    while len(wal.segments()) < 3:
        wal.append_batch(make_records(wal.last_position + 1, wal.last_hash, 1))
    wal.close()
    assert fills[1:] and set(fills[1:]) == {"wal-preallocate"}  # never on the append path
    assert [p.stat().st_size for p in segments(tmp_path)] == [8192, 8192, 8192]
    assert not list(tmp_path.glob("*.tmp"))
    assert verify_wal(tmp_path).torn_tail is None
