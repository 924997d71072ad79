"""Worked example 1: move money between two books on two ledger nodes, atomically by TCC.

Each ledger node owns one book, and a transfer never spans two books, so the money goes
through a settlement account on each side::

    book A (node A):  alice        → settlement_A   pending, then posted
    book B (node B):  settlement_B → bob            pending, then posted

Both branches are holds (pending transfers) placed by ``try``; the coordinator confirms
both (posts them) or cancels both (voids them). After every transaction, whatever
happened: ``settlement_A``'s net credit equals ``settlement_B``'s net debit (what left
book A's customers arrived at book B's), nothing stays pending past its timeout, and no
limited account goes below zero.

The branches use the ledger's URL templates (``/v1/tcc/{gid}/{branch_id}/try`` ...), so
the try body is the hold itself and confirm and cancel carry no body; or, batched, each
node's ``/v1/tcc/batch``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Side", "cross_book_transfer"]


@dataclass(frozen=True)
class Side:
    """One ledger node as a participant: its URL, a write-scope key, and the accounts."""

    base_url: str
    token: str
    debit_account_id: str
    credit_account_id: str


def _branch(
    branch_id: str, side: Side, amount_minor: int, hold_timeout_s: int, batched: bool
) -> dict[str, Any]:
    base = f"{side.base_url}/v1/tcc/{{gid}}/{{branch_id}}"
    return {
        "branch_id": branch_id,
        "try_url": f"{base}/try",
        "confirm_url": f"{base}/confirm",
        "cancel_url": f"{base}/cancel",
        **({"batch_url": f"{side.base_url}/v1/tcc/batch"} if batched else {}),
        "payload": {
            "debit_account_id": side.debit_account_id,
            "credit_account_id": side.credit_account_id,
            "amount_minor": amount_minor,
            "ledger": "USD",
            "code": 1,
            "timeout_s": hold_timeout_s,
        },
        "headers": {"Authorization": f"Bearer {side.token}"},
    }


def cross_book_transfer(
    gid: str,
    source: Side,
    target: Side,
    amount_minor: int,
    *,
    timeout_s: float = 30,
    hold_timeout_s: int = 300,
    batched: bool = False,
) -> dict[str, Any]:
    """The ``POST /v1/tcc`` body: debit ``source`` (customer → settlement) and credit
    ``target`` (settlement → customer). ``hold_timeout_s`` (the ledger's own expiry of
    the holds) is longer than ``timeout_s`` (the coordinator's), so a hold never expires
    under a transaction that has decided to confirm it while the coordinator is up.
    ``batched``: the coordinator sends the calls to each node's ``/v1/tcc/batch``,
    together with other transactions' calls to that node."""
    return {
        "gid": gid,
        "timeout_s": timeout_s,
        "branches": [
            _branch("debit", source, amount_minor, hold_timeout_s, batched),
            _branch("credit", target, amount_minor, hold_timeout_s, batched),
        ],
    }
