"""The native pass's own form of a transfer's metadata (``_replay.metadata_bytes``) is
byte for byte ``audit._metadata_bytes``, or leaves the value to it."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger import _replay
from ledger.audit import _metadata_bytes

values = st.one_of(
    st.text(),
    st.integers(-(2**63), 2**63 - 1),
    st.booleans(),
    st.none(),
    st.lists(st.integers(0, 99), max_size=3),
    st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2),
)


@given(st.dictionaries(st.text(), values, max_size=12))
def test_any_metadata_orjson_writes_gives_the_reference_bytes_or_is_left_to_it(
    metadata: dict[str, object],
) -> None:
    raw = orjson.dumps(metadata)
    native = _replay.metadata_bytes(raw)
    if native is not None:
        assert native == _metadata_bytes(raw)


@pytest.mark.parametrize(
    ("raw", "native"),
    [
        (b'{"b":"1","aa":"2","ccc":""}', True),
        ('{"é":"1","e":"2","f":"3"}'.encode(), True),  # é sorts after f by its bytes
        (b'{"n":1,"l":[1,{"x":"}"}],"o":{"a":"b"},"t":true,"z":null}', True),
        (b' { "spaced" : "out" } ', True),
        (b"{}", True),
        (b'{"a":"1","a":"2"}', False),  # a key twice: the reference keeps the last
        (b'{"q":"say \\"hi\\""}', False),  # escapes: the reference unescapes
        (b'["not", "an", "object"]', False),
        (b'{"a":"1"} trailing', False),
        (b'{"a":', False),
        (b"{" + b",".join(b'"k%d":"v"' % i for i in range(40)) + b"}", False),  # many pairs
    ],
)
def test_the_native_form_or_the_reference(raw: bytes, native: bool) -> None:
    got = _replay.metadata_bytes(raw)
    assert (got is not None) == native
    if got is not None:
        assert got == _metadata_bytes(raw)
