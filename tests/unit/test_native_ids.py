"""The native code reads an id's 16 bytes from its canonical text (8-4-4-4-12 hex digits,
either case) and leaves any other text to the reference. Seen through the transfers'
state digest: the native digest is the reference's whenever it gives one, and it gives one
for every id in the canonical form."""

from __future__ import annotations

import hashlib
import string
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import audit

native = pytest.importorskip("ledger._replay")

# Hex digits of both cases, and the bytes just outside each of their ranges.
_NEAR_HEX = string.hexdigits + "/:@G`g_ +\x7f~é"
_CANONICAL = "123e4567-e89b-12d3-a456-426614174000"


def _reference(transfers: dict[str, tuple[object, ...]]) -> bytes | None:
    sha = hashlib.sha256()
    try:
        for transfer in transfers.values():
            sha.update(audit._transfer_state_bytes(transfer))
    except (AttributeError, TypeError, ValueError, OverflowError, struct.error):
        return None
    return sha.digest()


def _dashed(chars: str) -> str:
    return f"{chars[:8]}-{chars[8:12]}-{chars[12:16]}-{chars[16:20]}-{chars[20:]}"


@settings(max_examples=400, deadline=None)
@given(
    st.text(alphabet=_NEAR_HEX, min_size=32, max_size=32),
    st.text(alphabet=string.hexdigits, min_size=32, max_size=32),
)
def test_an_id_is_read_as_the_reference_reads_it_or_left_to_it(near: str, hexes: str) -> None:
    for debit in (_dashed(near), _dashed(hexes)):
        transfers: dict[str, tuple[object, ...]] = {
            "t": ("none", 5, 0, debit, _CANONICAL, "single", "EUR")
        }
        mine = native.transfer_states(transfers)
        assert mine is None or mine == _reference(transfers)
        if all(c in string.hexdigits for c in debit.replace("-", "")):
            assert mine is not None and mine == _reference(transfers)


def test_every_hex_digit_in_every_place_reads_as_the_reference_reads_it() -> None:
    for place in range(32):
        for digit in string.hexdigits:
            chars = list("0" * 32)
            chars[place] = digit
            debit = _dashed("".join(chars))
            transfers: dict[str, tuple[object, ...]] = {
                "t": ("none", 5, 0, debit, _CANONICAL, "single", "EUR")
            }
            assert native.transfer_states(transfers) == _reference(transfers)


@pytest.mark.parametrize("bad", ["/", ":", "@", "G", "`", "g", " ", "\x7f"])
def test_a_byte_beside_the_hex_digits_leaves_the_id_to_the_reference(bad: str) -> None:
    for place in (0, 15, 16, 31):
        chars = list("a" * 32)
        chars[place] = bad
        transfers: dict[str, tuple[object, ...]] = {
            "t": ("none", 5, 0, _dashed("".join(chars)), _CANONICAL, "single", "EUR")
        }
        assert native.transfer_states(transfers) is None
