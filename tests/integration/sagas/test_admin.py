"""Operator endpoints: list unfinished, retry now, force-stop; alerts after many attempts;
restarting the coordinator resumes what was unfinished. The clock is manual, so a back-off
wait ends only when the test moves the clock or asks for a retry."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

from ledger.sagas.runtime import ManualClock
from tests.integration.sagas.conftest import (
    BROKEN,
    FakeParticipant,
    LiveCoordinator,
    start_coordinator,
)


def tcc(p: FakeParticipant) -> dict[str, Any]:
    return {
        "gid": f"a-{uuid.uuid4().hex[:12]}",
        "branches": [
            {
                "branch_id": b,
                "try_url": p.url("try"),
                "confirm_url": p.url("confirm"),
                "cancel_url": p.url("cancel"),
            }
            for b in ("b1", "b2")
        ],
    }


def wait_status(live: LiveCoordinator, gid: str, status: str, attempts: int = 1) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    with live.client("read") as c:
        while True:
            state: dict[str, Any] = c.get(f"/v1/transactions/{gid}").json()
            confirm = state["branches"][0].get("confirm", {})
            if (
                state["status"] == status
                and confirm.get("attempts", 0) >= attempts
                and not confirm.get("in_flight")
            ):
                return state
            assert time.monotonic() < deadline, state
            time.sleep(0.01)


def test_retry_now_ends_the_back_off_wait(
    database_url: str, tmp_path: Path, participant: FakeParticipant
) -> None:
    participant.answer("b1", "confirm", BROKEN, BROKEN, BROKEN)
    clock = ManualClock()
    with start_coordinator(database_url, tmp_path / "wal", clock=clock) as live:
        body = tcc(participant)
        with live.client("write") as c:
            c.post("/v1/tcc", json=body)
        gid = body["gid"]
        wait_status(live, gid, "confirming", attempts=1)
        with live.client("read") as c:
            listed = c.get("/v1/transactions", params={"status": "unfinished"}).json()
            assert [t["gid"] for t in listed["transactions"]] == [gid]
            assert c.get("/v1/transactions", params={"status": "confirming"}).json()["count"] == 1
            assert c.get("/v1/transactions", params={"status": "committed"}).status_code == 422
            assert c.post(f"/v1/transactions/{gid}/retry").status_code == 403
        with live.client("admin") as c:
            for attempt in (2, 3, 4):
                assert c.post(f"/v1/transactions/{gid}/retry").status_code == 202
                if attempt < 4:
                    wait_status(live, gid, "confirming", attempts=attempt)
        state = live.wait_finished(gid)
        assert state["status"] == "committed"
        assert state["branches"][0]["confirm"]["attempts"] == 4
        assert [e["type"] for e in state["history"]].count("RetryRequested") == 3
        with live.client("admin") as c:
            assert c.post(f"/v1/transactions/{gid}/retry").json()["code"] == "transaction_finished"
            assert c.post("/v1/transactions/nope/retry").status_code == 404
            metrics = c.get("/metrics").text
        assert 'coordinator_alerts_total{op="confirm",reason="attempts"} 1.0' in metrics
        assert (
            'coordinator_transactions_finished_total{kind="tcc",outcome="committed"} 1.0' in metrics
        )


def test_force_stop_hands_the_transaction_to_the_operator(
    database_url: str, tmp_path: Path, participant: FakeParticipant
) -> None:
    participant.answer("b1", "confirm", *([BROKEN] * 100))
    clock = ManualClock()
    with start_coordinator(database_url, tmp_path / "wal", clock=clock) as live:
        body = tcc(participant)
        gid = body["gid"]
        with live.client("write") as c:
            c.post("/v1/tcc", json=body)
        wait_status(live, gid, "confirming", attempts=1)
        with live.client("admin") as c:
            r = c.post(f"/v1/transactions/{gid}/force-stop", json={"reason": "fixing b1 by hand"})
            assert r.status_code == 200 and r.json()["status"] == "force_stopped"
            assert "fixing b1 by hand" in r.json()["finish_reason"]
            assert c.post(f"/v1/transactions/{gid}/force-stop").status_code == 409
            with live.client("read") as r_c:
                assert r_c.get("/v1/transactions").json()["count"] == 0
                metrics = r_c.get("/metrics").text
        calls = len(participant.ops(gid))
        clock.advance(3600)
        time.sleep(0.2)
        assert len(participant.ops(gid)) == calls  # nothing more is sent
        assert 'coordinator_transactions{kind="tcc",status="confirming"} 0.0' in metrics


def test_a_restart_resumes_an_unfinished_transaction(
    database_url: str, tmp_path: Path, participant: FakeParticipant
) -> None:
    participant.answer("b2", "confirm", *([BROKEN] * 100))
    clock = ManualClock()
    wal = tmp_path / "wal"
    with start_coordinator(database_url, wal, clock=clock) as live:
        body = tcc(participant)
        gid = body["gid"]
        with live.client("write") as c:
            c.post("/v1/tcc", json=body)
        deadline = time.monotonic() + 10
        while ("b2", "confirm") not in participant.ops(gid):
            assert time.monotonic() < deadline
            time.sleep(0.01)
    participant.script.clear()
    with start_coordinator(database_url, wal, clock=clock) as live:
        state = live.wait_finished(gid, clock=clock)
        assert state["status"] == "committed"
        assert live.coordinator.recovery is not None
    assert participant.ops(gid).count(("b1", "confirm")) == 1
    assert participant.ops(gid).count(("b2", "confirm")) >= 2
