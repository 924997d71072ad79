"""``_replay.copy_digests`` on binary COPY buffers built here: the digests equal
hashlib's over the rows' bytes in the described order, however the rows come."""

from __future__ import annotations

import hashlib
import itertools
import random
import struct
import uuid
from collections.abc import Sequence

import pytest

from ledger import _replay

HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
TRAILER = struct.pack(">h", -1)
F8, F4, F16, TEXT, OPT8, OPT16, RAW = range(1, 8)


def copy(rows: list[list[bytes | None]]) -> bytes:
    out = [HEADER]
    for fields in rows:
        out.append(struct.pack(">h", len(fields)))
        for f in fields:
            out.append(struct.pack(">i", -1) if f is None else struct.pack(">i", len(f)) + f)
    out.append(TRAILER)
    return b"".join(out)


def i8(v: int) -> bytes:
    return struct.pack(">q", v)


# (group id, position, an optional id, a text, a raw value)
SPEC = bytes((1, F8, 0, F16, 3, TEXT, 2, OPT16, 4, RAW))


def row_bytes(group: bytes, position: int, opt: bytes | None, text: bytes, raw: bytes) -> bytes:
    tail = b"\0" if opt is None else b"\1" + opt
    return i8(position) + group + text + b"\0" + tail + raw


def test_rows_in_any_order_are_hashed_per_group_in_position_order() -> None:
    rng = random.Random(7)
    groups = [uuid.UUID(int=rng.getrandbits(128)).bytes for _ in range(300)]  # > 64: regrows
    rows = []
    for position in range(1, 3001):
        g = rng.choice(groups)
        opt = uuid.uuid4().bytes if position % 3 else None
        rows.append((g, position, opt, b"t%d" % (position % 5), b"r" * (position % 700)))
    shuffled = rows[:]
    rng.shuffle(shuffled)
    got = _replay.copy_digests(
        copy([[g, i8(p), o, t, r] for g, p, o, t, r in shuffled]), 5, 1, 0, (SPEC,)
    )
    want: dict[bytes, tuple[int, bytes]] = {}
    for g in {r[0] for r in rows}:
        mine = [r for r in rows if r[0] == g]  # already in position order
        sha = hashlib.sha256(b"".join(row_bytes(*r) for r in mine))
        want[g] = (len(mine), sha.digest())
    assert {g: (n, d[0]) for g, n, d in got} == want
    assert len(got) == len(want)  # each group once


def test_groups_come_in_the_order_first_seen_and_rows_in_order_are_kept() -> None:
    a, b = uuid.uuid4().bytes, uuid.uuid4().bytes
    buf = copy([[b, i8(1), None, b"x", b""], [a, i8(2), None, b"y", b""]])
    got = _replay.copy_digests(buf, 5, 1, 0, (SPEC,))
    assert [g for g, _, _ in got] == [b, a]
    assert got[0][2][0] == hashlib.sha256(row_bytes(b, 1, None, b"x", b"")).digest()


def test_without_groups_every_row_goes_into_each_spec() -> None:
    # Two specs over the same rows, as the transfers' two digests.
    once, state = bytes((0, F8, 1, F4)), bytes((2, TEXT, 3, OPT8))
    rows = [
        [i8(p), struct.pack(">i", p * 10), b"s%d" % p, i8(p) if p % 2 else None] for p in (3, 1, 2)
    ]
    [(group, count, digests)] = _replay.copy_digests(copy(rows), 4, 0, -1, (once, state))
    assert (group, count) == (b"", 3)
    assert (
        digests[0]
        == hashlib.sha256(b"".join(i8(p) + struct.pack(">i", p * 10) for p in (1, 2, 3))).digest()
    )
    assert (
        digests[1]
        == hashlib.sha256(
            b"".join(b"s%d\0" % p + (b"\1" + i8(p) if p % 2 else b"\0") for p in (1, 2, 3))
        ).digest()
    )


def test_no_rows_give_no_groups_or_the_digests_of_nothing() -> None:
    empty = copy([])
    assert _replay.copy_digests(empty, 5, 1, 0, (SPEC,)) == []
    nothing = hashlib.sha256().digest()
    assert _replay.copy_digests(empty, 5, 1, -1, (SPEC, SPEC)) == [(b"", 0, (nothing, nothing))]


def test_a_null_or_a_wrong_width_changes_the_digest_and_is_not_an_error() -> None:
    g = uuid.uuid4().bytes
    good: list[bytes | None] = [g, i8(1), uuid.uuid4().bytes, b"t", b"r"]
    base = _replay.copy_digests(copy([good]), 5, 1, 0, (SPEC,))[0][2][0]
    for field, value in [(3, None), (2, b"short"), (4, None)]:
        odd: list[bytes | None] = list(good)
        odd[field] = value
        [(_, count, (digest,))] = _replay.copy_digests(copy([odd]), 5, 1, 0, (SPEC,))
        assert count == 1 and digest != base


@pytest.mark.parametrize(
    ("buf", "args", "message"),
    [
        (b"not a copy at all!!!", (5, 1, 0, (SPEC,)), "not a binary COPY"),
        (copy([[b"x"]]), (5, 1, 0, (SPEC,)), "another number of fields"),
        (
            copy([[uuid.uuid4().bytes, i8(1), None, b"t", b""]])[:-4],
            (5, 1, 0, (SPEC,)),
            "cut short",
        ),
        (copy([[uuid.uuid4().bytes, b"1234", None, b"t", b""]]), (5, 1, 0, (SPEC,)), "position"),
        (copy([]), (5, 1, 0, (bytes((9, F8)),)), "no such field"),
        (copy([]), (5, 1, 0, (b"\x01",)), "pairs"),
        (copy([]), (5, 7, 0, (SPEC,)), "bad field numbers"),
        (copy([])[:-2], (5, 1, 0, (SPEC,)), "without its trailer"),
    ],
    ids=["not copy", "fields", "cut", "position", "field", "pairs", "order", "trailer"],
)
def test_a_buffer_or_spec_that_is_not_as_described_is_a_clear_error(
    buf: bytes, args: tuple[int, int, int, tuple[bytes, ...]], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        _replay.copy_digests(buf, *args)


def expected(
    rows: Sequence[tuple[bytes, int, bytes | None, bytes, bytes]],
) -> dict[bytes, tuple[int, bytes]]:
    out: dict[bytes, list[bytes]] = {}
    for r in sorted(rows, key=lambda r: r[1]):
        out.setdefault(r[0], []).append(row_bytes(*r))
    return {g: (len(b), hashlib.sha256(b"".join(b)).digest()) for g, b in out.items()}


@pytest.mark.parametrize("case", ["in order", "one late row", "more groups than hashed as read"])
def test_rows_hashed_as_read_or_placed_first_give_the_same_digests(case: str) -> None:
    # Rows in position order are hashed as they are read; a row out of order (here the
    # last), or more groups than that keeps, has them placed by group and sorted instead.
    groups = [uuid.UUID(int=i * 7919 + 1).bytes for i in range(50)]
    rows = [(groups[p % 50], p, None, b"t", b"") for p in range(1, 2001)]
    if case == "one late row":
        rows.append((groups[3], 0, None, b"late", b""))
    if case == "more groups than hashed as read":
        rows = [(uuid.UUID(int=p).bytes, p, None, b"", b"") for p in range(1, 65_540)]
    got = _replay.copy_digests(
        copy([[g, i8(p), o, t, r] for g, p, o, t, r in rows]), 5, 1, 0, (SPEC,)
    )
    assert {g: (n, d[0]) for g, n, d in got} == expected(rows)


def slices(rows: list[list[bytes | None]], cuts: list[int]) -> list[bytes]:
    """The rows as several COPYs, cut before the given row numbers."""
    bounds = [0, *cuts, len(rows)]
    return [copy(rows[a:b]) for a, b in itertools.pairwise(bounds)]


def test_digests_fed_in_slices_equal_copy_digests_of_the_whole() -> None:
    groups = [uuid.uuid4().bytes for _ in range(40)]
    rows: list[list[bytes | None]] = [
        [groups[p % 40], i8(p), None if p % 4 else uuid.uuid4().bytes, b"t", b"x" * (p % 9)]
        for p in range(1, 1001)
    ]
    whole = _replay.copy_digests(copy(rows), 5, 1, 0, (SPEC,))
    state = _replay.Digests(5, 1, 0, (SPEC,))
    assert all(state.feed(part) for part in slices(rows, [1, 333, 334, 900]))
    assert state.result() == whole
    assert state.result() == whole  # asking again gives the same


def test_a_group_whose_rows_come_out_of_order_is_left_to_be_read_again() -> None:
    g, h = uuid.uuid4().bytes, uuid.uuid4().bytes
    state = _replay.Digests(5, 1, 0, (SPEC,))
    assert state.feed(copy([[g, i8(5), None, b"t", b""], [h, i8(1), None, b"u", b""]]))
    assert state.feed(copy([[g, i8(4), None, b"t", b""], [h, i8(2), None, b"u", b""]]))
    assert state.feed(copy([[g, i8(6), None, b"t", b""]]))
    got = state.result()
    assert got is not None
    by_group = {group: (count, digests) for group, count, digests in got}
    assert by_group[g] == (3, None)  # out of order: read again by the caller
    rows: list[list[bytes | None]] = [[h, i8(1), None, b"u", b""], [h, i8(2), None, b"u", b""]]
    assert by_group[h] == tuple(_replay.copy_digests(copy(rows), 5, 1, 0, (SPEC,))[0][1:])


def test_digests_of_no_rows_and_of_too_many_groups() -> None:
    nothing = hashlib.sha256().digest()
    state = _replay.Digests(5, 1, -1, (SPEC, SPEC))
    assert state.feed(copy([]))
    assert state.result() == [(b"", 0, (nothing, nothing))]
    many = _replay.Digests(5, 1, 0, (SPEC,))
    rows: list[list[bytes | None]] = [
        [uuid.UUID(int=p).bytes, i8(p), None, b"", b""] for p in range(1, 65_540)
    ]
    assert not many.feed(copy(rows))  # one state per group: past the limit, read whole
    assert many.result() is None


def test_digests_refuse_what_is_not_as_described() -> None:
    with pytest.raises(ValueError, match="bad field numbers"):
        _replay.Digests(5, 9, 0, (SPEC,))
    with pytest.raises(ValueError, match="no such field"):
        _replay.Digests(5, 1, 0, (bytes((7, F8)),))
    state = _replay.Digests(5, 1, 0, (SPEC,))
    with pytest.raises(ValueError, match="not a binary COPY"):
        state.feed(b"nope")
    with pytest.raises(ValueError, match="another number of fields"):
        state.feed(copy([[b"x"]]))
