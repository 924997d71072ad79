"""The on-disk format: segment names and headers, record framing, CRC32C, the payload.

Goal: the bytes on disk are what the WAL module documents, so an auditor's own tool can
read them. Method: parse real segment files with the independent parser in ``support``.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import struct
import zlib
from pathlib import Path

import google_crc32c
import pytest

from ledger.adapters.wal import (
    FORMAT_VERSION,
    HEADER_BYTES,
    SEGMENT_MAGIC,
    open_wal,
)
from ledger.application.records import GENESIS_HASH

from .support import frames, segments, write_log


def test_a_new_directory_and_its_missing_parents_are_created(tmp_path: Path) -> None:
    directory = tmp_path / "a" / "b" / "wal"
    wal, report = open_wal(directory)
    wal.close()
    assert report is None
    assert [p.name for p in segments(directory)] == ["00000000000000000001.wal"]


def test_segments_are_named_by_their_first_position(tmp_path: Path) -> None:
    records = write_log(tmp_path, [3] * 10, segment_size_bytes=4096)
    names = [p.name for p in segments(tmp_path)]
    firsts = [frames(p)[0].position for p in segments(tmp_path)]
    assert names == [f"{first:020d}.wal" for first in firsts]
    assert names[0] == "00000000000000000001.wal"
    assert sum(len(frames(p)) for p in segments(tmp_path)) == len(records)


def test_each_header_holds_magic_version_number_first_position_and_previous_hash(
    tmp_path: Path,
) -> None:
    records = write_log(tmp_path, [3] * 10, segment_size_bytes=4096)
    by_position = {r.position: r for r in records}
    for number, path in enumerate(segments(tmp_path), start=1):
        raw = path.read_bytes()[:HEADER_BYTES]
        magic, version, size, seg_no, first, prev = struct.unpack_from("<8sIIQQ32s", raw)
        crc, reserved = struct.unpack_from("<II", raw, 64)
        assert (magic, version, size, seg_no, reserved) == (
            SEGMENT_MAGIC,
            FORMAT_VERSION,
            HEADER_BYTES,
            number,
            0,
        )
        assert first == int(path.name[:20])
        assert prev == (GENESIS_HASH if first == 1 else by_position[first - 1].hash)
        assert crc == google_crc32c.value(raw[:64])


def test_records_are_length_crc32c_payload_and_eight_byte_aligned(tmp_path: Path) -> None:
    records = write_log(tmp_path, [1, 2, 3])
    (path,) = segments(tmp_path)
    parsed = frames(path)
    raw = path.read_bytes()
    assert [f.position for f in parsed] == [1, 2, 3, 4, 5, 6]
    assert parsed[0].offset == HEADER_BYTES
    assert len(raw) == parsed[-1].end
    for frame, record in zip(parsed, records, strict=True):
        payload = raw[frame.offset + 8 : frame.end]
        assert frame.offset % 8 == 0 and frame.length % 8 == 0
        assert frame.crc == google_crc32c.value(payload)
        assert frame.crc != zlib.crc32(payload)  # Castagnoli, not zlib's CRC-32
        assert frame.canonical == record.canonical()
        assert frame.hash == record.hash
        assert frame.hash == hashlib.sha256(record.prev_hash + frame.canonical).digest()
        padding = payload[24 + len(frame.canonical) : -32]
        assert len(padding) < 8 and padding == bytes(len(padding))


def test_each_record_names_the_batch_it_was_appended_in(tmp_path: Path) -> None:
    write_log(tmp_path, [1, 2, 3])
    (path,) = segments(tmp_path)
    assert [(f.position, f.batch_first, f.batch_count) for f in frames(path)] == [
        (1, 1, 1),
        (2, 2, 2),
        (3, 2, 2),
        (4, 4, 3),
        (5, 4, 3),
        (6, 4, 3),
    ]


def test_rejects_a_segment_size_below_the_minimum(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="segment_size_bytes"):
        open_wal(tmp_path, segment_size_bytes=1024)


@pytest.mark.parametrize("module_name", ["ledger.adapters.wal", "ledger.adapters.wal_cli"])
def test_the_public_names_are_exactly_those_listed_and_documented(module_name: str) -> None:
    module = importlib.import_module(module_name)
    public = {
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and getattr(value, "__module__", module_name) == module_name
        and (inspect.isclass(value) or inspect.isfunction(value))
    }
    assert public <= set(module.__all__)
    for name in module.__all__:
        value = getattr(module, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            assert value.__doc__, f"{name} has no docstring"


def test_the_required_names_import() -> None:
    from ledger.adapters.wal import FileWal, TornTailReport, WalCorruption, open_wal

    assert all((FileWal, TornTailReport, WalCorruption, open_wal))
