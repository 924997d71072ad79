"""Limits of money and of the fields around it, and the cheap checks that enforce them.

Amounts are integers in minor units (cents, satoshis): no floats, no Decimal. Every amount
and every balance fits in a PostgreSQL ``bigint``, so :data:`AMOUNT_MAX` is ``2**63 - 1``
and every balance change is checked against it before it is made (``overflows_*``).

A ``ledger`` is a currency or asset code (``USD``, ``EUR``, ``BTC_SAT``): 1 to 12 of
``A-Z``, ``0-9`` and ``_``. An account also carries the ``scale`` of its amounts (the
number of decimal places of one major unit, 0 to 18); a transfer moves value only between
accounts with the same ledger code and scale.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache
from typing import NamedTuple
from uuid import UUID

__all__ = [
    "AMOUNT_MAX",
    "CODE_MAX",
    "EXPIRE_BATCH_MAX",
    "LEDGER_LENGTH_MAX",
    "LEDGER_PATTERN",
    "METADATA_ENTRIES_MAX",
    "METADATA_KEY_LENGTH_MAX",
    "METADATA_VALUE_LENGTH_MAX",
    "NIL_ID",
    "SCALE_DEFAULT",
    "SCALE_MAX",
    "TIMESTAMP_MAX_US",
    "US_PER_S",
    "AccountBalances",
    "is_valid_ledger",
    "metadata_problem",
]

AMOUNT_MAX = 2**63 - 1
"""Largest amount and largest balance (PostgreSQL ``bigint``)."""

TIMESTAMP_MAX_US = 2**63 - 1
"""Largest timestamp or deadline in microseconds since the epoch (``bigint``)."""

US_PER_S = 1_000_000

CODE_MAX = 65_535
"""Largest account or transfer ``code`` (TigerBeetle's ``u16``); 0 is rejected."""

SCALE_MAX = 18
SCALE_DEFAULT = 2

LEDGER_LENGTH_MAX = 12
LEDGER_PATTERN = r"^[A-Z0-9_]{1,12}$"

METADATA_ENTRIES_MAX = 16
METADATA_KEY_LENGTH_MAX = 64
METADATA_VALUE_LENGTH_MAX = 256

EXPIRE_BATCH_MAX = 8_190
"""Most pending transfers one ExpirePendingTransfers command expires (one batch)."""

NIL_ID = UUID(int=0)
"""The nil UUID: never a valid id; on a post or void it means "take it from the pending"."""

_LEDGER_RE = re.compile(LEDGER_PATTERN)


class AccountBalances(NamedTuple):
    """The four balances of an account at one moment (an immutable value).

    Posted amounts are final; pending amounts are reserved by pending transfers and count
    against the balance limits until they are posted, voided or expire.
    """

    debits_pending: int
    debits_posted: int
    credits_pending: int
    credits_posted: int


@lru_cache(maxsize=4096)
def is_valid_ledger(ledger: str) -> bool:
    """Whether ``ledger`` is a well-formed, non-empty ledger code (cached: few codes exist)."""
    return _LEDGER_RE.fullmatch(ledger) is not None


def metadata_problem(metadata: Mapping[str, str]) -> str | None:
    """Where and why ``metadata`` breaks its bounds, as ``at $.metadata...: ...``; or None."""
    if len(metadata) > METADATA_ENTRIES_MAX:
        return f"at $.metadata: {len(metadata)} entries, at most {METADATA_ENTRIES_MAX} allowed"
    for key, value in metadata.items():
        if not isinstance(key, str) or not 1 <= len(key) <= METADATA_KEY_LENGTH_MAX:
            return (
                f"at $.metadata: key {key!r} must be a string of 1 to "
                f"{METADATA_KEY_LENGTH_MAX} characters"
            )
        if not isinstance(value, str) or len(value) > METADATA_VALUE_LENGTH_MAX:
            return (
                f"at $.metadata.{key}: must be a string of at most "
                f"{METADATA_VALUE_LENGTH_MAX} characters"
            )
    return None
