"""Sagas through the coordinator's HTTP API against a scripted participant."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from ledger.sagas.runtime import ManualClock
from tests.integration.sagas.conftest import (
    BROKEN,
    FAILURE,
    ONGOING,
    FakeParticipant,
    LiveCoordinator,
    start_coordinator,
)


def step(p: FakeParticipant, step_id: str, kind: str) -> dict[str, Any]:
    s: dict[str, Any] = {
        "step_id": step_id,
        "kind": kind,
        "action_url": p.url("action"),
        "payload": {"step": step_id},
    }
    if kind == "compensable":
        s["compensate_url"] = p.url("compensate")
    return s


def saga(p: FakeParticipant, *kinds: tuple[str, str], **extra: Any) -> dict[str, Any]:
    return {
        "gid": f"s-{uuid.uuid4().hex[:12]}",
        "steps": [step(p, i, k) for i, k in kinds],
        **extra,
    }


ORDER = (("a", "compensable"), ("b", "compensable"), ("p", "pivot"), ("r", "retriable"))


def run(live: LiveCoordinator, body: dict[str, Any]) -> dict[str, Any]:
    with live.client("write") as c:
        r = c.post("/v1/sagas", json=body, params={"wait": "true"})
    assert r.status_code == 201, r.text
    state: dict[str, Any] = r.json()
    return state


def test_steps_run_in_order_and_commit(live: LiveCoordinator, participant: FakeParticipant) -> None:
    body = saga(participant, *ORDER)
    assert run(live, body)["status"] == "committed"
    assert participant.ops(body["gid"]) == [
        ("a", "action"),
        ("b", "action"),
        ("p", "action"),
        ("r", "action"),
    ]


def test_a_failed_compensable_step_compensates_in_reverse_order(
    live: LiveCoordinator, participant: FakeParticipant
) -> None:
    participant.answer("b", "action", FAILURE)
    body = saga(participant, *ORDER)
    state = run(live, body)
    assert state["status"] == "compensated"
    assert "step b" in state["decision_reason"]
    assert participant.ops(body["gid"]) == [
        ("a", "action"),
        ("b", "action"),
        ("b", "compensate"),  # the failed step too: it may have done part of its work
        ("a", "compensate"),
    ]


def test_a_failed_pivot_compensates_every_compensable_step(
    live: LiveCoordinator, participant: FakeParticipant
) -> None:
    participant.answer("p", "action", BROKEN, ONGOING, FAILURE)
    body = saga(participant, *ORDER)
    state = run(live, body)
    assert state["status"] == "compensated"
    assert participant.ops(body["gid"])[-2:] == [("b", "compensate"), ("a", "compensate")]
    assert ("r", "action") not in participant.ops(body["gid"])


def test_retriable_steps_and_compensations_are_retried_until_they_succeed(
    live: LiveCoordinator, participant: FakeParticipant
) -> None:
    participant.answer("r", "action", BROKEN, FAILURE, BROKEN)
    body = saga(participant, *ORDER)
    state = run(live, body)
    assert state["status"] == "committed"
    assert state["steps"][3]["action"]["attempts"] == 4
    participant.answer("b", "action", FAILURE)
    participant.answer("a", "compensate", BROKEN, FAILURE)
    body = saga(participant, *ORDER)
    state = run(live, body)
    assert state["status"] == "compensated"
    assert state["steps"][0]["compensate"]["attempts"] == 3
    with live.client("read") as c:
        metrics = c.get("/metrics").text
    assert 'coordinator_alerts_total{op="action",reason="failure_answer"} 1.0' in metrics
    assert 'coordinator_alerts_total{op="compensate",reason="failure_answer"} 1.0' in metrics


def test_a_saga_timeout_compensates_a_step_that_never_answers(
    database_url: str, tmp_path: Path, participant: FakeParticipant
) -> None:
    participant.answer("b", "action", *([BROKEN] * 1000))
    clock = ManualClock()
    with start_coordinator(database_url, tmp_path / "wal", clock=clock) as live:
        body = saga(participant, *ORDER, timeout_s=30)
        with live.client("write") as c:
            assert c.post("/v1/sagas", json=body).status_code == 202
        state = live.wait_finished(body["gid"], clock=clock)
    assert state["status"] == "compensated"
    assert state["decision_reason"] == "timed out during step b"
    assert participant.ops(body["gid"])[-2:] == [("b", "compensate"), ("a", "compensate")]


def test_invalid_step_orders_are_refused_with_where_and_why(live: LiveCoordinator) -> None:
    url = "http://127.0.0.1:1/x"
    cases: list[tuple[list[tuple[str, str, str | None]], str]] = [
        ([("p", "pivot", None), ("a", "compensable", url)], "compensable after a pivot"),
        ([("p", "pivot", None), ("q", "pivot", None)], "pivot after a pivot"),
        ([("r", "retriable", None), ("p", "pivot", None)], "pivot after a retriable"),
        ([("a", "compensable", None)], "has no compensate_url"),
        ([("r", "retriable", url)], "only compensable steps have a compensate_url"),
        ([("a", "compensable", url), ("a", "compensable", url)], "used twice"),
    ]
    with live.client("write") as c:
        for steps, message in cases:
            body = {
                "steps": [
                    {"step_id": i, "kind": k, "action_url": url}
                    | ({"compensate_url": comp} if comp else {})
                    for i, k, comp in steps
                ]
            }
            r = c.post("/v1/sagas", json=body)
            assert r.status_code == 422, (steps, r.text)
            assert r.json()["code"] == "invalid_request"
            assert message in r.json()["detail"], r.json()["detail"]
