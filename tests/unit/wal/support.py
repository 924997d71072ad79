"""Helpers for the WAL tests: records, logs on disk, and a small independent frame parser.

The parser here reads the documented layout on its own (not through ``ledger.adapters.wal``)
so the tests also check that the code writes what the module docstring says.
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import google_crc32c

from ledger.adapters.wal import open_wal
from ledger.application.records import EventRecord, PendingRecord, chain_records

HEADER_BYTES = 72


def make_records(first: int, prev: bytes, n: int, note_bytes: int = 40) -> list[EventRecord]:
    pending = [
        PendingRecord(
            event_id=uuid.UUID(int=first + i),
            stream_id=f"account-{(first + i) % 4}",
            stream_version=first + i,
            type="TransferCreated",
            schema_version=1,
            recorded_at_us=1_700_000_000_000_000 + first + i,
            data={"amount_minor": 100 + first + i, "ledger": "USD", "note": "n" * note_bytes},
        )
        for i in range(n)
    ]
    return chain_records(pending, first, prev)


def edited(record: EventRecord, **changes: Any) -> EventRecord:
    """``record`` with some fields changed, built from scratch (never carrying over any
    cached serialisation of the original), as a buggy or malicious caller would."""
    fields = {
        name: getattr(record, name)
        for name in (
            "position",
            "event_id",
            "stream_id",
            "stream_version",
            "type",
            "schema_version",
            "recorded_at_us",
            "data",
            "prev_hash",
            "hash",
        )
    }
    fields.update(changes)
    return EventRecord(**fields)


def write_log(
    directory: Path,
    batch_sizes: list[int],
    segment_size_bytes: int = 1 << 20,
    preallocate: bool = False,
) -> list[EventRecord]:
    """Create a WAL with one ``append_batch`` per entry of ``batch_sizes``; close it."""
    wal, report = open_wal(directory, segment_size_bytes, preallocate)
    assert report is None
    appended: list[EventRecord] = []
    try:
        for size in batch_sizes:
            batch = make_records(wal.last_position + 1, wal.last_hash, size)
            wal.append_batch(batch)
            appended += batch
    finally:
        wal.close()
    return appended


@dataclass(frozen=True)
class Frame:
    segment: Path
    offset: int
    end: int
    length: int
    crc: int
    position: int
    batch_first: int
    batch_count: int
    canonical: bytes
    hash: bytes


def frames(segment: Path) -> list[Frame]:
    """Every record of a segment, parsed from the documented layout."""
    data = segment.read_bytes()
    out: list[Frame] = []
    offset = HEADER_BYTES
    while offset + 8 <= len(data):
        length, crc = struct.unpack_from("<II", data, offset)
        if length == 0:
            break
        payload = data[offset + 8 : offset + 8 + length]
        position, first, count, canonical_length = struct.unpack_from("<QQII", payload)
        out.append(
            Frame(
                segment=segment,
                offset=offset,
                end=offset + 8 + length,
                length=length,
                crc=crc,
                position=position,
                batch_first=first,
                batch_count=count,
                canonical=payload[24 : 24 + canonical_length],
                hash=payload[-32:],
            )
        )
        offset += 8 + length
    return out


def all_frames(directory: Path) -> list[Frame]:
    return [f for segment in segments(directory) for f in frames(segment)]


def segments(directory: Path) -> list[Path]:
    return sorted(p for p in directory.glob("*.wal") if p.name[:20].isdigit())


def flip_bit(path: Path, offset: int, bit: int = 0) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ (1 << bit)]))


def rewrite_crc(path: Path, frame: Frame) -> None:
    """Recompute a record's CRC32C after its payload was edited."""
    data = bytearray(path.read_bytes())
    payload = bytes(data[frame.offset + 8 : frame.end])
    struct.pack_into("<I", data, frame.offset + 4, google_crc32c.value(payload))
    path.write_bytes(bytes(data))
