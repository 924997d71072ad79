"""The envelope's canonical bytes and hash chain."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.application.records import (
    GENESIS_HASH,
    ChainBroken,
    EventRecord,
    PendingRecord,
    canonical_bytes,
    chain_records,
    record_from_dict,
    verify_chain,
)

json_scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text()
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
streams = st.sampled_from(["account-1", "transfer-x", 'weird stream "quoted"', "ünï"])


@settings(max_examples=200, deadline=None)
@given(
    data=st.dictionaries(st.text(), json_values, max_size=6),
    stream=streams,
    type_=st.sampled_from(["TransferCreated", "Odd\\Type"]),
    version=st.integers(1, 2**40) | st.just(True),  # a bool: orjson writes true, not 1
    at=st.integers(0, 2**62),
    position=st.integers(1, 2**62),
)
def test_fast_canonical_bytes_equal_the_orjson_form(
    data: dict[str, object], stream: str, type_: str, version: int, at: int, position: int
) -> None:
    pending = PendingRecord(uuid.uuid4(), stream, version, type_, 1, at, data)
    [record] = chain_records([pending], position, GENESIS_HASH)
    expected = canonical_bytes(
        position, pending.event_id, stream, version, type_, 1, at, data, GENESIS_HASH
    )
    assert record.canonical() == expected
    plain = EventRecord(*[getattr(record, f) for f in EventRecord.__slots__[:10]])
    assert plain.canonical() == expected and plain == record
    assert list(verify_chain([plain], position, GENESIS_HASH)) == [plain]


@pytest.mark.parametrize("stream", ["account-1\n", "a\nb", "tab\t"])
def test_ids_with_a_newline_or_tab_are_escaped_as_orjson_does(stream: str) -> None:
    pending = PendingRecord(uuid.uuid4(), stream, 1, "T\n", 1, 5, {"n": 1})
    [record] = chain_records([pending], 1, GENESIS_HASH)
    assert record.canonical() == canonical_bytes(
        1, pending.event_id, stream, 1, "T\n", 1, 5, {"n": 1}, GENESIS_HASH
    )


def test_chain_detects_edits_gaps_and_reordering() -> None:
    pend = [PendingRecord(uuid.uuid4(), f"s-{i}", 1, "T", 1, i, {"n": i}) for i in range(4)]
    records = chain_records(pend, 1, GENESIS_HASH)
    assert list(verify_chain(records, 1, GENESIS_HASH)) == records
    edited = record_from_dict({**records[1].to_dict(), "data": {"n": 99}})
    with pytest.raises(ChainBroken, match="hash does not match"):
        list(verify_chain([records[0], edited, *records[2:]], 1, GENESIS_HASH))
    with pytest.raises(ChainBroken, match="follows"):
        list(verify_chain([records[0], records[2]], 1, GENESIS_HASH))
    with pytest.raises(ChainBroken):
        list(verify_chain([records[1], records[0]], 1, GENESIS_HASH))
