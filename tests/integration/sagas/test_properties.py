"""Property tests of the drivers: for any participant behaviour allowed by the protocol,
and a restart at any point, TCC and sagas end where the rules say, in order.

Goal and method: Hypothesis draws the answers each participant gives (success, failure,
ongoing, transient, in any order and number) and a point at which the coordinator is
stopped and restarted from its journal; the coordinator runs in process over the
in-memory event store and WAL (the fakes of the real adapters, same contract) and an
httpx mock transport. After each run we check the outcome rule, the order of calls as the
participants saw them, and that replaying the journal gives the same state.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import orjson
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ledger.adapters.memory import MemoryDatabase, MemoryEventLog, MemoryEventStore
from ledger.sagas.coordinator import Coordinator, CoordinatorConfig
from ledger.sagas.journal import events_from_record
from ledger.sagas.runtime import RuntimeConfig
from ledger.sagas.specs import SagaSpec, TccSpec
from ledger.sagas.state import replay

ANSWERS = {
    "S": (200, {"result": "success"}),
    "F": (409, {"result": "failure"}),
    "O": (200, {"result": "ongoing"}),
    "T": (503, {"detail": "busy"}),
}
FAST = RuntimeConfig(
    call_timeout_s=5, retry_base_ms=1, retry_max_ms=2, alert_after_attempts=1000, tcc_timeout_s=60
)


class ReopenableLog(MemoryEventLog):
    """The in-memory WAL, surviving the coordinator's close (as files survive a crash)."""

    def close(self) -> None:
        pass


class Participants:
    """Answers from per-(branch, op) scripts (then success); records what arrived."""

    def __init__(self, scripts: dict[tuple[str, str], list[str]]) -> None:
        self.scripts = {k: list(v) for k, v in scripts.items()}
        self.seen: list[tuple[str, str, str]] = []  # (branch, op, answer)

    def handle(self, request: httpx.Request) -> httpx.Response:
        body = orjson.loads(request.content)
        key = (body["branch_id"], body["op"])
        queue = self.scripts.get(key)
        answer = queue.pop(0) if queue else "S"
        self.seen.append((key[0], key[1], answer))
        status, payload = ANSWERS[answer]
        return httpx.Response(status, content=orjson.dumps(payload))


async def run(
    kind: str, spec: TccSpec | SagaSpec, parts: Participants, stop_after_events: int
) -> tuple[dict[str, Any], list[Any]]:
    db = MemoryDatabase()
    log = ReopenableLog()
    config = CoordinatorConfig(
        database_url="postgresql://unused/x", wal_dir=Path("/nonexistent"), runtime=FAST
    )
    transport = httpx.MockTransport(parts.handle)

    async def open_one() -> Coordinator:
        return await Coordinator.open(
            config,
            transport=transport,
            store=MemoryEventStore("coordinator", db),
            wal=log,  # type: ignore[arg-type]
        )

    first = await open_one()
    txn, _ = await (first.start_tcc(spec) if kind == "tcc" else first.start_saga(spec))  # type: ignore[arg-type]
    gid = txn.gid
    for _ in range(1_000_000):  # let it run until the stop point (or the end)
        if log.last_position >= stop_after_events or gid not in first.live:
            break
        await asyncio.sleep(0)
    await first.close()  # as a crash: drivers stop wherever they are
    db.holders.clear()
    second = await open_one()
    await second.wait(gid, 30)
    await second.close()
    records = [r for r in log.read() if r.stream_id.endswith(gid)]
    events = [e for r in records for e in events_from_record(r)]
    final = replay(events)
    return {"status": final.status, "versions": [r.stream_version for r in records]}, events


def tcc_spec(branches: int) -> TccSpec:
    return TccSpec.model_validate(
        {
            "branches": [
                {
                    "branch_id": f"b{i}",
                    "try_url": "http://p/try",
                    "confirm_url": "http://p/confirm",
                    "cancel_url": "http://p/cancel",
                }
                for i in range(branches)
            ]
        }
    )


answers = st.lists(st.sampled_from("SFOT"), max_size=4)
phase2 = st.lists(st.sampled_from("STF"), max_size=3)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    branches=st.integers(1, 3),
    tries=st.lists(answers, min_size=3, max_size=3),
    confirms=st.lists(phase2, min_size=3, max_size=3),
    cancels=st.lists(phase2, min_size=3, max_size=3),
    stop_after=st.integers(0, 30),
)
def test_tcc_ends_as_the_rule_says_whatever_the_answers_and_the_restart(
    branches: int,
    tries: list[list[str]],
    confirms: list[list[str]],
    cancels: list[list[str]],
    stop_after: int,
) -> None:
    scripts: dict[tuple[str, str], list[str]] = {}
    for i in range(branches):
        scripts[(f"b{i}", "try")] = tries[i]
        scripts[(f"b{i}", "confirm")] = confirms[i]
        scripts[(f"b{i}", "cancel")] = cancels[i]
    parts = Participants(scripts)
    result, events = asyncio.run(run("tcc", tcc_spec(branches), parts, stop_after))

    def first_final(script: list[str]) -> str:
        return next((a for a in script if a in "SF"), "S")

    should_commit = all(first_final(tries[i]) == "S" for i in range(branches))
    assert result["status"] == ("committed" if should_commit else "cancelled")
    assert result["versions"] == list(range(1, len(result["versions"]) + 1))
    ops = defaultdict(list)
    for branch, op, answer in parts.seen:
        ops[branch].append((op, answer))
    wrong = "cancel" if should_commit else "confirm"
    right = "confirm" if should_commit else "cancel"
    for i in range(branches):
        seen = ops[f"b{i}"]
        assert all(op != wrong for op, _ in seen), seen
        assert (right, "S") in seen, seen  # every branch ends with a successful right op
    decided = next(i for i, e in enumerate(events) if e.type == "TransactionDecided")
    assert all(
        i > decided for i, e in enumerate(events) if getattr(e, "op", None) in ("confirm", "cancel")
    )


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    actions=st.lists(answers, min_size=4, max_size=4),
    compensations=st.lists(phase2, min_size=4, max_size=4),
    stop_after=st.integers(0, 30),
)
# Stopped right after the first action's failure answer is durable, before the decision
# (the stop is a position, and which one that is depends on how many events come first).
@example(actions=[["F"], [], [], []], compensations=[[], [], [], []], stop_after=2)
@example(actions=[["F"], [], [], []], compensations=[[], [], [], []], stop_after=3)
@example(actions=[["S"], ["F"], [], []], compensations=[[], [], [], []], stop_after=5)
def test_sagas_compensate_in_reverse_whatever_the_answers_and_the_restart(
    actions: list[list[str]], compensations: list[list[str]], stop_after: int
) -> None:
    kinds = ["compensable", "compensable", "pivot", "retriable"]
    spec = SagaSpec.model_validate(
        {
            "steps": [
                {"step_id": f"s{i}", "kind": k, "action_url": "http://p/a"}
                | ({"compensate_url": "http://p/c"} if k == "compensable" else {})
                for i, k in enumerate(kinds)
            ]
        }
    )
    scripts: dict[tuple[str, str], list[str]] = {}
    for i in range(4):
        scripts[(f"s{i}", "action")] = actions[i]
        scripts[(f"s{i}", "compensate")] = compensations[i]
    parts = Participants(scripts)
    result, _ = asyncio.run(run("saga", spec, parts, stop_after))

    def first_final(script: list[str]) -> str:
        return next((a for a in script if a in "SF"), "S")

    failed = next((i for i in range(3) if first_final(actions[i]) == "F"), None)
    assert result["status"] == ("committed" if failed is None else "compensated")
    # first successes, in order (a success not yet recorded at the restart is repeated)
    order = list(dict.fromkeys((b, op) for b, op, answer in parts.seen if answer == "S"))
    if failed is None:
        assert [b for b, op in order if op == "action"] == ["s0", "s1", "s2", "s3"]
        assert all(op == "action" for _, op in order)
    else:
        assert ("s3", "action") not in [(b, op) for b, op, _ in parts.seen]
        compensated = [b for b, op in order if op == "compensate"]
        started = min(failed + 1, 2)  # compensable steps whose action was sent
        expected = [f"s{i}" for i in reversed(range(started))]
        assert compensated == expected, (failed, compensated)
