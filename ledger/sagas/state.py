"""The state of one global transaction, rebuilt from its events by :func:`evolve`.

Statuses::

    TCC    trying ──▶ confirming ──▶ committed
              └─────▶ cancelling ──▶ cancelled
    saga   running ─────────────────▶ committed
              └─────▶ compensating ─▶ compensated
    any unfinished status ──(operator)──▶ force_stopped

``evolve`` is the only way state changes, both live (the drivers apply each event as
they record it) and at recovery (replaying the stream), so the two cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from ledger.sagas.journal import CoordinatorEvent, event_to_data
from ledger.sagas.specs import SagaSpec, TccSpec, redact_headers

__all__ = [
    "FINAL_STATUSES",
    "UNFINISHED_STATUSES",
    "CallState",
    "Transaction",
    "evolve",
    "replay",
    "view",
]

UNFINISHED_STATUSES: Final = ("trying", "confirming", "cancelling", "running", "compensating")
FINAL_STATUSES: Final = ("committed", "cancelled", "compensated", "force_stopped")
_DECIDED_STATUS: Final = {
    "confirm": "confirming",
    "cancel": "cancelling",
    "compensate": "compensating",
}


@dataclass
class CallState:
    """One operation of one branch or step (e.g. branch ``b1``'s ``confirm``)."""

    attempts: int = 0
    in_flight: bool = False
    result: str | None = None
    status_code: int | None = None
    detail: str = ""
    last_at_us: int = 0

    @property
    def succeeded(self) -> bool:
        return self.result == "success"

    @property
    def failed(self) -> bool:
        return self.result == "failure"

    @property
    def started(self) -> bool:
        return self.attempts > 0


@dataclass
class Transaction:
    """A TCC transaction or saga as of its last applied event."""

    gid: str
    kind: str
    spec: TccSpec | SagaSpec
    spec_data: dict[str, Any]
    deadline_us: int | None
    started_at_us: int
    status: str
    decision: str | None = None
    decision_reason: str = ""
    outcome: str | None = None
    finish_reason: str = ""
    finished_at_us: int | None = None
    calls: dict[tuple[str, str], CallState] = field(default_factory=dict)
    events: int = 0

    @property
    def stream(self) -> str:
        return f"{self.kind}-{self.gid}"

    @property
    def finished(self) -> bool:
        return self.outcome is not None

    @property
    def ids(self) -> list[str]:
        """Branch ids (TCC) or step ids (saga), in spec order."""
        if isinstance(self.spec, TccSpec):
            return [b.branch_id for b in self.spec.branches]
        return [s.step_id for s in self.spec.steps]

    def call(self, branch_id: str, op: str) -> CallState:
        state = self.calls.get((branch_id, op))
        if state is None:
            state = self.calls[(branch_id, op)] = CallState()
        return state


def start(event: CoordinatorEvent, spec: TccSpec | SagaSpec | None = None) -> Transaction:
    """The transaction a ``TransactionStarted`` event begins (``spec``: the event's spec,
    already parsed, when the caller has it)."""
    assert event.type == "TransactionStarted"
    spec_data = dict(event.spec)
    if spec is None:
        spec = (
            TccSpec.model_validate(spec_data)
            if event.kind == "tcc"
            else SagaSpec.model_validate(spec_data)
        )
    return Transaction(
        gid=event.gid,
        kind=event.kind,
        spec=spec,
        spec_data=spec_data,
        deadline_us=event.deadline_us,
        started_at_us=event.at_us,
        status="trying" if event.kind == "tcc" else "running",
        events=1,
    )


def evolve(txn: Transaction, event: CoordinatorEvent) -> None:
    """Apply one event after ``TransactionStarted`` (in place: the drivers call this for
    every event, so it stays cheap)."""
    txn.events += 1
    if event.type == "CallStarted":
        c = txn.call(event.branch_id, event.op)
        c.attempts = max(c.attempts, event.attempt)
        c.in_flight = True
        c.last_at_us = event.at_us
    elif event.type == "CallFinished":
        c = txn.call(event.branch_id, event.op)
        c.in_flight = False
        c.result = event.result
        c.status_code = event.status_code
        c.detail = event.detail
        c.last_at_us = event.at_us
    elif event.type == "TransactionDecided":
        txn.decision = event.decision
        txn.decision_reason = event.reason
        txn.status = _DECIDED_STATUS[event.decision]
        for c in txn.calls.values():
            c.in_flight = False
    elif event.type == "TransactionFinished":
        txn.outcome = event.outcome
        txn.status = event.outcome
        txn.finish_reason = event.reason
        txn.finished_at_us = event.at_us
    elif event.type == "TransactionStarted":
        raise AssertionError(f"{txn.stream}: TransactionStarted twice")


def replay(events: list[CoordinatorEvent]) -> Transaction:
    """Rebuild a transaction from its whole stream (first event ``TransactionStarted``)."""
    txn = start(events[0])
    for event in events[1:]:
        evolve(txn, event)
    return txn


def view(txn: Transaction, history: list[CoordinatorEvent] | None = None) -> dict[str, Any]:
    """The JSON view served by ``GET /v1/tcc/{gid}``, ``/v1/sagas/{gid}`` and
    ``/v1/transactions/{gid}`` (header values redacted)."""
    ops = ("try", "confirm", "cancel") if txn.kind == "tcc" else ("action", "compensate")
    parts = []
    for part_id in txn.ids:
        entry: dict[str, Any] = {"id": part_id}
        for op in ops:
            c = txn.calls.get((part_id, op))
            if c is not None:
                entry[op] = {
                    "attempts": c.attempts,
                    "in_flight": c.in_flight,
                    "result": c.result,
                    "status_code": c.status_code,
                    "detail": c.detail,
                    "last_at_us": c.last_at_us,
                }
        parts.append(entry)
    out: dict[str, Any] = {
        "gid": txn.gid,
        "kind": txn.kind,
        "status": txn.status,
        "finished": txn.finished,
        "outcome": txn.outcome,
        "decision": txn.decision,
        "decision_reason": txn.decision_reason,
        "finish_reason": txn.finish_reason,
        "started_at_us": txn.started_at_us,
        "deadline_us": txn.deadline_us,
        "finished_at_us": txn.finished_at_us,
        "branches" if txn.kind == "tcc" else "steps": parts,
        "spec": redact_headers(txn.spec_data),
    }
    if history is not None:
        out["history"] = [{"type": e.type, **_redacted(event_to_data(e))} for e in history]
    return out


def _redacted(data: dict[str, Any]) -> dict[str, Any]:
    if "spec" in data:
        data["spec"] = redact_headers(dict(data["spec"]))
    return data
