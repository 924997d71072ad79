"""TCC transactions through the coordinator's HTTP API against scripted participants."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from ledger.api.auth import ApiKey
from tests.integration.sagas.conftest import (
    BROKEN,
    FAILURE,
    ONGOING,
    FakeParticipant,
    LiveCoordinator,
    create_keys,
)


def tcc_body(p: FakeParticipant, branches: int = 2, **extra: Any) -> dict[str, Any]:
    return {
        "gid": f"g-{uuid.uuid4().hex[:12]}",
        "branches": [
            {
                "branch_id": f"b{i}",
                "try_url": p.url("try"),
                "confirm_url": p.url("confirm"),
                "cancel_url": p.url("cancel"),
                "payload": {"n": i},
                "headers": {"Authorization": "Bearer secret-token"},
            }
            for i in range(1, branches + 1)
        ],
        **extra,
    }


def test_every_try_succeeding_confirms_every_branch(
    live: LiveCoordinator, participant: FakeParticipant
) -> None:
    body = tcc_body(participant)
    with live.client("write") as c:
        r = c.post("/v1/tcc", json=body, params={"wait": "true"})
    assert r.status_code == 201, r.text
    state = r.json()
    assert state["status"] == "committed"
    gid = body["gid"]
    assert sorted(participant.ops(gid)) == [
        ("b1", "confirm"),
        ("b1", "try"),
        ("b2", "confirm"),
        ("b2", "try"),
    ]
    envelope = next(r.body for r in participant.received if r.op == "try" and r.branch_id == "b1")
    assert envelope == {"gid": gid, "branch_id": "b1", "op": "try", "payload": {"n": 1}}
    with live.client("read") as c:
        full = c.get(f"/v1/tcc/{gid}").json()
    types = [e["type"] for e in full["history"]]
    assert types[0] == "TransactionStarted" and types[-1] == "TransactionFinished"
    assert types.count("TransactionDecided") == 1
    assert full["spec"]["branches"][0]["headers"] == {"Authorization": "***"}


def test_a_failed_try_cancels_every_branch(
    live: LiveCoordinator, participant: FakeParticipant
) -> None:
    participant.answer("b2", "try", FAILURE)
    body = tcc_body(participant)
    with live.client("write") as c:
        state = c.post("/v1/tcc", json=body, params={"wait": "true"}).json()
    assert state["status"] == "cancelled"
    assert "b2 failed" in state["decision_reason"]
    ops = participant.ops(body["gid"])
    assert ("b1", "cancel") in ops and ("b2", "cancel") in ops
    assert not any(op == "confirm" for _, op in ops)


def test_transient_and_ongoing_tries_are_retried_until_success(
    live: LiveCoordinator, participant: FakeParticipant
) -> None:
    participant.answer("b1", "try", BROKEN, ONGOING, (404, {"detail": "no"}), (200, b"nope"))
    participant.answer("b1", "confirm", BROKEN, BROKEN)
    body = tcc_body(participant)
    with live.client("write") as c:
        state = c.post("/v1/tcc", json=body, params={"wait": "true"}).json()
    assert state["status"] == "committed"
    b1 = state["branches"][0]
    assert b1["try"]["attempts"] == 5
    assert b1["confirm"]["attempts"] == 3


def test_a_failure_answer_to_cancel_is_alerted_and_retried(
    live: LiveCoordinator, participant: FakeParticipant
) -> None:
    participant.answer("b1", "try", FAILURE)
    participant.answer("b2", "cancel", FAILURE, FAILURE)
    body = tcc_body(participant)
    with live.client("write") as c:
        state = c.post("/v1/tcc", json=body, params={"wait": "true"}).json()
        metrics = c.get("/metrics").text
    assert state["status"] == "cancelled"
    assert state["branches"][1]["cancel"]["attempts"] == 3
    assert 'coordinator_alerts_total{op="cancel",reason="failure_answer"} 2.0' in metrics
    assert 'coordinator_calls_total{op="cancel",result="failure"} 2.0' in metrics


def test_repeating_a_start_with_the_same_gid_is_safe_and_another_spec_conflicts(
    live: LiveCoordinator, participant: FakeParticipant
) -> None:
    body = tcc_body(participant)
    with live.client("write") as c:
        assert c.post("/v1/tcc", json=body, params={"wait": "true"}).status_code == 201
        again = c.post("/v1/tcc", json=body)
        assert again.status_code == 200 and again.json()["status"] == "committed"
        other = c.post("/v1/tcc", json={**body, "timeout_s": 5})
        assert other.status_code == 409 and other.json()["code"] == "gid_already_used"
    assert len([op for _, op in participant.ops(body["gid"]) if op == "try"]) == 2


def test_bad_requests_are_problems_with_codes(live: LiveCoordinator) -> None:
    with live.client("write") as c:
        r = c.post("/v1/tcc", json={"branches": []})
        assert r.status_code == 422
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.json()["code"] == "invalid_request"
        assert c.get("/v1/tcc/nope").status_code == 404
        assert c.post("/v1/transactions/nope/retry").status_code == 403
    with live.client("read") as c:
        assert c.post("/v1/tcc", json={"branches": []}).status_code == 403
    with httpx_client(live) as c:
        assert c.post("/v1/tcc", json={}).status_code == 401


def httpx_client(live: LiveCoordinator) -> Any:
    return httpx.Client(base_url=live.base_url, timeout=10)


def test_a_body_over_the_limit_is_refused(live: LiveCoordinator) -> None:
    with live.client("write") as c:
        r = c.post("/v1/tcc", content=b"{" + b" " * (2 << 20) + b"}")
    assert r.status_code == 413 and r.json()["code"] == "request_too_large"


def test_a_key_not_yet_verified_is_looked_up_once_for_concurrent_starts(
    live: LiveCoordinator, participant: FakeParticipant, database_url: str
) -> None:
    """Starts carrying a key that is not in the verification cache (new, or its entry
    expired) share one look-up and are then answered on the fast path."""
    token = create_keys(database_url)["write"]
    keys = live.ctx.keys
    calls: list[str] = []
    verify = keys.verify

    def slow_verify(token: str) -> ApiKey | None:  # the signature of KeyStore.verify
        calls.append(token)
        time.sleep(0.3)  # long enough for every request below to arrive meanwhile
        return verify(token)

    keys.verify = slow_verify  # type: ignore[method-assign]  # patched on purpose, undone below
    try:

        def start() -> int:
            with httpx.Client(
                base_url=live.base_url, headers={"Authorization": f"Bearer {token}"}
            ) as c:
                return c.post("/v1/tcc", json=tcc_body(participant), timeout=30).status_code

        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(lambda _: start(), range(8)))
    finally:
        del keys.verify
    assert statuses == [202] * 8
    assert calls == [token]
