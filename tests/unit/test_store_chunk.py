"""The native check of the event store's rows (``_replay.store_chunk``) on binary COPY
buffers built here: each finding at its row, as the SQL check gives them."""

from __future__ import annotations

import hashlib
import struct

import pytest

from ledger import _replay

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
