"""SIGKILL the coordinator process at every phase and step boundary; restart it; check that
every transaction reaches a final state and that the participants agree with it.

Two ways to stop it at an exact point: *gates* hold a participant's handler, so the
coordinator is known to be mid-call when the test kills it; *crash points*
(``LEDGER_COORDINATOR_CRASH_POINT``, test only) make the coordinator SIGKILL itself right
after a given event is durable in the WAL (``/wal``: before PostgreSQL) or in both.

The participant is the inventory example (its own database); the invariants checked after
recovery: the transaction is final with the expected outcome, every item's stock was taken
exactly once when committed and not at all otherwise, and nothing is left reserved.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.sagas.conftest import (
    FAILURE,
    FakeParticipant,
    Inventory,
    create_keys,
)
from tests.integration.sagas.processes import CoordinatorProcess

RESERVE = "/v1/tcc/reserve"


@pytest.fixture
def coordinator(database_url: str, tmp_path: Path) -> Iterator[CoordinatorProcess]:
    (tmp_path / "wal").mkdir()
    proc = CoordinatorProcess(database_url, tmp_path / "wal", create_keys(database_url)["admin"])
    try:
        yield proc
    finally:
        proc.stop()


def order(inv: Inventory, pears: int, timeout_s: float = 30) -> dict[str, Any]:
    def branch(name: str, sku: str, quantity: int) -> dict[str, Any]:
        return {
            "branch_id": name,
            "try_url": inv.url(f"{RESERVE}/try"),
            "confirm_url": inv.url(f"{RESERVE}/confirm"),
            "cancel_url": inv.url(f"{RESERVE}/cancel"),
            "payload": {"sku": sku, "quantity": quantity},
        }

    return {
        "gid": f"k-{uuid.uuid4().hex[:12]}",
        "timeout_s": timeout_s,
        "branches": [branch("apples", "apple", 4), branch("pears", "pear", pears)],
    }


def stocked(inv: Inventory) -> None:
    inv.set_stock("apple", 10)
    inv.set_stock("pear", 5)


def assert_stock(inv: Inventory, committed: bool, pears: int = 5) -> None:
    apple, pear = inv.stock("apple"), inv.stock("pear")
    assert apple["reserved"] == 0 and pear["reserved"] == 0, (apple, pear)
    if committed:
        assert (apple["on_hand"], pear["on_hand"]) == (6, 5 - pears)
    else:
        assert (apple["on_hand"], pear["on_hand"]) == (10, 5)


# -- the four phases, with gates ----------------------------------------------------------------


def test_killed_during_try_and_down_past_the_timeout_cancels_at_restart(
    coordinator: CoordinatorProcess, inventory: Inventory
) -> None:
    stocked(inventory)
    gate = inventory.gated.hold(f"{RESERVE}/try")
    coordinator.start()
    body = order(inventory, 2, timeout_s=1)
    assert coordinator.post("/v1/tcc", body) is not None
    inventory.gated.wait_arrived(f"{RESERVE}/try")
    coordinator.kill()
    time.sleep(1.2)  # the coordinator is down when the deadline passes
    coordinator.start()
    t0 = time.monotonic()
    state = coordinator.wait_finished(body["gid"])
    assert time.monotonic() - t0 < 2
    assert state["status"] == "cancelled"
    gate.set()  # the tries held since before the crash arrive now: refused
    deadline = time.monotonic() + 10
    while sum(1 for p, _ in inventory.gated.answers if p.endswith("/try")) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert_stock(inventory, committed=False)


def test_killed_between_try_and_confirm_commits_at_restart(
    coordinator: CoordinatorProcess, inventory: Inventory
) -> None:
    stocked(inventory)
    coordinator.start("TransactionDecided")
    body = order(inventory, 2)
    coordinator.post("/v1/tcc", body)
    coordinator.wait_dead()
    assert inventory.stock("apple")["reserved"] == 4  # tried, not confirmed
    coordinator.start()
    assert coordinator.wait_finished(body["gid"])["status"] == "committed"
    assert_stock(inventory, committed=True, pears=2)


@pytest.mark.parametrize("op", ["confirm", "cancel"])
def test_killed_during_confirm_or_cancel_finishes_at_restart(
    coordinator: CoordinatorProcess, inventory: Inventory, op: str
) -> None:
    stocked(inventory)
    gate = inventory.gated.hold(f"{RESERVE}/{op}")
    coordinator.start()
    body = order(inventory, 2 if op == "confirm" else 6)
    coordinator.post("/v1/tcc", body)
    inventory.gated.wait_arrived(f"{RESERVE}/{op}")
    coordinator.kill()
    coordinator.start()
    time.sleep(0.1)
    gate.set()
    state = coordinator.wait_finished(body["gid"])
    assert state["status"] == ("committed" if op == "confirm" else "cancelled")
    assert_stock(inventory, committed=op == "confirm", pears=2)


# -- the crash-point matrix ---------------------------------------------------------------------

TCC_POINTS = [
    "TransactionStarted/wal",
    "TransactionStarted",
    "CallFinished:try",
    "CallStarted:try@3",
    "TransactionDecided/wal",
    "TransactionDecided",
    "CallFinished:confirm",
    "CallFinished:cancel",
    "CallStarted:confirm@3",
    "CallStarted:cancel@3",
    "TransactionFinished/wal",
    "TransactionFinished",
]
SAGA_POINTS = [
    "TransactionStarted",
    "CallFinished:action",
    "CallStarted:action@2",
    "CallStarted:action@3/wal",
    "TransactionDecided",
    "CallStarted:compensate/wal",
    "CallFinished:compensate",
    "TransactionFinished/wal",
]
RACY = {"CallStarted:try@3"}  # the retry may be made moot by the other branch's refusal


def applies(point: str, outcome: str) -> bool:
    return not (outcome == "committed" and ":cancel" in point) and not (
        outcome == "cancelled" and ":confirm" in point
    )


def case(kind: str, outcome: str, point: str) -> Any:
    return pytest.param(kind, outcome, point, id=f"{kind}-{outcome}-{point}")


CASES = [
    case("tcc", outcome, point)
    for outcome in ("committed", "cancelled")
    for point in TCC_POINTS
    if applies(point, outcome)
] + [
    case("saga", outcome, point)
    for outcome in ("committed", "compensated")
    for point in SAGA_POINTS
    if not (outcome == "committed" and ("compensate" in point or "Decided" in point))
]


@pytest.mark.parametrize(("kind", "outcome", "point"), CASES)
def test_crash_point_matrix(
    coordinator: CoordinatorProcess,
    inventory: Inventory,
    participant: FakeParticipant,
    kind: str,
    outcome: str,
    point: str,
) -> None:
    """Crash right after ``point`` is durable, restart, and check the invariants. Every
    first answer is lost once (a 500 after the work was done), so retries and their
    boundaries are part of the run."""
    stocked(inventory)
    for op in ("try", "confirm", "cancel"):
        inventory.gated.lose_answer(f"{RESERVE}/{op}")
    inventory.gated.lose_answer("/v1/saga/reserve/action")
    inventory.gated.lose_answer("/v1/saga/reserve/compensate")
    coordinator.start(point)
    if kind == "tcc":
        body = order(inventory, 2 if outcome == "committed" else 6)
        coordinator.post("/v1/tcc", body)
    else:
        if outcome == "compensated":
            participant.answer("pay", "action", FAILURE)
        body = saga_order(inventory, participant)
        coordinator.post("/v1/sagas", body)
    crashed = crashed_or_finished(coordinator, body["gid"])
    assert crashed or point in RACY, f"crash point {point} was never reached"
    coordinator.start()
    state = coordinator.wait_finished(body["gid"])
    assert state["status"] == outcome
    if kind == "tcc":
        assert_stock(inventory, committed=outcome == "committed", pears=2)
    else:
        apple = inventory.stock("apple")
        assert apple["reserved"] == 0
        assert apple["on_hand"] == (7 if outcome == "committed" else 10)
        ships = participant.ops(body["gid"]).count(("ship", "action"))
        assert ships >= (1 if outcome == "committed" else 0)


def saga_order(inv: Inventory, p: FakeParticipant) -> dict[str, Any]:
    return {
        "gid": f"k-{uuid.uuid4().hex[:12]}",
        "steps": [
            {
                "step_id": "stock",
                "kind": "compensable",
                "action_url": inv.url("/v1/saga/reserve/action"),
                "compensate_url": inv.url("/v1/saga/reserve/compensate"),
                "payload": {"sku": "apple", "quantity": 3},
            },
            {"step_id": "pay", "kind": "pivot", "action_url": p.url("action")},
            {"step_id": "ship", "kind": "retriable", "action_url": p.url("action")},
        ],
    }


def crashed_or_finished(coordinator: CoordinatorProcess, gid: str, timeout_s: float = 30) -> bool:
    """Wait until the coordinator killed itself at its crash point, or (a point that this
    interleaving did not reach, e.g. a retry made moot by a decision) the transaction
    finished; then make sure the process is gone. True if it crashed by itself."""
    assert coordinator.proc is not None
    deadline = time.monotonic() + timeout_s
    while coordinator.proc.poll() is None:
        assert time.monotonic() < deadline, coordinator.log()[-3000:]
        try:
            if coordinator.get(gid).get("finished"):
                break
        except Exception:
            pass
        time.sleep(0.02)
    # A point right after the last event kills it just after that event became readable.
    with contextlib.suppress(subprocess.TimeoutExpired):
        coordinator.proc.wait(2)
    crashed = coordinator.proc.poll() is not None
    coordinator.kill()
    return crashed
