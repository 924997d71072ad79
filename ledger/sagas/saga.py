"""The saga driver: run the steps in order; on failure, compensate in reverse order.

Forward: each step's action is sent until it answers success or failure; ongoing and
transient answers are retried with back-off. What a failure means depends on the step:

* a **compensable** step or the **pivot** answering failure ends the forward run: the
  saga decides ``compensate``. A compensable step also gives up when the saga's
  ``timeout_s`` passes (while the pivot has not started), because undoing it is safe;
  the pivot never gives up on its own, because it cannot be undone and a transient
  answer may hide a success.
* a **retriable** step must eventually succeed: a failure answer is a protocol breach,
  alerted and retried.

Compensation: every compensable step whose action was ever sent (including the one that
failed: a participant may have done part of it, and an empty compensation costs
nothing) is compensated, last first, one at a time, each retried until it succeeds.
Steps and compensations carry the gid and step id, so participants de-duplicate.
"""

from __future__ import annotations

from ledger.sagas.journal import CallStarted, Outcome, TransactionDecided, TransactionFinished
from ledger.sagas.protocol import CallResult
from ledger.sagas.runtime import Runtime
from ledger.sagas.specs import SagaSpec, StepSpec
from ledger.sagas.state import Transaction

__all__ = ["run_saga"]


async def run_saga(rt: Runtime, txn: Transaction, first_recorded: bool = False) -> None:
    """Drive ``txn`` (a saga) to its final state. ``first_recorded``: the first action's
    ``CallStarted`` was written with ``TransactionStarted`` (a new saga)."""
    assert isinstance(txn.spec, SagaSpec)
    spec = txn.spec
    if txn.status == "running":
        reason = await _forward(rt, txn, spec, first_recorded)
        if reason is None:
            await _finish(rt, txn, "committed", "every step succeeded")
            return
        first = _to_compensate(txn, spec)
        now_us = rt.clock.now_us()
        events: list[TransactionDecided | CallStarted] = [
            TransactionDecided(gid=txn.gid, decision="compensate", reason=reason, at_us=now_us)
        ]
        if first:
            events.append(
                CallStarted(
                    gid=txn.gid,
                    branch_id=first[0].step_id,
                    op="compensate",
                    attempt=txn.call(first[0].step_id, "compensate").attempts + 1,
                    at_us=now_us,
                )
            )
        await rt.record(txn, [*events])
        first_recorded = True
    for step in _to_compensate(txn, spec):
        await _compensate(rt, txn, step, first_recorded)
        first_recorded = False
    await _finish(rt, txn, "compensated", txn.decision_reason)


async def _forward(
    rt: Runtime, txn: Transaction, spec: SagaSpec, first_recorded: bool
) -> str | None:
    """Run the actions not yet done; None when all succeeded, else why to compensate."""
    for step in spec.steps:
        action = txn.call(step.step_id, "action")
        if action.succeeded:
            continue
        if action.failed and step.kind != "retriable":
            # A recovered saga whose failure answer was durable but whose decision was
            # not: the "no" is final, so sending the action again could only turn it
            # into a late "yes" that the participant is not bound to repeat.
            return f"action of step {step.step_id} ({step.kind}) failed: {action.detail}"
        result = await _act(rt, txn, step, first_recorded)
        first_recorded = False
        if result is CallResult.FAILURE:
            detail = txn.call(step.step_id, "action").detail
            return f"action of step {step.step_id} ({step.kind}) failed: {detail}"
        if result is None:
            return f"timed out during step {step.step_id}"
    return None


async def _act(rt: Runtime, txn: Transaction, step: StepSpec, recorded: bool) -> CallResult | None:
    """Send one action until it answers success or failure (or, for a compensable step,
    which always runs before the pivot, until the deadline: None)."""
    deadline_us = txn.deadline_us if step.kind == "compensable" else None
    while True:
        if deadline_us is not None and rt.clock.now_us() >= deadline_us:
            return None
        if recorded:
            attempt = txn.call(step.step_id, "action").attempts
            recorded = False
        else:
            attempt = await rt.start_call(txn, step.step_id, "action")
        outcome = await rt.send(
            txn,
            step.step_id,
            "action",
            attempt,
            step.action_url,
            step.payload,
            step.headers,
            failure_allowed=step.kind != "retriable",
        )
        if outcome.result is CallResult.SUCCESS:
            return outcome.result
        if outcome.result is CallResult.FAILURE and step.kind != "retriable":
            return outcome.result
        await rt.back_off(txn, attempt, deadline_us)


def _to_compensate(txn: Transaction, spec: SagaSpec) -> list[StepSpec]:
    """Compensable steps whose action was sent and whose compensation has not succeeded,
    last first."""
    return [
        s
        for s in reversed(spec.steps)
        if s.kind == "compensable"
        and txn.call(s.step_id, "action").started
        and not txn.call(s.step_id, "compensate").succeeded
    ]


async def _compensate(rt: Runtime, txn: Transaction, step: StepSpec, recorded: bool) -> None:
    assert step.compensate_url is not None
    while True:
        if recorded:
            attempt = txn.call(step.step_id, "compensate").attempts
            recorded = False
        else:
            attempt = await rt.start_call(txn, step.step_id, "compensate")
        outcome = await rt.send(
            txn,
            step.step_id,
            "compensate",
            attempt,
            step.compensate_url,
            step.payload,
            step.headers,
            failure_allowed=False,
        )
        if outcome.result is CallResult.SUCCESS:
            return
        await rt.back_off(txn, attempt)


async def _finish(rt: Runtime, txn: Transaction, outcome: Outcome, reason: str) -> None:
    await rt.record(
        txn,
        [
            TransactionFinished(
                gid=txn.gid,
                outcome=outcome,
                reason=reason,
                at_us=rt.clock.now_us(),
            )
        ],
    )
