"""The gid filter: never a false "not stored", few false "maybe stored"."""

from __future__ import annotations

import uuid

import pytest

from ledger.sagas.gidfilter import GidFilter


def test_every_gid_added_is_found_and_few_others_are() -> None:
    gids = GidFilter(capacity=1000)
    added = [uuid.uuid4().hex for _ in range(20_000)] + ["a", "b-c", "x:1.2"]
    for g in added:
        gids.add(g)
    assert all(gids.may_contain(g) for g in added)  # grew past its first capacity
    others = [f"other-{i}" for i in range(20_000)]
    assert sum(gids.may_contain(g) for g in others) < len(others) * 0.05
    assert gids.count == len(added)


def test_stream_ids_of_both_kinds_are_read_as_gids() -> None:
    gids = GidFilter()
    streams = ["tcc-g1", "saga-g-2", "tcc-a:b", "$coordinator-open-streams", "account-x"]
    assert gids.add_stream_ids(streams) == 3
    assert gids.may_contain("g1") and gids.may_contain("g-2") and gids.may_contain("a:b")
    assert gids.count == 3


def test_stream_ids_added_in_bulk_grow_the_filter_and_stay_found() -> None:
    gids = GidFilter(capacity=100)
    added = [uuid.uuid4().hex for _ in range(1000)]
    assert gids.add_stream_ids(f"saga-{g}" for g in added) == 1000
    assert all(gids.may_contain(g) for g in added)
    assert gids.count == 1000
    assert gids.size_bytes == 2 * (100 + 200 + 400 + 800)  # 16 bits per gid of capacity


def test_a_capacity_below_one_is_refused() -> None:
    with pytest.raises(ValueError):
        GidFilter(capacity=0)
