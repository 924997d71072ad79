"""The native chaining of decided events against the Python reference."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.application import records
from ledger.application.records import (
    GENESIS_HASH,
    EventItem,
    EventRecord,
    canonical_bytes,
    chain_new_events,
    uuids_from_random,
    verify_chain,
)

native = pytest.importorskip("ledger.application._chain", reason="the extension is not built")

json_scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text()
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
safe_text = st.text(
    st.sampled_from("abcxyzABCXYZ0189_.:-"), min_size=0, max_size=40
)  # the characters the native path writes as they are
items = st.tuples(
    safe_text | st.sampled_from(['quoted "stream"', "ünï", "tab\there"]),
    st.integers(-(2**63), 2**63 - 1) | st.just(True),
    safe_text | st.just("Odd\\Type"),
    st.integers(0, 5),
    st.dictionaries(st.text(), json_values, max_size=6),
)


@contextmanager
def python_only() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(records, "_native", None)
        yield


def _fields(r: EventRecord) -> tuple[Any, ...]:
    return (*[getattr(r, f) for f in EventRecord.__slots__], str(r.event_id), r.event_id.version)


@settings(max_examples=300, deadline=None)
@given(
    batch=st.lists(items, min_size=1, max_size=6),
    at=st.integers(0, 2**63 - 1),
    first=st.integers(1, 2**62),
    prev=st.binary(min_size=32, max_size=32),
    seed=st.binary(min_size=16, max_size=16),
)
def test_native_records_equal_the_python_ones(
    batch: list[EventItem], at: int, first: int, prev: bytes, seed: bytes
) -> None:
    raw = (seed * len(batch))[: 16 * len(batch)]
    got = chain_new_events(batch, raw, at, first, prev)
    with python_only():
        want = chain_new_events(batch, raw, at, first, prev)
    assert [_fields(r) for r in got] == [_fields(r) for r in want]
    assert list(verify_chain(got, first, prev)) == got
    for r in got:  # the cached bytes are the reference canonical form
        assert r.canonical() == canonical_bytes(
            r.position,
            r.event_id,
            r.stream_id,
            r.stream_version,
            r.type,
            r.schema_version,
            r.recorded_at_us,
            r.data,
            r.prev_hash,
        )


def test_plain_events_take_the_native_path() -> None:
    batch: list[EventItem] = [
        ("transfer-" + str(uuid.uuid4()), 1, "TransferCreated", 1, {"amount_minor": i})
        for i in range(50)
    ]
    raw = os.urandom(16 * 50)
    got = native.chain_events(
        batch, raw, 7, 10, GENESIS_HASH, orjson.dumps, orjson.OPT_SORT_KEYS,
        EventRecord, uuid.UUID, uuid.SafeUUID.unknown,
    )  # fmt: skip
    assert got is not None and [r.position for r in got] == list(range(10, 60))
    assert [r.event_id for r in got] == uuids_from_random(raw)
    assert all(r.event_id.version == 4 and r.event_id.variant == uuid.RFC_4122 for r in got)
    assert got[1].prev_hash is got[0].hash
    assert [r.data_json for r in got] == [orjson.dumps(d[4]) for d in batch]


@pytest.mark.parametrize(
    "item",
    [
        ('stream "quoted"', 1, "T", 1, {}),
        ("s", 1, "ünï", 1, {}),
        ("s", True, "T", 1, {}),
        ("s", 1, "T", 1.0, {}),
    ],
)
def test_events_it_does_not_handle_are_left_to_python(item: Any) -> None:
    args = (orjson.dumps, orjson.OPT_SORT_KEYS, EventRecord, uuid.UUID, uuid.SafeUUID.unknown)
    assert native.chain_events([item], bytes(16), 1, 1, GENESIS_HASH, *args) is None
    [record] = chain_new_events([item], bytes(16), 1, 1, GENESIS_HASH)
    assert record.hash == records.compute_hash(GENESIS_HASH, record.canonical())


def test_what_the_native_path_cannot_write() -> None:
    args = (orjson.dumps, orjson.OPT_SORT_KEYS, EventRecord, uuid.UUID, uuid.SafeUUID.unknown)
    with pytest.raises(TypeError):  # orjson's own error comes through the native call
        native.chain_events(
            [("s", 1, "T", 1, {"x": object()})], bytes(16), 1, 1, GENESIS_HASH, *args
        )
    huge: EventItem = ("s", 2**63, "T", 1, {})
    assert native.chain_events([huge], bytes(16), 1, 1, GENESIS_HASH, *args) is None
    [record] = chain_new_events([huge], bytes(16), 1, 1, GENESIS_HASH)  # Python writes it
    assert b'"stream_version":9223372036854775808' in record.canonical()


def test_bad_arguments_are_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match="1 events need 16 id bytes, got 15"):
        chain_new_events([("s", 1, "T", 1, {})], bytes(15), 1, 1, GENESIS_HASH)
    args = (orjson.dumps, orjson.OPT_SORT_KEYS, EventRecord, uuid.UUID, uuid.SafeUUID.unknown)
    with pytest.raises(ValueError, match="prev_hash must be 32 bytes"):
        native.chain_events([], b"", 1, 1, b"short", *args)
    with pytest.raises(ValueError, match="2 items need 32 id bytes, got 16"):
        native.chain_events([("s", 1, "T", 1, {})] * 2, bytes(16), 1, 1, GENESIS_HASH, *args)


def test_no_reference_leaks() -> None:
    batch: list[EventItem] = [(f"s-{i}", 1, "T", 1, {"n": i}) for i in range(100)]
    raw = bytes(1600)
    data = batch[0][4]
    before = sys.getrefcount(data)
    for _ in range(50):
        chain_new_events(batch, raw, 1, 1, GENESIS_HASH)
    assert sys.getrefcount(data) == before


@settings(max_examples=200, deadline=None)
@given(batch=st.lists(items, min_size=1, max_size=6), first=st.integers(1, 2**62))
def test_copy_rows_equal_the_python_rows(batch: list[EventItem], first: int) -> None:
    from ledger.adapters.postgres import _copy_rows

    records = chain_new_events(batch, os.urandom(16 * len(batch)), 17, first, GENESIS_HASH)
    got = native.copy_rows(records, b"book-1")
    want = _copy_rows(records, b"book-1")
    if got is not None:
        assert got == want
    else:  # only for what COPY text must escape, or a version that is not an int
        assert any(
            any(c in r.stream_id + r.type for c in "\\\t\n\r")
            or not (r.stream_id + r.type).isascii()
            or type(r.stream_version) is not int
            for r in records
        )


def test_copy_rows_leaves_uncached_and_escaped_records_to_python() -> None:
    [cached] = chain_new_events([("s", 1, "T", 1, {"a": "x\\y"})], bytes(16), 1, 1, GENESIS_HASH)
    assert native.copy_rows([cached], b"b") == _python_rows([cached])
    assert b'{"a":"x\\\\\\\\y"}' in _python_rows([cached])  # the JSON escape, doubled for COPY
    plain = EventRecord(*[getattr(cached, f) for f in EventRecord.__slots__[:10]])
    assert plain.data_json is None and native.copy_rows([plain], b"b") is None
    [tabbed] = chain_new_events([("s\tt", 1, "T", 1, {})], bytes(16), 1, 1, GENESIS_HASH)
    assert native.copy_rows([tabbed], b"b") is None
    assert native.copy_rows([], b"b") == b""


def _python_rows(records: list[EventRecord]) -> bytes:
    from ledger.adapters.postgres import _copy_rows

    return _copy_rows(records, b"b")
