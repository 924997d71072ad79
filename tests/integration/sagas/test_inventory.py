"""The inventory example as a participant: TCC and saga through the coordinator, refusals,
an unreachable service, and deliveries forced out of order (gated handlers, moved clock).
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from ledger.devservices import free_port
from ledger.sagas.runtime import ManualClock
from tests.integration.sagas.conftest import (
    FakeParticipant,
    Inventory,
    LiveCoordinator,
    start_coordinator,
)

RESERVE = "/v1/tcc/reserve"


def gid() -> str:
    return f"order-{uuid.uuid4().hex[:12]}"


def reserve_branch(inv: Inventory, branch: str, sku: str, quantity: int) -> dict[str, Any]:
    return {
        "branch_id": branch,
        "try_url": inv.url(f"{RESERVE}/try"),
        "confirm_url": inv.url(f"{RESERVE}/confirm"),
        "cancel_url": inv.url(f"{RESERVE}/cancel"),
        "payload": {"sku": sku, "quantity": quantity},
    }


def envelope(g: str, branch: str, op: str, sku: str = "apple", quantity: int = 3) -> Any:
    return {"gid": g, "branch_id": branch, "op": op, "payload": {"sku": sku, "quantity": quantity}}


def test_tcc_reserves_two_items_and_confirms(live: LiveCoordinator, inventory: Inventory) -> None:
    inventory.set_stock("apple", 10)
    inventory.set_stock("pear", 5)
    body = {
        "gid": gid(),
        "branches": [
            reserve_branch(inventory, "apples", "apple", 4),
            reserve_branch(inventory, "pears", "pear", 5),
        ],
    }
    with live.client("write") as c:
        state = c.post("/v1/tcc", json=body, params={"wait": "true"}).json()
    assert state["status"] == "committed"
    assert inventory.stock("apple") == {"sku": "apple", "on_hand": 6, "reserved": 0, "available": 6}
    assert inventory.stock("pear")["on_hand"] == 0


def test_short_stock_cancels_the_whole_order(live: LiveCoordinator, inventory: Inventory) -> None:
    inventory.set_stock("apple", 10)
    inventory.set_stock("pear", 2)
    body = {
        "gid": gid(),
        "branches": [
            reserve_branch(inventory, "apples", "apple", 4),
            reserve_branch(inventory, "pears", "pear", 3),
        ],
    }
    with live.client("write") as c:
        state = c.post("/v1/tcc", json=body, params={"wait": "true"}).json()
    assert state["status"] == "cancelled"
    assert "insufficient_stock" in state["decision_reason"]
    assert inventory.stock("apple") == {
        "sku": "apple",
        "on_hand": 10,
        "reserved": 0,
        "available": 10,
    }
    assert inventory.stock("pear")["reserved"] == 0


def test_an_unreachable_participant_is_retried_then_cancelled_at_the_timeout(
    live: LiveCoordinator, inventory: Inventory
) -> None:
    inventory.set_stock("apple", 10)
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: connections are refused
    body = {
        "gid": gid(),
        "timeout_s": 0.5,
        "branches": [
            reserve_branch(inventory, "apples", "apple", 4),
            {
                "branch_id": "dead",
                "try_url": f"{dead}/try",
                "confirm_url": f"{dead}/confirm",
                "cancel_url": f"{dead}/cancel",
            },
        ],
    }
    with live.client("write") as c:
        c.post("/v1/tcc", json=body)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            state = c.get(f"/v1/tcc/{body['gid']}").json()
            if state["status"] == "cancelling":
                break
            time.sleep(0.02)
    assert state["status"] == "cancelling"  # the dead branch's cancel keeps being retried
    assert state["decision_reason"] == "timed out before every try succeeded"
    dead_branch = state["branches"][1]
    assert dead_branch["try"]["attempts"] >= 2
    assert dead_branch["try"]["status_code"] is None
    assert inventory.stock("apple")["reserved"] == 0
    with live.client("admin") as c:
        stopped = c.post(f"/v1/transactions/{body['gid']}/force-stop", json={"reason": "gone"})
    assert stopped.json()["status"] == "force_stopped"


def test_saga_takes_stock_and_gives_it_back_when_the_pivot_fails(
    live: LiveCoordinator, inventory: Inventory, participant: FakeParticipant
) -> None:
    inventory.set_stock("apple", 10)
    participant.answer("pay", "action", (409, {"result": "failure", "code": "card_declined"}))
    body = {
        "gid": gid(),
        "steps": [
            {
                "step_id": "stock",
                "kind": "compensable",
                "action_url": inventory.url("/v1/saga/reserve/action"),
                "compensate_url": inventory.url("/v1/saga/reserve/compensate"),
                "payload": {"sku": "apple", "quantity": 7},
            },
            {"step_id": "pay", "kind": "pivot", "action_url": participant.url("action")},
        ],
    }
    with live.client("write") as c:
        state = c.post("/v1/sagas", json=body, params={"wait": "true"}).json()
    assert state["status"] == "compensated"
    assert inventory.stock("apple")["on_hand"] == 10


def test_cancel_before_try_then_two_cancels_before_a_late_try(
    database_url: str, tmp_path: Path, inventory: Inventory
) -> None:
    """The try is held in the network; the clock passes the deadline, so the coordinator
    cancels; the first cancel's answer is lost, so it cancels again; then the try
    arrives. The late try must be refused and nothing stay reserved."""
    inventory.set_stock("apple", 10)
    held = inventory.gated.hold(f"{RESERVE}/try")
    inventory.gated.lose_answer(f"{RESERVE}/cancel", 1)
    clock = ManualClock()
    with start_coordinator(database_url, tmp_path / "wal", clock=clock) as live:
        g = gid()
        body = {"gid": g, "timeout_s": 10, "branches": [reserve_branch(inventory, "b", "apple", 3)]}
        with live.client("write") as c:
            assert c.post("/v1/tcc", json=body).status_code == 202
        inventory.gated.wait_arrived(f"{RESERVE}/try")
        clock.advance(11)
        state = live.wait_finished(g, clock=clock)
        assert state["status"] == "cancelled"
        assert state["branches"][0]["cancel"]["attempts"] == 2
        held.set()
        wait_answers(inventory, f"{RESERVE}/try", 1)
    assert (f"{RESERVE}/try", 409) in inventory.gated.answers
    assert inventory.stock("apple") == {
        "sku": "apple",
        "on_hand": 10,
        "reserved": 0,
        "available": 10,
    }
    with httpx.Client(timeout=10) as c:
        again = c.post(inventory.url(f"{RESERVE}/try"), json=envelope(g, "b", "try"))
    assert again.status_code == 409 and again.json()["code"] == "branch_cancelled"


def test_a_duplicate_confirm_takes_stock_once(live: LiveCoordinator, inventory: Inventory) -> None:
    inventory.set_stock("apple", 10)
    inventory.gated.lose_answer(f"{RESERVE}/confirm", 2)
    g = gid()
    body = {"gid": g, "branches": [reserve_branch(inventory, "b", "apple", 3)]}
    with live.client("write") as c:
        state = c.post("/v1/tcc", json=body, params={"wait": "true"}).json()
    assert state["status"] == "committed"
    assert state["branches"][0]["confirm"]["attempts"] == 3
    assert inventory.stock("apple") == {"sku": "apple", "on_hand": 7, "reserved": 0, "available": 7}


def test_confirm_after_cancel_is_refused_and_changes_nothing(inventory: Inventory) -> None:
    inventory.set_stock("apple", 10)
    g = gid()
    with httpx.Client(timeout=10) as c:
        assert c.post(inventory.url(f"{RESERVE}/try"), json=envelope(g, "b", "try")).json() == {
            "result": "success"
        }
        assert inventory.stock("apple")["reserved"] == 3
        assert c.post(
            inventory.url(f"{RESERVE}/cancel"), json=envelope(g, "b", "cancel")
        ).is_success
        late = c.post(inventory.url(f"{RESERVE}/confirm"), json=envelope(g, "b", "confirm"))
        assert late.status_code == 409 and late.json()["result"] == "failure"
        again = c.post(inventory.url(f"{RESERVE}/try"), json=envelope(g, "b", "try"))
        assert again.status_code == 409
    assert inventory.stock("apple") == {
        "sku": "apple",
        "on_hand": 10,
        "reserved": 0,
        "available": 10,
    }


def wait_answers(inventory: Inventory, path: str, count: int, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while sum(1 for p, _ in inventory.gated.answers if p == path) < count:
        assert time.monotonic() < deadline, f"{path} never answered"
        time.sleep(0.01)
