"""Which gids the coordinator's book may hold: a Bloom filter in front of the gid look-up.

A start with a client-chosen gid must not reuse a stored one, so the coordinator used to
ask PostgreSQL about every such gid (one query per group of concurrent starts), nearly
always to learn that it is new. :class:`GidFilter` answers "certainly not stored" for
most of them without the round trip; "maybe stored" still goes to PostgreSQL.

Exact on the negative side, as long as every gid that is ever stored was added: the
coordinator fills the filter from the book's stream ids at start (after recovery, so
streams that recovery re-inserted from the WAL are in) and adds each new gid before its
first event is written, so a gid can only be in the book if it is in the filter. A
gid added whose write then failed is a false positive, which costs one look-up.

Keys are the gid's text, hashed with Python's ``hash`` (SipHash with a key drawn per
process: the filter is rebuilt at every start anyway). Three bit positions per gid
(double hashing from the one 64-bit hash, Kirsch and Mitzenmacher, 2006) in a slice of
``bits_per_id`` bits per gid of capacity: a false positive rate near 0.5 % when the
slice is full. When the last slice is full a new one with twice its capacity is added,
so memory stays proportional to the gids stored (2 bytes each by default); the first
slice is sized at start for the book as it is.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["GidFilter"]

_MASK64 = (1 << 64) - 1


class _Slice:
    __slots__ = ("bits", "capacity", "count", "size")

    def __init__(self, capacity: int, bits_per_id: int) -> None:
        self.capacity = capacity
        self.count = 0
        self.size = max(64, capacity * bits_per_id)
        self.bits = bytearray((self.size + 7) // 8)


class GidFilter:
    """The gids stored in the coordinator's book, as a scalable Bloom filter (module
    docstring): :meth:`may_contain` is False only for a gid never added."""

    BITS_PER_ID = 16
    STREAM_PREFIXES = ("tcc-", "saga-")

    def __init__(self, capacity: int = 1 << 16, bits_per_id: int = BITS_PER_ID) -> None:
        if capacity < 1 or bits_per_id < 1:
            raise ValueError("capacity and bits_per_id must be positive")
        self._bits_per_id = bits_per_id
        self._slices = [_Slice(capacity, bits_per_id)]

    def add(self, gid: str) -> None:
        last = self._slices[-1]
        if last.count >= last.capacity:
            last = _Slice(2 * last.capacity, self._bits_per_id)
            self._slices.append(last)
        last.count += 1
        h = hash(gid) & _MASK64
        step = h >> 32 | 1
        bits, size = last.bits, last.size
        for p in (h % size, (h + step) % size, (h + 2 * step) % size):
            bits[p >> 3] |= 1 << (p & 7)

    def add_stream_ids(self, stream_ids: Iterable[str]) -> int:
        """Add the gid of each ``tcc-<gid>`` or ``saga-<gid>`` stream; return how many."""
        added = 0
        for stream_id in stream_ids:
            kind, sep, gid = stream_id.partition("-")
            if sep and f"{kind}-" in self.STREAM_PREFIXES:
                self.add(gid)
                added += 1
        return added

    def may_contain(self, gid: str) -> bool:
        h = hash(gid) & _MASK64
        step = h >> 32 | 1
        for s in self._slices:
            bits, size = s.bits, s.size
            p, q, r = h % size, (h + step) % size, (h + 2 * step) % size
            if (
                bits[p >> 3] >> (p & 7) & 1
                and bits[q >> 3] >> (q & 7) & 1
                and bits[r >> 3] >> (r & 7) & 1
            ):
                return True
        return False

    @property
    def count(self) -> int:
        """Gids added (a gid added twice counts twice)."""
        return sum(s.count for s in self._slices)

    @property
    def size_bytes(self) -> int:
        return sum(len(s.bits) for s in self._slices)
