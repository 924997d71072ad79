"""The coordinator's journal on real PostgreSQL and a real WAL: streams are gap-free and
hash-chained, recovery starts from the snapshot of open streams, timeouts are recorded."""

from __future__ import annotations

import dataclasses
import time
import uuid
from pathlib import Path
from typing import Any

from ledger.adapters.postgres import PostgresEventStore
from ledger.adapters.wal import verify_wal
from ledger.sagas.journal import EVENT_GROUP, OPEN_STREAMS_SNAPSHOT, events_from_record
from ledger.sagas.runtime import ManualClock
from tests.integration.sagas.conftest import (
    BROKEN,
    FAST,
    FakeParticipant,
    LiveCoordinator,
    start_coordinator,
)


def tcc(p: FakeParticipant, branches: tuple[str, ...] = ("b1", "b2")) -> dict[str, Any]:
    return {
        "gid": f"j-{uuid.uuid4().hex[:12]}",
        "branches": [
            {
                "branch_id": b,
                "try_url": p.url("try"),
                "confirm_url": p.url("confirm"),
                "cancel_url": p.url("cancel"),
            }
            for b in branches
        ],
    }


def test_streams_are_gap_free_and_the_wal_verifies(
    live: LiveCoordinator, participant: FakeParticipant, database_url: str, tmp_path: Path
) -> None:
    participant.answer("b1", "try", BROKEN)
    gids = []
    with live.client("write") as c:
        for _ in range(5):
            body = tcc(participant)
            gids.append(body["gid"])
            assert c.post("/v1/tcc", json=body, params={"wait": "true"}).status_code == 201
    # ?wait=true answers once the outcome is applied; the closing record follows in the
    # journal's next group commit.
    store = PostgresEventStore(database_url, "coordinator")
    deadline = time.monotonic() + 10
    try:
        while True:
            streams = store.read_streams([f"tcc-{g}" for g in gids])
            closed = [
                records and events_from_record(records[-1])[-1].type == "TransactionFinished"
                for records in streams.values()
            ]
            if (len(closed) == len(gids) and all(closed)) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    finally:
        store.close()
    assert len(streams) == len(gids)
    for records in streams.values():
        assert [r.stream_version for r in records] == list(range(1, len(records) + 1))
        events = [e for r in records for e in events_from_record(r)]
        assert events[0].type == "TransactionStarted"
        assert events[-1].type == "TransactionFinished"
        decided = next(i for i, e in enumerate(events) if e.type == "TransactionDecided")
        confirms = [i for i, e in enumerate(events) if getattr(e, "op", None) == "confirm"]
        assert min(confirms) > decided  # the decision is recorded before any confirm
        # one record per write: the start with the first tries, the answers with the
        # decision and the confirms, the answers with the end (b1's first try failed)
        assert records[0].type == EVENT_GROUP
        assert [e.type for e in events_from_record(records[0])] == [
            "TransactionStarted",
            "CallStarted",
            "CallStarted",
        ]
        assert len(records) < len(events)
    summary = verify_wal(tmp_path / "coordinator-wal")
    assert summary.last_position == max(r.position for rs in streams.values() for r in rs)


def test_recovery_starts_from_the_snapshot_of_open_streams(
    database_url: str, tmp_path: Path, participant: FakeParticipant
) -> None:
    clock = ManualClock()
    wal = tmp_path / "wal"

    def small_snapshots(config: Any) -> Any:
        return dataclasses.replace(config, snapshot_every_events=5)

    stuck = tcc(participant, ("s1", "s2"))
    participant.answer("s2", "confirm", *([BROKEN] * 50))
    with start_coordinator(database_url, wal, clock=clock, configure=small_snapshots) as live:
        with live.client("write") as c:
            c.post("/v1/tcc", json=stuck)
            for _ in range(4):
                body = tcc(participant)
                with_wait = c.post("/v1/tcc", json=body, params={"wait": "true"})
                assert with_wait.json()["status"] == "committed"
        assert live.coordinator.journal.committed_position > 10  # two snapshots at least
    store = PostgresEventStore(database_url, "coordinator")
    try:
        watermark = store.watermark()
        snapshot = store.load_snapshots([OPEN_STREAMS_SNAPSHOT])[OPEN_STREAMS_SNAPSHOT]
    finally:
        store.close()
    assert watermark > 0
    assert f"tcc-{stuck['gid']}" in snapshot["streams"]
    participant.script.clear()
    with start_coordinator(database_url, wal, clock=clock, configure=small_snapshots) as live:
        # resumed, not necessarily still unfinished: the participant now answers at once
        assert live.coordinator.resumed == [stuck["gid"]]
        assert live.wait_finished(stuck["gid"], clock=clock)["status"] == "committed"


def test_a_call_that_never_answers_times_out_and_is_retried(
    database_url: str, tmp_path: Path, participant: FakeParticipant
) -> None:
    participant.answer("b1", "try", "hang")
    runtime = dataclasses.replace(FAST, call_timeout_s=0.3)
    with start_coordinator(database_url, tmp_path / "wal", runtime=runtime) as live:
        body = tcc(participant)
        with live.client("write") as c:
            state = c.post("/v1/tcc", json=body, params={"wait": "true"}).json()
        assert state["status"] == "committed"
        full = live.wait_finished(body["gid"])
    first = next(
        e for e in full["history"] if e["type"] == "CallFinished" and e["branch_id"] == "b1"
    )
    assert first["result"] == "transient" and "timed out" in first["detail"]
    assert first["status_code"] is None


def test_a_gid_used_before_a_restart_is_still_known_after_it(
    database_url: str, tmp_path: Path, participant: FakeParticipant
) -> None:
    """The gid filter is filled from the book at start: a repeat of a finished start is
    answered as a repeat, another spec with its gid conflicts, a new gid starts."""
    wal = tmp_path / "wal"
    done, other = tcc(participant), tcc(participant)
    with start_coordinator(database_url, wal) as live, live.client("write") as c:
        assert c.post("/v1/tcc", json=done, params={"wait": "true"}).status_code == 201
    with start_coordinator(database_url, wal) as live:
        gids = live.coordinator.gids.filter
        assert gids is not None and gids.may_contain(done["gid"])
        with live.client("write") as c:
            again = c.post("/v1/tcc", json=done)
            assert again.status_code == 200 and again.json()["status"] == "committed"
            changed = c.post("/v1/tcc", json={**done, "timeout_s": 5})
            assert changed.status_code == 409
            assert c.post("/v1/tcc", json=other, params={"wait": "true"}).status_code == 201
    assert len([op for _, op in participant.ops(done["gid"]) if op == "try"]) == 2
