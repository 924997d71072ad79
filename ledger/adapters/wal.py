"""The write-ahead log of one book: segment files of checksummed, hash-chained records.

Ordering, durability and recovery, and why. The node appends each batch of events here
and makes it durable with one ``fdatasync`` *before* it inserts the batch into PostgreSQL
and answers the callers, so the WAL is always at least as far ahead as the event store and
a crash can lose only a batch that nobody was told about. A batch is written with one
``pwrite`` and synced with one ``fdatasync`` (group commit); it never spans two segments,
so rotation happens *between* batches: the new segment is written under a temporary name
with its header, fsynced, renamed into place and the directory fsynced, so a segment file
under its final name always has a whole header. An fsync error is fatal and never retried:
after a failed ``fdatasync`` the kernel may have dropped the dirty pages and a retry can
report success for data that is gone (the "fsyncgate" lesson), so the log refuses further
appends and the process recovers from what is really on disk when it restarts.

Recovery reads every segment and checks everything that can be checked: each header, the
CRC32C of every record, gap-free positions, the batch structure and the hash chain, across
segment boundaries. Only the end of the last segment may be damaged by a crash, and only
inside the batch that was being written (its ``fdatasync`` had not returned, so no caller
saw it): such a *torn tail* is copied aside, truncated back to the end of the last whole
batch, fsynced and reported. Because every record carries the position and size of its
batch, recovery removes an unfinished batch as a whole: the log never ends in the middle
of a batch, so a linked chain of commands is never half-replayed into the event store.
Damage anywhere else (a bad record followed by records of an earlier batch, a position
gap, a broken chain, a missing or reordered segment) is corruption of acknowledged data:
the log refuses to open and names the segment file and byte offset, because guessing
would silently rewrite a financial history.

On-disk format (version 1), little-endian integers::

    segment file  <first position, 20 digits>.wal
      header (72 bytes)
        0   8s   magic b"ELWALSEG"
        8   u32  format version (1)
        12  u32  header size in bytes (72)
        16  u64  segment number (1, 2, 3, ...; continuous)
        24  u64  first position (equals the file name)
        32  32s  hash of the last record before this segment (GENESIS_HASH for segment 1)
        64  u32  CRC32C of bytes 0..63
        68  u32  reserved, zero
      records, each 8-byte aligned, then end of file or zeros (preallocated space)
        0   u32  length of the payload that follows (a multiple of 8; 0 means end of data)
        4   u32  CRC32C (Castagnoli) of the payload
        8   payload:
            u64  position
            u64  first position of the batch this record was appended in
            u32  number of records in that batch
            u32  length of the canonical bytes
            canonical bytes (EventRecord.canonical(): sorted-key JSON of the envelope)
            zero padding (0-7 bytes) to keep the record 8-byte aligned
            32s  hash = sha256(prev_hash || canonical bytes)

The stored canonical bytes are exactly the bytes that were hashed, so a reader verifies
the chain with one ``sha256`` per record and never re-serialises JSON: that is all
:func:`verify_wal` (``ledger wal verify``) does per record, besides the CRC, positions and
batch fields. ``read`` also decodes the JSON into :class:`EventRecord` and cross-checks
the envelope's position and ``prev_hash`` against the frame and the chain. The padding
sits inside the checksummed payload, so every byte of a record is covered by its CRC.

Exceptions::

    WalError
    ├── WalCorruption        the log is damaged before its tail: refuse (segment, offset)
    ├── WalLocked            another FileWal holds the directory
    ├── WalClosed            used after close() (also a ValueError, like closed files)
    └── WalFailed            an I/O error made this FileWal unusable; restart to recover
        ├── WalFsyncFailed   fdatasync/fsync failed: durability of the batch is unknown
        └── WalWriteFailed   write, rotation or truncation failed
    ChainBroken (ValueError) and AssertionError
    └── WalInvariantViolated  append_batch got records that do not continue the chain: a bug
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import struct
import threading
import time
from bisect import bisect_right
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from uuid import UUID

import google_crc32c
import orjson

from ledger.application.records import GENESIS_HASH, ChainBroken, EventRecord

__all__ = [
    "BATCH_RECORDS_MAX",
    "CANONICAL_BYTES_MAX",
    "FORMAT_VERSION",
    "HEADER_BYTES",
    "SEGMENT_MAGIC",
    "SEGMENT_SIZE_BYTES_DEFAULT",
    "FileWal",
    "ProgressCallback",
    "SegmentSummary",
    "TornTail",
    "TornTailReport",
    "WalClosed",
    "WalCorruption",
    "WalError",
    "WalFailed",
    "WalFsyncFailed",
    "WalInvariantViolated",
    "WalLocked",
    "WalSummary",
    "WalWriteFailed",
    "is_open_for_writing",
    "open_wal",
    "read_wal",
    "scan_records",
    "segment_paths",
    "verify_wal",
]

SEGMENT_MAGIC: Final = b"ELWALSEG"
FORMAT_VERSION: Final = 1
HEADER_BYTES: Final = 72
SEGMENT_SIZE_BYTES_DEFAULT: Final = 64 * 1024 * 1024
SEGMENT_SIZE_BYTES_MIN: Final = 4096
CANONICAL_BYTES_MAX: Final = 16 * 1024 * 1024
BATCH_RECORDS_MAX: Final = 1 << 20

_HEADER_BODY = struct.Struct("<8sIIQQ32s")  # the 64 bytes covered by the header CRC
_HEADER_TAIL = struct.Struct("<II")  # header CRC32C, reserved
_FRAME = struct.Struct("<II")  # payload length, CRC32C
_PAYLOAD_HEAD = struct.Struct("<QQII")  # position, batch first, batch count, canonical length
_RECORD_HEAD = struct.Struct("<IIQQII")  # _FRAME followed by _PAYLOAD_HEAD
_FRAME_BYTES: Final = 8
_RECORD_HEAD_BYTES: Final = 32
_HASH_BYTES: Final = 32
_PAYLOAD_BYTES_MIN: Final = _PAYLOAD_HEAD.size + _HASH_BYTES
_PAYLOAD_BYTES_MAX: Final = _PAYLOAD_HEAD.size + CANONICAL_BYTES_MAX + 7 + _HASH_BYTES
_PADDING = tuple(bytes(n) for n in range(8))
_CHUNK_BYTES: Final = 4 * 1024 * 1024
_ZERO_CHUNK = bytes(_CHUNK_BYTES)
_INDEX_STRIDE_RECORDS: Final = 1024
_SEGMENT_NAME = re.compile(r"^(\d{20})\.wal$")
_TEMPORARY_NAME = re.compile(r"^(\d{20}\.wal|spare-segment)\.tmp$")
_SPARE_NAME: Final = "spare-segment.tmp"
_LOCK_NAME: Final = "wal.lock"
_FILE_MODE: Final = 0o644

try:
    from ledger.adapters import _walcodec as _native
except ImportError:  # pragma: no cover - the package build compiles it (setup.py)
    _native = None  # type: ignore[assignment]

_crc32c: Callable[[bytes], int] = google_crc32c.value

ProgressCallback = Callable[[int], None]
"""Called with the number of bytes just read, for a progress bar over the segment sizes."""

assert _HEADER_BODY.size + _HEADER_TAIL.size == HEADER_BYTES
assert HEADER_BYTES % 8 == 0
assert _RECORD_HEAD.size == _RECORD_HEAD_BYTES


# --- Errors ---------------------------------------------------------------------------


class WalError(Exception):
    """Base of every error this module raises on purpose."""


class WalCorruption(WalError):
    """The log is damaged before its tail; it must not be opened until someone looks.

    ``segment`` is the segment file, ``offset`` the byte offset in it where the damage
    starts, ``reason`` what is wrong and ``position`` the record position that was due
    there (``None`` when not known). Nothing on disk has been changed.
    """

    def __init__(self, segment: Path, offset: int, reason: str, position: int | None = None):
        super().__init__(f"corrupt WAL: {segment.name} at byte {offset}: {reason}")
        self.segment = segment
        self.offset = offset
        self.reason = reason
        self.position = position


class WalLocked(WalError):
    """Another :class:`FileWal` (in this or another process) has the directory open."""


class WalClosed(WalError, ValueError):
    """The :class:`FileWal` was closed; like a closed file, it is also a ``ValueError``."""


class WalFailed(WalError):
    """An I/O error left this :class:`FileWal` in an unknown state; it refuses all appends.

    Recovery happens from disk: close the log (or let the process die) and open it again.
    """


class WalFsyncFailed(WalFailed):
    """``fdatasync``/``fsync`` failed: whether the last batch is on disk is unknown.

    Never retried: after a failed fsync the kernel may have dropped the dirty pages, and a
    second fsync could report success for data that was lost.
    """


class WalWriteFailed(WalFailed):
    """A write, a segment rotation or a truncation failed part-way."""


class WalInvariantViolated(ChainBroken, AssertionError):
    """``append_batch`` was given records that do not continue the chain.

    This is a bug in the caller (the node assigns positions and hashes), checked before
    anything is written: stop, do not catch and continue. Nothing was written. It is a
    ``ChainBroken`` (the port's contract, a ``ValueError``) and an ``AssertionError`` (a
    bug, like ``ledger.domain.errors.InvariantViolated``, which the WAL does not import so
    that it stays free of the domain package).
    """


# --- Results of a scan ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SegmentSummary:
    """One intact segment: its file, number, positions and where its data ends."""

    path: Path
    segment_number: int
    first_position: int
    record_count: int
    last_position: int
    last_hash: bytes
    data_end: int


@dataclass(frozen=True, slots=True)
class TornTail:
    """A torn tail found by a scan: the bytes from ``offset`` to ``end_offset`` of
    ``segment`` are an unfinished batch, to be removed; the log then ends at
    ``last_position`` with ``last_hash``."""

    segment: Path
    offset: int
    end_offset: int
    reason: str
    last_position: int
    last_hash: bytes

    @property
    def bytes_removed(self) -> int:
        return self.end_offset - self.offset


@dataclass(frozen=True, slots=True)
class TornTailReport:
    """What recovery did with a torn tail: the bytes from ``offset`` (``bytes_removed``
    of them, trailing zeros not counted) were copied to ``aside_path`` and ``segment``
    was truncated at ``offset``; the log now ends at ``last_position``."""

    segment: Path
    offset: int
    bytes_removed: int
    aside_path: Path
    reason: str
    last_position: int


@dataclass(frozen=True, slots=True)
class WalSummary:
    """The result of :func:`verify_wal`: the intact log, and a torn tail if there is one."""

    directory: Path
    segments: tuple[SegmentSummary, ...]
    record_count: int
    last_position: int
    last_hash: bytes
    torn_tail: TornTail | None


# --- Encoding -------------------------------------------------------------------------


def _encode_header(segment_number: int, first_position: int, prev_hash: bytes) -> bytes:
    body = _HEADER_BODY.pack(
        SEGMENT_MAGIC, FORMAT_VERSION, HEADER_BYTES, segment_number, first_position, prev_hash
    )
    return body + _HEADER_TAIL.pack(_crc32c(body), 0)


def _encode_batch(
    records: Sequence[EventRecord], last_position: int, last_hash: bytes
) -> tuple[bytes, bytes]:
    """Frame ``records`` after checking they continue the chain; return (bytes, last hash).

    This is the "before writing" half of the assertion pair: positions are consecutive
    from ``last_position + 1`` and each ``prev_hash`` links to its predecessor. A record
    that carries its canonical bytes (``canonical_cache``) was hashed from exactly those
    bytes by :func:`~ledger.application.records.chain_records` in this process, a moment
    ago, so its hash is not computed a second time: the native codec frames the batch
    in one call. Every other record (one rebuilt from the event store during recovery,
    or built by hand) has its hash recomputed from the canonical bytes about to be
    stored, by :func:`_encode_batch_checked`, which is also what runs, and says what is
    wrong, whenever the native codec declines a batch.
    """
    if _native is not None and isinstance(records, list | tuple):
        framed: tuple[bytes, bytes] | None = _native.encode_batch(records, last_position, last_hash)
        if framed is not None:
            return framed
    return _encode_batch_checked(records, last_position, last_hash)


def _encode_batch_checked(
    records: Sequence[EventRecord], last_position: int, last_hash: bytes
) -> tuple[bytes, bytes]:
    """The reference encoder: every check, including each ``hash`` recomputed from the
    canonical bytes, with a precise :class:`WalInvariantViolated` when one fails."""
    count = len(records)
    if count > BATCH_RECORDS_MAX:
        raise ValueError(f"batch of {count} records exceeds BATCH_RECORDS_MAX {BATCH_RECORDS_MAX}")
    first = last_position + 1
    expected = first
    prev = last_hash
    sha256 = hashlib.sha256
    parts: list[bytes] = []
    for record in records:
        if record.position != expected:
            raise WalInvariantViolated(
                f"record position {record.position} where {expected} expected "
                f"(the log ends at {last_position}, the batch starts at {first})"
            )
        if record.prev_hash != prev:
            raise WalInvariantViolated(
                f"record position {expected}: prev_hash {record.prev_hash.hex()} is not the "
                f"hash of position {expected - 1} ({prev.hex()})"
            )
        canonical = record.canonical()
        digest = sha256(prev + canonical).digest()
        if digest != record.hash:
            raise WalInvariantViolated(
                f"record position {expected}: hash {record.hash.hex()} does not match its "
                f"content (sha256 gives {digest.hex()})"
            )
        canonical_length = len(canonical)
        if canonical_length > CANONICAL_BYTES_MAX:
            raise ValueError(
                f"record position {expected}: {canonical_length} canonical bytes exceed "
                f"CANONICAL_BYTES_MAX {CANONICAL_BYTES_MAX}"
            )
        payload = b"".join(
            (
                _PAYLOAD_HEAD.pack(expected, first, count, canonical_length),
                canonical,
                _PADDING[-canonical_length & 7],
                digest,
            )
        )
        parts.append(_FRAME.pack(len(payload), _crc32c(payload)))
        parts.append(payload)
        prev = digest
        expected += 1
    return b"".join(parts), prev


# --- Scanning -------------------------------------------------------------------------

_NEED_MORE, _END, _BAD_FRAME, _BAD_CONTENT, _STOPPED = range(5)


_IndexEntry = tuple[int, int, bytes]
"""(position, byte offset, hash before it) of a record that starts a batch: a place where a
scan of a segment can begin without reading what comes before it."""


class _Chain:
    """Where a scan is: the next position, the last hash and the batch being read; with
    ``index``, it also collects an index entry every ``_INDEX_STRIDE_RECORDS`` or so."""

    __slots__ = (
        "batch_first",
        "batch_last",
        "batch_start_offset",
        "batch_start_prev",
        "expected",
        "index",
        "index_next",
        "prev",
    )

    def __init__(
        self,
        first_position: int,
        prev_hash: bytes,
        offset: int,
        index: list[_IndexEntry] | None = None,
    ) -> None:
        self.expected = first_position
        self.prev = prev_hash
        # Scans start at batch boundaries: a segment start (a batch never spans segments)
        # or an index entry.
        self.batch_first = first_position
        self.batch_last = first_position - 1
        self.batch_start_offset = offset
        self.batch_start_prev = prev_hash
        self.index = index
        self.index_next = first_position

    @property
    def batch_open(self) -> bool:
        return self.batch_last >= self.expected


def _scan_frames(
    buf: bytes,
    off: int,
    base: int,
    at_eof: bool,
    chain: _Chain,
    offsets: list[int] | None,
    stop_position: int,
) -> tuple[int, int, int | str]:
    """Check the records in ``buf`` from ``off`` on; return ``(offset, kind, info)``.

    ``base`` is the file offset of ``buf[0]``. ``kind`` says why the scan stopped:
    ``_NEED_MORE`` (``info`` = bytes missing), ``_END`` (end of data: a zero length field
    or the end of the file on a record boundary), ``_BAD_FRAME`` (length, completeness or
    CRC: what a torn write looks like), ``_BAD_CONTENT`` (the CRC holds but the position,
    chain or batch fields do not: never a torn write) or ``_STOPPED`` (the record at
    ``stop_position`` was checked). ``offsets`` collects the offset of each good record.
    This loop is the hot path of ``verify``: one CRC and one sha256 per record, no JSON.
    The native codec runs the same checks over the good records first; this loop then
    takes over at the first record it did not accept, and says why.
    """
    if _native is not None:
        (
            off,
            stopped,
            chain.expected,
            chain.prev,
            chain.batch_first,
            chain.batch_last,
            start_offset,
            start_prev,
            chain.index_next,
        ) = _native.scan_frames(
            buf,
            off,
            base,
            chain.expected,
            chain.prev,
            chain.batch_first,
            chain.batch_last,
            stop_position,
            offsets,
            chain.index,
            chain.index_next,
            _INDEX_STRIDE_RECORDS,
        )
        if start_offset >= 0:
            assert start_prev is not None
            chain.batch_start_offset = start_offset
            chain.batch_start_prev = start_prev
        if stopped:
            return off, _STOPPED, 0
    end = len(buf)
    unpack = _RECORD_HEAD.unpack_from
    crc32c = _crc32c
    sha256 = hashlib.sha256
    expected = chain.expected
    prev = chain.prev
    batch_first = chain.batch_first
    batch_last = chain.batch_last
    kind = _NEED_MORE
    info: int | str = 0
    while True:
        if off + _RECORD_HEAD_BYTES > end:
            if off + _FRAME_BYTES <= end and _FRAME.unpack_from(buf, off)[0] == 0:
                kind = _END
            elif at_eof:
                if off == end:
                    kind = _END
                else:
                    kind = _BAD_FRAME
                    info = (
                        f"incomplete record: {end - off} bytes before the end of the segment "
                        f"(record position {expected})"
                    )
            else:
                info = _RECORD_HEAD_BYTES - (end - off)
            break
        length, crc, position, first, count, canonical_length = unpack(buf, off)
        if length == 0:
            kind = _END
            break
        if length & 7 or length < _PAYLOAD_BYTES_MIN or length > _PAYLOAD_BYTES_MAX:
            kind = _BAD_FRAME
            info = f"implausible record length {length} (record position {expected})"
            break
        record_end = off + _FRAME_BYTES + length
        if record_end > end:
            if at_eof:
                kind = _BAD_FRAME
                info = (
                    f"incomplete record: length {length} but only {end - off - _FRAME_BYTES} "
                    f"bytes follow (record position {expected})"
                )
            else:
                info = record_end - end
            break
        if crc32c(buf[off + _FRAME_BYTES : record_end]) != crc:
            kind = _BAD_FRAME
            info = f"crc32c mismatch (record position {expected})"
            break
        if position != expected:
            kind = _BAD_CONTENT
            info = f"record position {position} where {expected} expected"
            break
        canonical_end = off + _RECORD_HEAD_BYTES + canonical_length
        if not 0 <= record_end - _HASH_BYTES - canonical_end < 8:
            kind = _BAD_CONTENT
            info = (
                f"canonical length {canonical_length} does not fit record length {length} "
                f"(record position {expected})"
            )
            break
        digest = buf[record_end - _HASH_BYTES : record_end]
        if sha256(prev + buf[off + _RECORD_HEAD_BYTES : canonical_end]).digest() != digest:
            kind = _BAD_CONTENT
            info = (
                f"hash chain broken: sha256(prev_hash || payload) differs from the stored "
                f"hash (record position {expected})"
            )
            break
        if batch_last < position:
            if first != position or count < 1:
                kind = _BAD_CONTENT
                info = (
                    f"record position {position} should start a batch but says batch "
                    f"{first}+{count}"
                )
                break
            batch_first = position
            batch_last = position + count - 1
            chain.batch_start_offset = base + off
            chain.batch_start_prev = prev
            if chain.index is not None and position >= chain.index_next:
                chain.index.append((position, base + off, prev))
                chain.index_next = position + _INDEX_STRIDE_RECORDS
        elif first != batch_first or first + count - 1 != batch_last:
            kind = _BAD_CONTENT
            info = (
                f"record position {position} says batch {first}+{count}, inside batch "
                f"{batch_first}..{batch_last}"
            )
            break
        if offsets is not None:
            offsets.append(off)
        prev = digest
        expected = position + 1
        off = record_end
        if position == stop_position:
            kind = _STOPPED
            break
    chain.expected = expected
    chain.prev = prev
    chain.batch_first = batch_first
    chain.batch_last = batch_last
    return off, kind, info


def _pread_exact(fd: int, size: int, offset: int) -> bytes:
    data = os.pread(fd, size, offset)
    while len(data) < size:
        more = os.pread(fd, size - len(data), offset + len(data))
        if not more:
            break
        data += more
    return data


def _nonzero_end(fd: int, start: int, size: int) -> int:
    """The offset just past the last non-zero byte in ``[start, size)``, or ``start``."""
    last = start
    offset = start
    while offset < size:
        chunk = _pread_exact(fd, min(_CHUNK_BYTES, size - offset), offset)
        if not chunk:
            break
        if chunk != _ZERO_CHUNK[: len(chunk)]:
            last = offset + len(chunk.rstrip(b"\0"))
        offset += len(chunk)
    return last


@dataclass(frozen=True, slots=True)
class _Frame:
    offset: int
    end: int
    position: int
    batch_first: int
    batch_count: int


def _valid_frames(fd: int, start: int, stop: int, size: int) -> Iterator[_Frame]:
    """Records with a plausible length and a good CRC at 8-byte aligned offsets in
    ``[start, stop)``: evidence of what lies after a damaged record."""
    offset = start
    while offset < stop:
        window = _pread_exact(fd, min(_CHUNK_BYTES, stop - offset + _FRAME_BYTES), offset)
        at = 0
        while at + _FRAME_BYTES <= len(window) and offset + at < stop:
            length, crc = _FRAME.unpack_from(window, at)
            frame_end = offset + at + _FRAME_BYTES + length
            if (
                _PAYLOAD_BYTES_MIN <= length <= _PAYLOAD_BYTES_MAX
                and not length & 7
                and frame_end <= size
            ):
                if at + _FRAME_BYTES + length <= len(window):
                    payload = window[at + _FRAME_BYTES : at + _FRAME_BYTES + length]
                else:
                    payload = _pread_exact(fd, length, offset + at + _FRAME_BYTES)
                if len(payload) == length and _crc32c(payload) == crc:
                    position, first, count, _ = _PAYLOAD_HEAD.unpack_from(payload)
                    yield _Frame(offset + at, frame_end, position, first, count)
                    at += _FRAME_BYTES + length
                    continue
            at += 8
        if at == 0:
            break
        offset += at


@dataclass(frozen=True, slots=True)
class _Header:
    segment_number: int
    first_position: int
    prev_hash: bytes


def _read_header(
    fd: int,
    path: Path,
    size: int,
    segment_number: int,
    first_position: int | None,
    prev_hash: bytes | None,
) -> _Header:
    """Check a segment header against its name and the segment before it."""
    name_first = int(path.name[:20])
    due = first_position if first_position is not None else name_first
    if size < HEADER_BYTES:
        raise WalCorruption(
            path, 0, f"segment header incomplete: {size} bytes, {HEADER_BYTES} needed", due
        )
    raw = _pread_exact(fd, HEADER_BYTES, 0)
    magic, version, header_bytes, number, first, link = _HEADER_BODY.unpack_from(raw)
    crc, reserved = _HEADER_TAIL.unpack_from(raw, _HEADER_BODY.size)
    if magic != SEGMENT_MAGIC:
        raise WalCorruption(path, 0, f"not a WAL segment: magic {magic!r}", due)
    if _crc32c(raw[: _HEADER_BODY.size]) != crc:
        raise WalCorruption(path, 0, "segment header crc32c mismatch", due)
    if version != FORMAT_VERSION or header_bytes != HEADER_BYTES or reserved != 0:
        raise WalCorruption(
            path, 0, f"unsupported segment format: version {version}, header {header_bytes}", due
        )
    if first != name_first:
        raise WalCorruption(
            path,
            0,
            f"header says first position {first} but the file name says {name_first}",
            due,
        )
    if first_position is not None and first != first_position:
        if first > first_position:
            why = f"positions {first_position}..{first - 1} are missing (a segment was removed?)"
        else:
            why = f"it overlaps the previous segment, which ends at {first_position - 1}"
        raise WalCorruption(
            path,
            0,
            f"segment starts at position {first} where {first_position} expected: {why}",
            due,
        )
    if number != segment_number:
        raise WalCorruption(
            path,
            0,
            f"segment number {number} where {segment_number} expected: "
            "a segment is missing or out of order",
            due,
        )
    if prev_hash is not None and link != prev_hash:
        raise WalCorruption(
            path,
            0,
            "hash chain broken between segments: the header's previous hash is not the hash "
            "of the previous segment's last record",
            due,
        )
    return _Header(number, first, link)


def segment_paths(directory: Path) -> list[Path]:
    """The segment files of a WAL directory, in position order."""
    names = sorted(entry.name for entry in os.scandir(directory) if _SEGMENT_NAME.match(entry.name))
    return [directory / name for name in names]


@dataclass(frozen=True, slots=True)
class _SegmentScan:
    summary: SegmentSummary
    torn_tail: TornTail | None
    index: list[_IndexEntry]


def _scan_segment(
    path: Path,
    segment_number: int,
    chain: _Chain | None,
    next_segment: Path | None,
    progress: ProgressCallback | None,
) -> tuple[_SegmentScan, _Chain]:
    """Check one segment from its header to its end; raise :class:`WalCorruption` or
    return what it holds (and its torn tail if it is the last segment and has one)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        header = _read_header(
            fd,
            path,
            size,
            segment_number,
            chain.expected if chain is not None else 1,
            chain.prev if chain is not None else GENESIS_HASH,
        )
        chain = _Chain(header.first_position, header.prev_hash, HEADER_BYTES, [])
        reported = 0

        def counted(done: int) -> None:
            nonlocal reported
            reported += done
            if progress is not None:
                progress(done)

        stop_offset, kind, info = _scan_to_end(fd, size, HEADER_BYTES, chain, counted)
        torn: TornTail | None = None
        if kind == _END:
            nonzero_end = _nonzero_end(fd, stop_offset, size)
            if nonzero_end > stop_offset:
                kind = _BAD_FRAME
                info = (
                    f"zero length field followed by non-zero bytes "
                    f"(record position {chain.expected})"
                )
            elif chain.batch_open:
                if next_segment is not None:
                    raise WalCorruption(
                        path,
                        stop_offset,
                        f"segment ends inside batch {chain.batch_first}..{chain.batch_last} "
                        f"(a batch never spans segments; {next_segment.name} follows)",
                        chain.expected,
                    )
                torn = _unfinished_batch(path, stop_offset, stop_offset, chain, "")
        if kind == _BAD_CONTENT:
            raise WalCorruption(path, stop_offset, str(info), chain.expected)
        if kind == _BAD_FRAME:
            torn = _classify_bad_frame(fd, path, size, stop_offset, str(info), chain, next_segment)
        if torn is not None:
            last_position, last_hash, data_end = torn.last_position, torn.last_hash, torn.offset
        else:
            last_position, last_hash, data_end = chain.expected - 1, chain.prev, stop_offset
        summary = SegmentSummary(
            path=path,
            segment_number=header.segment_number,
            first_position=header.first_position,
            record_count=last_position - header.first_position + 1,
            last_position=last_position,
            last_hash=last_hash,
            data_end=data_end,
        )
        if progress is not None and size > reported:
            progress(size - reported)
        index = [entry for entry in chain.index or () if entry[0] <= last_position]
        if not index or index[0][0] != header.first_position:
            index.insert(0, (header.first_position, HEADER_BYTES, header.prev_hash))
        return _SegmentScan(summary, torn, index), chain
    finally:
        os.close(fd)


_Chunk = tuple[bytes, int, list[int], bytes, int]
_ScanEnd = tuple[int, int, int | str]


def _scan_chunks(
    fd: int,
    size: int,
    start: int,
    chain: _Chain,
    collect: bool,
    stop_position: int,
    progress: ProgressCallback | None,
) -> Generator[_Chunk, None, _ScanEnd]:
    """Run :func:`_scan_frames` over a file in chunks, carrying partial records over.

    With ``collect``, yields ``(buf, base, offsets, prev_hash, position)`` for each chunk
    with good records: ``base`` is the file offset of ``buf[0]``, ``prev_hash`` the hash
    before the first record and ``position`` its position. Returns ``(offset, kind, info)``
    as :func:`_scan_frames` does, with ``offset`` a file offset.
    """
    read_at = start
    carry = b""
    base = start
    want = _CHUNK_BYTES
    while True:
        chunk = _pread_exact(fd, min(want, size - read_at), read_at) if read_at < size else b""
        read_at += len(chunk)
        if progress is not None and chunk:
            progress(len(chunk))
        buf = carry + chunk if carry else chunk
        at_eof = read_at >= size or not chunk
        offsets: list[int] | None = [] if collect else None
        prev, position = chain.prev, chain.expected
        off, kind, info = _scan_frames(buf, 0, base, at_eof, chain, offsets, stop_position)
        if offsets:
            yield buf, base, offsets, prev, position
        if kind != _NEED_MORE:
            return base + off, kind, info
        carry = buf[off:]
        base += off
        want = max(_CHUNK_BYTES, int(info))


def _scan_to_end(
    fd: int,
    size: int,
    start: int,
    chain: _Chain,
    progress: ProgressCallback | None,
    stop_position: int = -1,
) -> _ScanEnd:
    """Run :func:`_scan_chunks` without collecting records; return how it ended."""
    scan = _scan_chunks(fd, size, start, chain, False, stop_position, progress)
    while True:
        try:
            next(scan)
        except StopIteration as done:
            result: _ScanEnd = done.value
            return result


def _unfinished_batch(
    path: Path, offset: int, end_offset: int, chain: _Chain, damage: str
) -> TornTail:
    intact = chain.expected - chain.batch_first
    if intact == 0:
        written = "none of it intact"
    elif intact == 1:
        written = f"position {chain.batch_first} written"
    else:
        written = f"positions {chain.batch_first}..{chain.expected - 1} written"
    reason = f"unfinished batch {chain.batch_first}..{chain.batch_last} ({written})"
    if damage:
        reason = f"{damage}; {reason}"
    return TornTail(
        segment=path,
        offset=chain.batch_start_offset,
        end_offset=end_offset,
        reason=reason,
        last_position=chain.batch_first - 1,
        last_hash=chain.batch_start_prev,
    )


def _classify_bad_frame(
    fd: int,
    path: Path,
    size: int,
    offset: int,
    damage: str,
    chain: _Chain,
    next_segment: Path | None,
) -> TornTail:
    """Decide whether a damaged record is a torn tail or corruption (raised).

    It is a torn tail only in the last segment, and only if every intact record after it
    belongs to the batch the damaged record belongs to: that batch had not finished its
    ``fdatasync`` (its pages reached the disk in any order), so nobody was answered.
    A damaged record followed by any other intact record is damage to acknowledged data.
    """
    position = chain.expected
    batch_first = chain.batch_first if chain.batch_open else position
    nonzero_end = (_nonzero_end(fd, offset, size) + 7) & ~7
    garbage_end = nonzero_end
    same_batch = 0
    for frame in _valid_frames(fd, offset + _FRAME_BYTES, nonzero_end, size):
        in_batch = (
            frame.batch_first == batch_first
            and position < frame.position <= frame.batch_first + frame.batch_count - 1
        )
        if next_segment is not None or not in_batch:
            raise WalCorruption(path, offset, f"{damage}, followed by valid records", position)
        same_batch += 1
        garbage_end = max(garbage_end, frame.end)
    if next_segment is not None:
        raise WalCorruption(path, offset, f"{damage}, and {next_segment.name} follows", position)
    garbage_end = min(max(garbage_end, offset + _FRAME_BYTES), size)
    if same_batch:
        followed = f"followed only by {same_batch} records of its own unfinished batch"
    elif garbage_end < size:
        followed = "followed only by zeros"
    else:
        followed = "followed only by the end of the file"
    damage = f"{damage}, {followed}"
    if chain.batch_open:
        return _unfinished_batch(path, offset, garbage_end, chain, damage)
    return TornTail(
        segment=path,
        offset=offset,
        end_offset=garbage_end,
        reason=damage,
        last_position=position - 1,
        last_hash=chain.prev,
    )


def verify_wal(directory: Path, *, progress: ProgressCallback | None = None) -> WalSummary:
    """Check a WAL directory without changing it.

    Checks every segment header, the framing, CRC32C, positions, batch structure and hash
    chain of every record. Raises :class:`WalCorruption` on damage before the tail; a torn
    tail (which :func:`open_wal` would move aside) is returned in ``torn_tail``. Raises
    ``FileNotFoundError`` if the directory has no segment files.
    """
    directory = Path(directory)
    paths = segment_paths(directory)
    if not paths:
        raise FileNotFoundError(f"no WAL segment files (*.wal) in {directory}")
    return _verify_paths(directory, paths, progress)[0]


def _verify_paths(
    directory: Path, paths: Sequence[Path], progress: ProgressCallback | None
) -> tuple[WalSummary, list[list[_IndexEntry]]]:
    """Scan every segment; return the summary and each segment's read index."""
    summaries: list[SegmentSummary] = []
    indexes: list[list[_IndexEntry]] = []
    chain: _Chain | None = None
    torn: TornTail | None = None
    for index, path in enumerate(paths):
        next_segment = paths[index + 1] if index + 1 < len(paths) else None
        scan, chain = _scan_segment(path, index + 1, chain, next_segment, progress)
        summaries.append(scan.summary)
        indexes.append(scan.index)
        torn = scan.torn_tail
    last = summaries[-1]
    summary = WalSummary(
        directory=directory,
        segments=tuple(summaries),
        record_count=last.last_position,
        last_position=last.last_position,
        last_hash=last.last_hash,
        torn_tail=torn,
    )
    return summary, indexes


# --- Reading --------------------------------------------------------------------------


def _decode(buf: bytes, off: int, position: int, prev: bytes, path: Path, base: int) -> EventRecord:
    """Build the :class:`EventRecord` of a checked frame and cross-check its envelope."""
    length, _, _, _, _, canonical_length = _RECORD_HEAD.unpack_from(buf, off)
    record_end = off + _FRAME_BYTES + length
    try:
        envelope: dict[str, Any] = orjson.loads(
            buf[off + _RECORD_HEAD_BYTES : off + _RECORD_HEAD_BYTES + canonical_length]
        )
        # Positional: about a microsecond cheaper per record than keywords; the contract
        # tests (read back == appended) catch any change of the field order at once.
        record = EventRecord(
            position,
            UUID(envelope["event_id"]),
            envelope["stream_id"],
            envelope["stream_version"],
            envelope["type"],
            envelope["schema_version"],
            envelope["recorded_at_us"],
            envelope["data"],
            prev,
            buf[record_end - _HASH_BYTES : record_end],
        )
        agrees = (
            len(envelope) == 9
            and envelope["position"] == position
            and envelope["prev_hash"] == prev.hex()
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise WalCorruption(
            path,
            base + off,
            f"payload is not an event envelope: {exc!r} (record position {position})",
            position,
        ) from None
    if not agrees:
        raise WalCorruption(
            path,
            base + off,
            f"envelope disagrees with its frame or chain (record position {position})",
            position,
        )
    return record


_SegmentChunk = tuple[Path, bytes, int, list[int], bytes, int]


def _walk_segments(
    paths: Sequence[Path],
    from_position: int,
    to_position: int | None,
    start_at: _IndexEntry | None = None,
) -> Iterator[_SegmentChunk]:
    """The checked records of the log ``paths`` from the segment holding
    ``from_position`` through ``to_position`` (the end of the data when ``None``), a chunk
    at a time: ``(segment, buf, base, offsets, prev_hash, position)`` as
    :func:`_scan_chunks` yields them. Damage raises :class:`WalCorruption`, as does a log
    that ends before ``to_position`` or (with ``None``) in an unfinished batch.
    ``start_at``, an index entry in the first segment, skips the records before it."""
    firsts = [int(path.name[:20]) for path in paths]
    start = max(bisect_right(firsts, from_position) - 1, 0)
    chain: _Chain | None = None
    stop_position = -1 if to_position is None else to_position
    for index in range(start, len(paths)):
        path = paths[index]
        fd = os.open(path, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            header = _read_header(
                fd,
                path,
                size,
                index + 1,
                chain.expected if chain is not None else None,
                chain.prev if chain is not None else None,
            )
            begin = (header.first_position, HEADER_BYTES, header.prev_hash)
            if index == start and start_at is not None:
                begin = start_at
            chain = _Chain(begin[0], begin[2], begin[1])
            scan = _scan_chunks(fd, size, begin[1], chain, True, stop_position, None)
            while True:
                try:
                    buf, base, offsets, prev, position = next(scan)
                except StopIteration as done:
                    stop_offset, kind, info = done.value
                    break
                yield path, buf, base, offsets, prev, position
            at_the_end = kind == _END and to_position is None and index == len(paths) - 1
            if at_the_end and _nonzero_end(fd, stop_offset, size) > stop_offset:
                kind = _BAD_FRAME
                info = (
                    "zero length field followed by non-zero bytes "
                    f"(record position {chain.expected})"
                )
        finally:
            os.close(fd)
        if kind == _STOPPED:
            return
        if kind in (_BAD_FRAME, _BAD_CONTENT):
            raise WalCorruption(path, stop_offset, str(info), chain.expected)
        if to_position is None and chain.batch_open:
            raise WalCorruption(
                path,
                chain.batch_start_offset,
                f"unfinished batch {chain.batch_first}..{chain.batch_last}",
                chain.batch_first,
            )
    if to_position is None:
        return
    reached = chain.expected - 1 if chain is not None else 0
    raise WalCorruption(
        paths[-1],
        0,
        f"the log ends at position {reached} but position {to_position} was expected",
        reached + 1,
    )


def _read_segments(
    paths: Sequence[Path],
    from_position: int,
    to_position: int,
    start_at: _IndexEntry | None = None,
) -> Iterator[EventRecord]:
    """Records ``from_position..to_position`` of the segments ``paths`` (all of the log),
    each checked as in :func:`_scan_frames`, then decoded and cross-checked; the log must
    reach ``to_position``. This is the "after reading" half of the assertion pair.
    Memory stays bounded by one chunk's records."""
    if from_position > to_position:
        return
    for path, buf, base, offsets, prev, position in _walk_segments(
        paths, from_position, to_position, start_at
    ):
        for off in offsets:
            record_end = off + _FRAME_BYTES + _FRAME.unpack_from(buf, off)[0]
            if position >= from_position:
                yield _decode(buf, off, position, prev, path, base)
            prev = buf[record_end - _HASH_BYTES : record_end]
            position += 1


def scan_records(
    directory: Path, from_position: int = 1, to_position: int | None = None
) -> Iterator[tuple[int, bytes, bytes]]:
    """``(position, canonical bytes, hash)`` of each record, read-only, one pass.

    Each record is checked as :func:`verify_wal` checks it (CRC32C, position, batch
    fields, ``hash == sha256(prev_hash || canonical bytes)``, segment headers) but not
    decoded: for readers that parse the JSON themselves, at about the speed of
    ``verify``. Reads through ``to_position``, or to the end of the data when ``None``.
    Raises :class:`WalCorruption` where the log is damaged, including a torn tail
    (after yielding the intact records before it): :func:`verify_wal` tells the two
    apart.
    """
    if from_position < 1:
        raise ValueError(f"from_position must be >= 1, got {from_position}")
    paths = segment_paths(Path(directory))
    if not paths:
        raise FileNotFoundError(f"no WAL segment files (*.wal) in {directory}")
    if to_position is not None and from_position > to_position:
        return
    unpack = _RECORD_HEAD.unpack_from
    parts = getattr(_native, "record_parts", None)  # one call per chunk (native codec)
    for _, buf, _, offsets, _, position in _walk_segments(paths, from_position, to_position):
        if parts is not None:
            yield from parts(buf, offsets, position, from_position)
            continue
        for off in offsets:
            if position >= from_position:
                length, _, _, _, _, canonical_length = unpack(buf, off)
                record_end = off + _FRAME_BYTES + length
                yield (
                    position,
                    buf[off + _RECORD_HEAD_BYTES : off + _RECORD_HEAD_BYTES + canonical_length],
                    buf[record_end - _HASH_BYTES : record_end],
                )
            position += 1


def read_wal(
    directory: Path, from_position: int = 1, to_position: int | None = None
) -> Iterator[EventRecord]:
    """Records of a WAL directory, read-only and without recovery, each checked.

    Reads ``from_position..to_position`` (through the end of the intact log when
    ``to_position`` is ``None``; a torn tail is not read). Raises :class:`WalCorruption`
    where the log is damaged. ``ledger wal dump`` uses it after :func:`verify_wal`.
    """
    if from_position < 1:
        raise ValueError(f"from_position must be >= 1, got {from_position}")
    directory = Path(directory)
    if to_position is None:
        to_position = verify_wal(directory).last_position
    paths = segment_paths(directory)
    if not paths:
        raise FileNotFoundError(f"no WAL segment files (*.wal) in {directory}")
    return _read_segments(paths, from_position, to_position)


# --- Files and directories ------------------------------------------------------------


def _fsync_directory(directory: Path) -> None:
    """Make a directory's entries (created, renamed, removed files) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _ensure_directory(directory: Path) -> None:
    """Create ``directory`` and any missing parents, fsyncing each parent's entry."""
    missing: list[Path] = []
    path = directory
    while not path.exists():
        missing.append(path)
        path = path.parent
    for path in reversed(missing):
        with contextlib.suppress(FileExistsError):
            path.mkdir()
        _fsync_directory(path.parent)
    if not directory.is_dir():
        raise NotADirectoryError(f"WAL directory {directory} is not a directory")


def _lock_directory(directory: Path) -> int:
    fd = os.open(directory / _LOCK_NAME, os.O_RDWR | os.O_CREAT, _FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise WalLocked(f"WAL directory {directory} is open in another FileWal") from None
        raise
    return fd


def is_open_for_writing(directory: Path) -> bool:
    """Whether a :class:`FileWal` (in any process) has ``directory`` open right now.

    A read-only check (``ledger wal verify``) of a live log may find the batch being
    written as an unfinished tail; this tells it so. Probes the writer's lock without
    waiting and without creating anything.
    """
    try:
        fd = os.open(Path(directory) / _LOCK_NAME, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return True
        raise
    finally:
        os.close(fd)  # also releases the shared lock, if it was granted
    return False


def _remove_temporaries(directory: Path) -> None:
    """Remove segments that never got their final name (a crash during rotation) and an
    unused spare: they hold no records."""
    removed = False
    for entry in os.scandir(directory):
        if _TEMPORARY_NAME.match(entry.name):
            os.unlink(entry.path)
            removed = True
    if removed:
        _fsync_directory(directory)


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def _zero_fill(fd: int, start: int, end: int) -> None:
    """Write zeros over ``[start, end)``: real blocks, so later ``fdatasync`` calls need no
    metadata update (unlike ``posix_fallocate``'s unwritten extents or a growing file)."""
    offset = start
    while offset < end:
        size = min(_CHUNK_BYTES, end - offset)
        _pwrite_all(fd, _ZERO_CHUNK[:size] if size < _CHUNK_BYTES else _ZERO_CHUNK, offset)
        offset += size


def _segment_name(first_position: int) -> str:
    return f"{first_position:020d}.wal"


def _unique_path(directory: Path, stem: str, suffix: str) -> Path:
    path = directory / f"{stem}{suffix}"
    counter = 1
    while path.exists():
        path = directory / f"{stem}-{counter}{suffix}"
        counter += 1
    return path


def _write_new_file(path: Path, chunks: Iterator[bytes]) -> None:
    """Create ``path`` (which must not exist), write ``chunks`` and fsync it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _FILE_MODE)
    try:
        offset = 0
        for chunk in chunks:
            _pwrite_all(fd, chunk, offset)
            offset += len(chunk)
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy_range(path: Path, start: int, end: int) -> Iterator[bytes]:
    fd = os.open(path, os.O_RDONLY)
    try:
        offset = start
        while offset < end:
            chunk = _pread_exact(fd, min(_CHUNK_BYTES, end - offset), offset)
            if not chunk:
                return
            yield chunk
            offset += len(chunk)
    finally:
        os.close(fd)


def _move_torn_tail_aside(
    directory: Path, tail: TornTail, segment_size_bytes: int, preallocate: bool
) -> TornTailReport:
    """Copy the torn bytes aside (fsynced, with the directory) before truncating them
    away, so a crash in between repeats the recovery instead of losing evidence."""
    aside = _unique_path(directory, f"torn-{tail.segment.stem}-{tail.offset}", ".bin")
    _write_new_file(aside, _copy_range(tail.segment, tail.offset, tail.end_offset))
    _fsync_directory(directory)
    fd = os.open(tail.segment, os.O_RDWR)
    try:
        os.ftruncate(fd, tail.offset)
        if preallocate and tail.offset < segment_size_bytes:
            _zero_fill(fd, tail.offset, segment_size_bytes)
        os.fsync(fd)
    finally:
        os.close(fd)
    return TornTailReport(
        segment=tail.segment,
        offset=tail.offset,
        bytes_removed=tail.bytes_removed,
        aside_path=aside,
        reason=tail.reason,
        last_position=tail.last_position,
    )


def _install_segment(
    directory: Path,
    segment_number: int,
    first_position: int,
    prev_hash: bytes,
    spare: Path | None,
    preallocate_bytes: int,
) -> Path:
    """Create a segment with its header under a temporary name, fsync it, rename it into
    place and fsync the directory: a segment under its final name always has a header."""
    path = directory / _segment_name(first_position)
    temporary = directory / f"{path.name}.tmp"
    if spare is not None:
        os.rename(spare, temporary)
    flags = os.O_WRONLY | os.O_CREAT | (0 if spare is not None else os.O_TRUNC)
    fd = os.open(temporary, flags, _FILE_MODE)
    try:
        if spare is None and preallocate_bytes > HEADER_BYTES:
            _zero_fill(fd, HEADER_BYTES, preallocate_bytes)
        _pwrite_all(fd, _encode_header(segment_number, first_position, prev_hash), 0)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(temporary, path)
    _fsync_directory(directory)
    return path


# --- The log --------------------------------------------------------------------------


class FileWal:
    """The file-backed :class:`~ledger.application.ports.EventLog` of one book.

    Open it with :func:`open_wal`, which runs recovery. One thread at a time may call it
    (the node's commit thread); a directory lock keeps other FileWals out. ``read`` may
    be called while the log is open and sees the records appended before the call.
    """

    def __init__(
        self,
        *,
        directory: Path,
        lock_fd: int,
        segments: list[Path],
        indexes: list[list[_IndexEntry]],
        last_position: int,
        last_hash: bytes,
        write_offset: int,
        segment_size_bytes: int,
        preallocate: bool,
        recovery_report: TornTailReport | None,
    ) -> None:
        """Use :func:`open_wal`; this constructor trusts its arguments."""
        self._directory = directory
        self._lock_fd: int | None = lock_fd
        self._segments = segments
        self._indexes = indexes
        self._last_position = last_position
        self._last_hash = last_hash
        self._write_offset = write_offset
        self._segment_size_bytes = segment_size_bytes
        self._preallocate = preallocate
        self._fd: int | None = os.open(segments[-1], os.O_RDWR)
        self._failure: WalFailed | None = None
        self._spare: Path | None = None
        self._spare_thread: threading.Thread | None = None
        # One buffer for framing every batch, reused: a fresh allocation per batch costs
        # page faults and cold cache lines on the hot path. It keeps the largest batch's
        # size (at most BATCH_RECORDS_MAX records).
        self._frame_buffer = bytearray()
        self.recovery_report = recovery_report
        """The torn tail that :func:`open_wal` moved aside, or ``None``."""

    def __repr__(self) -> str:
        return (
            f"FileWal({str(self._directory)!r}, last_position={self._last_position}, "
            f"segments={len(self._segments)})"
        )

    def __enter__(self) -> FileWal:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def directory(self) -> Path:
        return self._directory

    @property
    def last_position(self) -> int:
        return self._last_position

    @property
    def last_hash(self) -> bytes:
        return self._last_hash

    @property
    def segment_size_bytes(self) -> int:
        return self._segment_size_bytes

    def segments(self) -> list[Path]:
        """The segment files, oldest first."""
        return list(self._segments)

    # -- writing --

    def append_batch(self, records: Sequence[EventRecord]) -> None:
        """Append ``records`` and make them durable with one ``fdatasync``.

        The records must continue the chain (else :class:`WalInvariantViolated`, nothing
        written). A batch goes whole into one segment: if it does not fit in the current
        one, the log rotates first. Any I/O error raises :class:`WalFailed` (for a failed
        ``fdatasync``, :class:`WalFsyncFailed`) and leaves this FileWal refusing appends.
        """
        fd = self._writable()
        if not records:
            return
        data, last_hash = self._frame(records)
        size = len(data)
        try:
            if (
                self._write_offset > HEADER_BYTES
                and self._write_offset + size > self._segment_size_bytes
            ):
                fd = self._rotate()
            try:
                _pwrite_all(fd, data, self._write_offset)
            except OSError as exc:
                raise self._fail(
                    WalWriteFailed(f"write to {self._segments[-1].name}: {exc}")
                ) from exc
        finally:
            if isinstance(data, memoryview):
                data.release()
        try:
            os.fdatasync(fd)
        except OSError as exc:
            raise self._fail(
                WalFsyncFailed(f"fdatasync of {self._segments[-1].name}: {exc}")
            ) from exc
        index = self._indexes[-1]
        if self._last_position + 1 >= index[-1][0] + _INDEX_STRIDE_RECORDS:
            index.append((self._last_position + 1, self._write_offset, self._last_hash))
        self._write_offset += size
        self._last_position += len(records)
        self._last_hash = last_hash
        if (
            self._preallocate
            and self._spare_thread is None
            and self._spare is None
            and self._write_offset * 2 > self._segment_size_bytes
        ):
            self._start_spare()

    def _frame(self, records: Sequence[EventRecord]) -> tuple[bytes | memoryview, bytes]:
        """The batch's bytes (a view of the reused frame buffer when the native codec
        framed it: release it after writing) and its last hash."""
        if _native is not None and isinstance(records, list | tuple):
            framed = _native.encode_batch(
                records, self._last_position, self._last_hash, self._frame_buffer
            )
            if framed is not None:
                length, last_hash = framed
                return memoryview(self._frame_buffer)[:length], last_hash
        return _encode_batch_checked(records, self._last_position, self._last_hash)

    def _writable(self) -> int:
        if self._failure is not None:
            raise WalFailed(
                f"WAL {self._directory} failed earlier ({self._failure}); reopen it to recover"
            ) from self._failure
        if self._fd is None:
            raise WalClosed(f"WAL {self._directory} is closed")
        return self._fd

    def _fail(self, failure: WalFailed) -> WalFailed:
        """Remember ``failure``: from now on this FileWal refuses appends."""
        self._failure = failure
        return failure

    def _rotate(self) -> int:
        """Close the current segment (already synced by its last batch) and install the
        next one, named by the position of the batch about to be written."""
        spare = self._take_spare()
        try:
            path = _install_segment(
                self._directory,
                len(self._segments) + 1,
                self._last_position + 1,
                self._last_hash,
                spare,
                self._segment_size_bytes if self._preallocate else 0,
            )
            fd = os.open(path, os.O_RDWR)
        except OSError as exc:
            raise self._fail(WalWriteFailed(f"segment rotation: {exc}")) from exc
        assert self._fd is not None
        os.close(self._fd)
        self._fd = fd
        self._segments.append(path)
        self._indexes.append([(self._last_position + 1, HEADER_BYTES, self._last_hash)])
        self._write_offset = HEADER_BYTES
        return fd

    # -- preallocation, off the hot path --

    def _start_spare(self) -> None:
        self._spare_thread = threading.Thread(
            target=self._prepare_spare, name="wal-preallocate", daemon=True
        )
        self._spare_thread.start()

    def _prepare_spare(self) -> None:
        """Runs on the preallocation thread; touches nothing but the spare file. If it
        fails (say, the disk is full), rotation preallocates inline and reports any error
        itself."""
        path = self._directory / _SPARE_NAME
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, _FILE_MODE)
            try:
                _zero_fill(fd, 0, self._segment_size_bytes)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(path)
            return
        self._spare = path

    def _take_spare(self) -> Path | None:
        if self._spare_thread is not None:
            self._spare_thread.join()
            self._spare_thread = None
        spare, self._spare = self._spare, None
        return spare

    # -- reading --

    def read(self, from_position: int = 1, to_position: int | None = None) -> Iterator[EventRecord]:
        """Records ``from_position..to_position`` (inclusive; through the records appended
        before this call when ``to_position`` is ``None`` or beyond them), each checked:
        framing, CRC32C, position continuity, batch structure, hash chain and envelope."""
        if self._lock_fd is None:
            raise WalClosed(f"WAL {self._directory} is closed")
        if from_position < 1:
            raise ValueError(f"from_position must be >= 1, got {from_position}")
        last = self._last_position
        to = last if to_position is None else min(to_position, last)
        if from_position > to:
            return iter(())
        segment = bisect_right([index[0][0] for index in self._indexes], from_position) - 1
        index = self._indexes[segment]
        start_at = index[bisect_right(index, (from_position, 1 << 64)) - 1]
        return _read_segments(list(self._segments), from_position, to, start_at)

    # -- moving a conflicting tail aside --

    def move_tail_aside(self, after_position: int) -> Path | None:
        """Move the records after ``after_position`` out of the log; return the side file.

        For recovery when the WAL holds a tail that PostgreSQL does not (a deposed
        writer's batch). The records' frames are copied, in order and unchanged, to
        ``conflict-<UTC time>-<first moved position>.wal`` in the WAL directory (fsynced),
        then later segments are removed and the segment holding ``after_position + 1`` is
        truncated and fsynced. ``after_position`` must end a batch (the log keeps whole
        batches only). Returns ``None`` when there is nothing after ``after_position``.
        """
        self._writable()
        if not 0 <= after_position <= self._last_position:
            raise ValueError(f"after_position {after_position} is outside 0..{self._last_position}")
        if after_position == self._last_position:
            return None
        firsts = [int(path.name[:20]) for path in self._segments]
        index = bisect_right(firsts, after_position + 1) - 1
        cut, cut_hash = self._locate_cut(index, after_position)
        ranges = [(self._segments[index], cut, self._data_end(index))]
        ranges += [
            (self._segments[i], HEADER_BYTES, self._data_end(i))
            for i in range(index + 1, len(self._segments))
        ]
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        aside = _unique_path(self._directory, f"conflict-{stamp}-{after_position + 1:020d}", ".wal")

        def frames() -> Iterator[bytes]:
            for path, start, end in ranges:
                yield from _copy_range(path, start, end)

        try:
            _write_new_file(aside, frames())
            _fsync_directory(self._directory)
            self._truncate_to(index, cut, after_position)
        except OSError as exc:
            raise self._fail(WalWriteFailed(f"moving the tail aside: {exc}")) from exc
        self._last_position = after_position
        self._last_hash = cut_hash
        return aside

    def _data_end(self, index: int) -> int:
        if index == len(self._segments) - 1:
            return self._write_offset
        fd = os.open(self._segments[index], os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            header = _read_header(fd, self._segments[index], size, index + 1, None, None)
            chain = _Chain(header.first_position, header.prev_hash, HEADER_BYTES)
            offset, kind, info = _scan_to_end(fd, size, HEADER_BYTES, chain, None)
        finally:
            os.close(fd)
        if kind != _END:
            raise WalCorruption(self._segments[index], offset, str(info), chain.expected)
        return offset

    def _locate_cut(self, index: int, after_position: int) -> tuple[int, bytes]:
        """The offset just after record ``after_position`` in segment ``index`` (or its
        header's end) and that record's hash; checks it ends a batch."""
        path = self._segments[index]
        fd = os.open(path, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            header = _read_header(fd, path, size, index + 1, None, None)
            if header.first_position == after_position + 1:
                return HEADER_BYTES, header.prev_hash
            chain = _Chain(header.first_position, header.prev_hash, HEADER_BYTES)
            offset, kind, info = _scan_to_end(fd, size, HEADER_BYTES, chain, None, after_position)
        finally:
            os.close(fd)
        if kind != _STOPPED:
            raise WalCorruption(path, offset, str(info), chain.expected)
        if chain.batch_last != after_position:
            raise ValueError(
                f"position {after_position} is inside batch {chain.batch_first}.."
                f"{chain.batch_last}; the log keeps whole batches, so cut at "
                f"{chain.batch_first - 1} or {chain.batch_last}"
            )
        return offset, chain.prev

    def _truncate_to(self, index: int, cut: int, after_position: int) -> None:
        """Remove segments after ``index`` (newest first, so a crash leaves a prefix),
        truncate segment ``index`` at ``cut`` and make it all durable."""
        self._take_spare()
        for path in reversed(self._segments[index + 1 :]):
            os.unlink(path)
        _fsync_directory(self._directory)
        del self._segments[index + 1 :]
        del self._indexes[index + 1 :]
        kept = [entry for entry in self._indexes[index] if entry[0] <= after_position]
        self._indexes[index] = kept or [self._indexes[index][0]]
        assert self._fd is not None
        os.close(self._fd)
        self._fd = None
        fd = os.open(self._segments[index], os.O_RDWR)
        self._fd = fd
        os.ftruncate(fd, cut)
        if self._preallocate and cut < self._segment_size_bytes:
            _zero_fill(fd, cut, self._segment_size_bytes)
        os.fsync(fd)
        self._write_offset = cut

    # -- closing --

    def close(self) -> None:
        """Release the directory; idempotent. Pending preallocation is waited for and an
        unused spare segment removed."""
        spare = self._take_spare()
        if spare is not None:
            with contextlib.suppress(OSError):
                os.unlink(spare)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def open_wal(
    directory: Path,
    segment_size_bytes: int = SEGMENT_SIZE_BYTES_DEFAULT,
    preallocate: bool = False,
) -> tuple[FileWal, TornTailReport | None]:
    """Open (creating if needed) the WAL in ``directory`` and recover it.

    Recovery checks every segment and record (see the module docstring). A torn tail is
    copied to ``torn-<segment>-<offset>.bin``, truncated, fsynced and returned as a
    :class:`TornTailReport` (also ``FileWal.recovery_report``); damage before the tail
    raises :class:`WalCorruption` and changes nothing. A missing directory is created and
    its parent fsynced. ``segment_size_bytes`` is the rotation limit; ``preallocate``
    zero-fills each segment to that size, the next one on a background thread.
    """
    if segment_size_bytes < SEGMENT_SIZE_BYTES_MIN:
        raise ValueError(
            f"segment_size_bytes {segment_size_bytes} is below {SEGMENT_SIZE_BYTES_MIN}"
        )
    directory = Path(directory)
    _ensure_directory(directory)
    lock_fd = _lock_directory(directory)
    try:
        _remove_temporaries(directory)
        paths = segment_paths(directory)
        report: TornTailReport | None = None
        if not paths:
            first = _install_segment(
                directory, 1, 1, GENESIS_HASH, None, segment_size_bytes if preallocate else 0
            )
            segments, last_position, last_hash, write_offset = (
                [first],
                0,
                GENESIS_HASH,
                HEADER_BYTES,
            )
            indexes = [[(1, HEADER_BYTES, GENESIS_HASH)]]
        else:
            summary, indexes = _verify_paths(directory, paths, None)
            if summary.torn_tail is not None:
                report = _move_torn_tail_aside(
                    directory, summary.torn_tail, segment_size_bytes, preallocate
                )
            segments = list(paths)
            last_position, last_hash = summary.last_position, summary.last_hash
            write_offset = summary.segments[-1].data_end
        wal = FileWal(
            directory=directory,
            lock_fd=lock_fd,
            segments=segments,
            indexes=indexes,
            last_position=last_position,
            last_hash=last_hash,
            write_offset=write_offset,
            segment_size_bytes=segment_size_bytes,
            preallocate=preallocate,
            recovery_report=report,
        )
    except BaseException:
        os.close(lock_fd)
        raise
    return wal, report
