"""The Bloom filter core: never "not added" for a hash that was added, across growths and
both ways of adding; a false positive rate within bounds; the size figures it reports.

Keys are random bytes hashed with Python's ``hash``, as the filters over the core use it
(the per-process hash key makes each run a different draw, so the rate bounds sit well
above the rates measured in ``ledger/bloom.py``).
"""

from __future__ import annotations

import os

import pytest

from ledger.bloom import ScalableBloomFilter


def random_hashes(n: int) -> list[int]:
    return [hash(os.urandom(16)) for _ in range(n)]


def words(capacity: int, bits_per_id: int) -> int:
    return max(1, -(-capacity * bits_per_id // 64))


def false_positive_rate(bloom: ScalableBloomFilter, n: int) -> float:
    return sum(map(bloom.may_contain_hash, random_hashes(n))) / n


def test_every_hash_added_one_at_a_time_is_found_across_growths() -> None:
    bloom = ScalableBloomFilter(1000, 24)
    added = random_hashes(50_000)
    for i, h in enumerate(added):
        bloom.add_hash(h)
        assert bloom.may_contain_hash(added[i // 2])
    assert bloom.slices == 6  # 1000 + 2000 + ... + 32000 ids of capacity
    assert all(map(bloom.may_contain_hash, added))


def test_every_hash_added_in_bulk_is_found_and_the_filter_is_the_same() -> None:
    added = random_hashes(50_000)
    one_by_one = ScalableBloomFilter(700, 16)
    for h in added:
        one_by_one.add_hash(h)
    bulk = ScalableBloomFilter(700, 16)
    for start in range(0, len(added), 3001):  # pages that end inside slices
        bulk.add_hashes(iter(added[start : start + 3001]))
    assert all(map(bulk.may_contain_hash, added))
    assert (bulk.slices, bulk.capacity, bulk.count, bulk.size_bytes) == (
        one_by_one.slices,
        one_by_one.capacity,
        one_by_one.count,
        one_by_one.size_bytes,
    )
    others = random_hashes(50_000)
    assert list(map(bulk.may_contain_hash, others)) == list(
        map(one_by_one.may_contain_hash, others)
    )


def test_hashes_of_any_sign_and_size_are_found() -> None:
    extremes = [0, 1, -1, 2**63 - 1, -(2**63), 2**64 - 1, 1 << 28, -(1 << 52), 12345]
    bloom = ScalableBloomFilter(4, 24)
    bloom.add_hashes(extremes[:5])
    for h in extremes[5:]:
        bloom.add_hash(h)
    assert all(map(bloom.may_contain_hash, extremes))
    assert bloom.count == len(extremes)


@pytest.mark.parametrize(("bits_per_id", "bound"), [(16, 1e-2), (24, 3e-3)])
def test_false_positive_rate_when_full_stays_under_its_bound(
    bits_per_id: int, bound: float
) -> None:
    # measured when full: 4.1e-3 at 16 bits per id, 1.0e-3 at 24
    bloom = ScalableBloomFilter(50_000, bits_per_id)
    bloom.add_hashes(random_hashes(50_000))
    assert bloom.slices == 1 and bloom.count == bloom.capacity
    assert false_positive_rate(bloom, 100_000) < bound


def test_false_positive_rates_of_full_slices_add_up_but_stay_bounded() -> None:
    # measured with 5 full slices at 24 bits per id: 5.3e-3 (about 5 times one slice's)
    bloom = ScalableBloomFilter(2000, 24)
    bloom.add_hashes(random_hashes(62_000))
    assert bloom.slices == 5 and bloom.count == bloom.capacity
    assert false_positive_rate(bloom, 100_000) < 1.2e-2


def test_an_empty_filter_rules_everything_out() -> None:
    bloom = ScalableBloomFilter(10, 24)
    assert not any(map(bloom.may_contain_hash, random_hashes(1000)))
    assert (bloom.count, bloom.capacity, bloom.slices) == (0, 10, 1)


def test_figures_count_capacity_and_size_of_every_slice() -> None:
    bloom = ScalableBloomFilter(100, 24)
    assert bloom.size_bytes == 8 * words(100, 24) == 304
    assert bloom.bits_per_id == 24
    added = random_hashes(1000)
    for h in added:
        bloom.add_hash(h)
    assert bloom.slices == 4  # 100 + 200 + 400 + 800
    assert bloom.capacity == 1500 and bloom.count == 1000
    assert bloom.size_bytes == 8 * sum(words(c, 24) for c in (100, 200, 400, 800))
    assert bloom.capacity < 100 + 2 * bloom.count
    bloom.add_hash(added[0])  # a hash added twice counts twice
    assert bloom.count == 1001


def test_a_slice_has_at_least_one_word() -> None:
    bloom = ScalableBloomFilter(1, 1)
    assert bloom.size_bytes == 8
    bloom.add_hashes([7, 8])
    assert bloom.slices == 2 and bloom.size_bytes == 16


def test_bulk_adding_fills_slices_exactly_and_adds_none_for_nothing() -> None:
    bloom = ScalableBloomFilter(10, 24)
    bloom.add_hashes(random_hashes(10))
    assert bloom.slices == 1 and bloom.count == 10
    bloom.add_hashes([])
    assert bloom.slices == 1
    bloom.add_hashes(random_hashes(25))  # 20 into the second slice, 5 into the third
    assert (bloom.slices, bloom.capacity, bloom.count) == (3, 70, 35)


@pytest.mark.parametrize(("capacity", "bits_per_id"), [(0, 24), (-1, 24), (10, 0), (10, -3)])
def test_a_capacity_or_bits_per_id_below_one_is_refused(capacity: int, bits_per_id: int) -> None:
    with pytest.raises(ValueError, match="must be positive"):
        ScalableBloomFilter(capacity, bits_per_id)
