"""A scalable, blocked Bloom filter of 64-bit hashes: the core of the node's stream filter
(:class:`~ledger.application.loading.StreamFilter`) and the coordinator's gid filter
(:class:`~ledger.sagas.gidfilter.GidFilter`), which only turn their keys into hashes.

:class:`ScalableBloomFilter` answers "certainly never added" or "maybe added" about a
hash. It has no false negatives: a hash that was added is always "maybe added". A false
positive is a hash never added that is still "maybe added".

Hashes: the caller hashes its keys, and the filter uses the bits of each hash as they
come, so they must be well mixed over all 64 bits. Python's ``hash`` of ``str`` or
``bytes`` on a 64-bit build is such a hash (SipHash, with a key drawn per process, so
even sequential keys spread evenly; a negative hash is fine); ``hash`` of a small
``int`` is the int itself and is not. A filter of Python hashes is only good in the
process that built it.

Layout: a blocked Bloom filter (Putze, Sanders and Singler, "Cache-, Hash- and
Space-Efficient Bloom Filters", 2007) with one 64-bit word per id: the hash modulo the
slice's word count picks the word, and three 12-bit fields of the hash (its bits 28 to
63) each pick an entry of a table of 4096 masks of two bits, so an id sets up to 6 bits
of its one word. Adding or asking costs one word per slice and a table look-up instead
of shifts per bit, which matters in Python, where every bit test is several interpreted
operations. The price is a higher false positive rate than a classic Bloom filter of
the same memory with the best number of bits set per id (in theory about 5e-4 when
full at 16 bits per id, with 11 bits set).

Memory: ``bits_per_id`` bits per id of capacity, rounded up to whole 64-bit words.
Measured false positive rates (one slice of 10^6 ids of capacity, random 16-byte keys
hashed with ``hash``, 2 * 10^6 keys never added asked):

    ============  ==========  ===============
    bits per id   when full   when half full
    ============  ==========  ===============
    16            4.1e-3      4.6e-4
    20            2.0e-3      2.2e-4
    24            1.0e-3      1.3e-4
    ============  ==========  ===============

Growth: when the last slice holds its capacity of ids, a new one with twice that capacity
is added (a scalable Bloom filter, after Almeida, Baquero, Preguiça and Hutchison,
2007, but without their tightening of each new slice's rate). So memory stays at
``bits_per_id`` bits per id of capacity, and the capacity below the first slice's plus
twice the ids added. Each slice adds one word test to asking about a hash never
added, and its false positive rate to the filter's: about the full rate above times the
number of full slices, plus the last slice's own (measured with 5 full slices: 2.0e-2
at 16 bits per id, 5.3e-3 at 24).
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable
from itertools import chain, islice

__all__ = ["ScalableBloomFilter"]

# 12 bits of a hash pick an entry, which sets two bits of a word (6 bits choose each):
# three entries per id set up to 6 bits, with a table look-up instead of shifts per bit.
_MASKS = tuple((1 << (i & 63)) | (1 << (i >> 6)) for i in range(4096))


class _Slice:
    """``capacity`` ids in ``size`` 64-bit words."""

    __slots__ = ("capacity", "count", "size", "words")

    def __init__(self, capacity: int, bits_per_id: int) -> None:
        self.capacity = capacity
        self.count = 0
        self.size = max(1, -(-capacity * bits_per_id // 64))
        self.words = array("Q", bytes(8 * self.size))


class ScalableBloomFilter:
    """A set of 64-bit hashes as a scalable, blocked Bloom filter (module docstring):
    :meth:`may_contain_hash` is False only for a hash never added.

    ``capacity`` is the first slice's, in ids; ``bits_per_id`` sets the memory of every
    slice and with it the false positive rate. Both must be positive."""

    __slots__ = ("_bits_per_id", "_last", "_slices")

    def __init__(self, capacity: int, bits_per_id: int) -> None:
        if capacity < 1 or bits_per_id < 1:
            raise ValueError("capacity and bits_per_id must be positive")
        self._bits_per_id = bits_per_id
        self._slices = [_Slice(capacity, bits_per_id)]
        self._last = self._slices[0]

    # -- adding ------------------------------------------------------------------------

    def add_hash(self, h: int) -> None:
        last = self._last
        if last.count >= last.capacity:
            last = self._grow()
        last.count += 1
        m = _MASKS
        last.words[h % last.size] |= m[h >> 28 & 4095] | m[h >> 40 & 4095] | m[h >> 52 & 4095]

    def add_hashes(self, hashes: Iterable[int]) -> None:
        """:meth:`add_hash` of each, with the slice's state held in locals (the start-up
        path). Fills each slice exactly before the next is added, and adds none for
        nothing."""
        pending = iter(hashes)
        m = _MASKS
        while True:
            last = self._last
            room = last.capacity - last.count
            if room <= 0:
                first = next(pending, None)
                if first is None:  # no slice for nothing
                    return
                pending = chain((first,), pending)
                last = self._grow()
                room = last.capacity
            words = last.words
            size = last.size
            taken = 0
            for h in islice(pending, room):
                words[h % size] |= m[h >> 28 & 4095] | m[h >> 40 & 4095] | m[h >> 52 & 4095]
                taken += 1
            last.count += taken
            if taken < room:
                return

    def _grow(self) -> _Slice:
        last = self._last = _Slice(2 * self._last.capacity, self._bits_per_id)
        self._slices.append(last)
        return last

    # -- asking ------------------------------------------------------------------------

    def may_contain_hash(self, h: int) -> bool:
        m = _MASKS
        mask = m[h >> 28 & 4095] | m[h >> 40 & 4095] | m[h >> 52 & 4095]
        for s in self._slices:  # noqa: SIM110 (any() would build a generator per id)
            if s.words[h % s.size] & mask == mask:
                return True
        return False

    # -- figures -----------------------------------------------------------------------

    @property
    def count(self) -> int:
        """Hashes added (a hash added twice counts twice)."""
        return sum(s.count for s in self._slices)

    @property
    def capacity(self) -> int:
        """Ids of capacity, over every slice."""
        return sum(s.capacity for s in self._slices)

    @property
    def size_bytes(self) -> int:
        """Bytes of the slices' words."""
        return sum(8 * s.size for s in self._slices)

    @property
    def slices(self) -> int:
        return len(self._slices)

    @property
    def bits_per_id(self) -> int:
        return self._bits_per_id
