"""Worked example 2: an order that freezes funds in the ledger and reserves stock in the
inventory service, then confirms both — or undoes both when stock is short or the
inventory service fails.

Two ways to run it through the coordinator:

* **TCC** (:func:`order_tcc`): branch ``funds`` holds ``customer → merchant`` in the ledger
  (a pending transfer), branch ``stock`` holds the items in the inventory; confirm posts
  the transfer and takes the stock, cancel voids and releases.
* **Saga** (:func:`order_saga`): ``funds`` (compensable: the hold, compensated by voiding
  it), ``stock`` (compensable: take the items, compensated by giving them back), then the
  pivot ``capture``, which posts the held funds: once it succeeds, the order is done.

The ledger speaks the URL-template convention, the inventory the envelope convention
(see ``ledger.sagas.protocol``); one transaction mixes both.
"""

from __future__ import annotations

from typing import Any

__all__ = ["order_saga", "order_tcc"]


def _funds(
    ledger_url: str, token: str, customer: str, merchant: str, amount_minor: int, hold_s: int
) -> tuple[str, dict[str, Any], dict[str, str]]:
    base = f"{ledger_url}/v1/tcc/{{gid}}/{{branch_id}}"
    payload = {
        "debit_account_id": customer,
        "credit_account_id": merchant,
        "amount_minor": amount_minor,
        "ledger": "USD",
        "code": 1,
        "timeout_s": hold_s,
    }
    return base, payload, {"Authorization": f"Bearer {token}"}


def order_tcc(
    gid: str,
    *,
    ledger_url: str,
    ledger_token: str,
    customer: str,
    merchant: str,
    amount_minor: int,
    inventory_url: str,
    sku: str,
    quantity: int,
    timeout_s: float = 30,
    hold_timeout_s: int = 300,
) -> dict[str, Any]:
    """The ``POST /v1/tcc`` body of an order."""
    base, payload, headers = _funds(
        ledger_url, ledger_token, customer, merchant, amount_minor, hold_timeout_s
    )
    stock = f"{inventory_url}/v1/tcc/reserve"
    return {
        "gid": gid,
        "timeout_s": timeout_s,
        "branches": [
            {
                "branch_id": "funds",
                "try_url": f"{base}/try",
                "confirm_url": f"{base}/confirm",
                "cancel_url": f"{base}/cancel",
                "payload": payload,
                "headers": headers,
            },
            {
                "branch_id": "stock",
                "try_url": f"{stock}/try",
                "confirm_url": f"{stock}/confirm",
                "cancel_url": f"{stock}/cancel",
                "payload": {"sku": sku, "quantity": quantity},
            },
        ],
    }


def order_saga(
    gid: str,
    *,
    ledger_url: str,
    ledger_token: str,
    customer: str,
    merchant: str,
    amount_minor: int,
    inventory_url: str,
    sku: str,
    quantity: int,
    hold_timeout_s: int = 300,
) -> dict[str, Any]:
    """The ``POST /v1/sagas`` body of an order."""
    base, payload, headers = _funds(
        ledger_url, ledger_token, customer, merchant, amount_minor, hold_timeout_s
    )
    stock = f"{inventory_url}/v1/saga/reserve"
    return {
        "gid": gid,
        "steps": [
            {
                "step_id": "funds",
                "kind": "compensable",
                "action_url": f"{base}/try",
                "compensate_url": f"{base}/cancel",
                "payload": payload,
                "headers": headers,
            },
            {
                "step_id": "stock",
                "kind": "compensable",
                "action_url": f"{stock}/action",
                "compensate_url": f"{stock}/compensate",
                "payload": {"sku": sku, "quantity": quantity},
            },
            {
                "step_id": "capture",
                "kind": "pivot",
                "action_url": f"{ledger_url}/v1/tcc/{{gid}}/funds/confirm",
                "headers": headers,
            },
        ],
    }
