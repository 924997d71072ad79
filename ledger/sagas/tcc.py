"""The TCC driver: try every branch in parallel, then confirm all or cancel all.

Decision rule: every try answered success → confirm; any try answered failure, or the
deadline passed before every try succeeded → cancel. Tries that answered ongoing or
transient are sent again with back-off until one of those happens. Cancel goes to *every*
branch, also those whose try failed or never went out: the participant records an empty
cancellation, which also refuses a try that arrives later (no hanging reservation).

The decision and the first confirm/cancel ``CallStarted`` of every branch are one durable
write; only then do the confirms or cancels go out. They are retried until each succeeds
(a ``failure`` answer is a protocol breach: alerted, then retried like a transient one).
:func:`run_tcc` starts from whatever state the transaction is in, so the same function
runs a new transaction and resumes a recovered one.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from ledger.sagas.journal import (
    CallStarted,
    Decision,
    Outcome,
    TransactionDecided,
    TransactionFinished,
)
from ledger.sagas.protocol import CallResult, Op
from ledger.sagas.runtime import Runtime
from ledger.sagas.specs import BranchSpec, TccSpec
from ledger.sagas.state import Transaction

__all__ = ["run_tcc"]


async def run_tcc(rt: Runtime, txn: Transaction, first_recorded: bool = False) -> None:
    """Drive ``txn`` (a TCC transaction) to its final state. ``first_recorded``: the
    first try ``CallStarted`` of every branch was written with ``TransactionStarted``."""
    assert isinstance(txn.spec, TccSpec)
    if txn.status == "trying":
        decision, reason = await _try_all(rt, txn, txn.spec, first_recorded)
        op: Op = "confirm" if decision == "confirm" else "cancel"
        now_us = rt.clock.now_us()
        starts = [
            CallStarted(
                gid=txn.gid,
                branch_id=b.branch_id,
                op=op,
                attempt=txn.call(b.branch_id, op).attempts + 1,
                at_us=now_us,
            )
            for b in txn.spec.branches
        ]
        await rt.record(
            txn,
            [
                TransactionDecided(gid=txn.gid, decision=decision, reason=reason, at_us=now_us),
                *starts,
            ],
        )
        first_recorded = True
    else:
        first_recorded = False
    op = "confirm" if txn.status == "confirming" else "cancel"
    await asyncio.gather(
        *(
            _finish_branch(rt, txn, b, op, first_recorded)
            for b in txn.spec.branches
            if not txn.call(b.branch_id, op).succeeded
        )
    )
    outcome: Outcome = "committed" if op == "confirm" else "cancelled"
    await rt.record(
        txn,
        [
            TransactionFinished(
                gid=txn.gid,
                outcome=outcome,
                reason=txn.decision_reason,
                at_us=rt.clock.now_us(),
            )
        ],
    )


async def _try_all(
    rt: Runtime, txn: Transaction, spec: TccSpec, first_recorded: bool
) -> tuple[Decision, str]:
    """Run the tries until the decision is clear; cancel the tries still running."""
    deadline_us = txn.deadline_us
    todo = [b for b in spec.branches if not txn.call(b.branch_id, "try").succeeded]
    for b in spec.branches:
        if txn.call(b.branch_id, "try").failed:
            return "cancel", f"try of branch {b.branch_id} failed"
    if deadline_us is not None and rt.clock.now_us() >= deadline_us:
        return "cancel", "timed out before every try succeeded"
    tasks: dict[asyncio.Future[Any], BranchSpec] = {
        asyncio.ensure_future(_try_branch(rt, txn, b, first_recorded)): b for b in todo
    }
    timer: asyncio.Future[Any] = asyncio.ensure_future(
        rt.clock.sleep_until(deadline_us) if deadline_us is not None else asyncio.Event().wait()
    )
    try:
        pending: set[asyncio.Future[Any]] = set(tasks)
        while pending:
            done, pending = await asyncio.wait(
                pending | {timer}, return_when=asyncio.FIRST_COMPLETED
            )
            for task in done:
                if task is timer:
                    continue
                branch = tasks[task]
                if task.result() is CallResult.FAILURE:
                    detail = txn.call(branch.branch_id, "try").detail
                    return "cancel", f"try of branch {branch.branch_id} failed: {detail}"
            pending.discard(timer)
            if timer in done:
                return "cancel", "timed out before every try succeeded"
        return "confirm", "every try succeeded"
    finally:
        timer.cancel()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _try_branch(rt: Runtime, txn: Transaction, b: BranchSpec, recorded: bool) -> CallResult:
    """Try one branch until it answers success or failure (the caller stops it at the
    deadline)."""
    while True:
        if recorded:
            attempt = txn.call(b.branch_id, "try").attempts
            recorded = False
        else:
            attempt = await rt.start_call(txn, b.branch_id, "try")
        outcome = await rt.send(
            txn, b.branch_id, "try", attempt, b.try_url, b.payload, b.headers, failure_allowed=True
        )
        if outcome.result in (CallResult.SUCCESS, CallResult.FAILURE):
            return outcome.result
        await rt.back_off(txn, attempt, txn.deadline_us)


async def _finish_branch(
    rt: Runtime, txn: Transaction, b: BranchSpec, op: Op, first_recorded: bool
) -> None:
    """Confirm or cancel one branch, retrying until it answers success."""
    url = b.confirm_url if op == "confirm" else b.cancel_url
    recorded = first_recorded
    while True:
        if recorded:
            attempt = txn.call(b.branch_id, op).attempts
            recorded = False
        else:
            attempt = await rt.start_call(txn, b.branch_id, op)
        outcome = await rt.send(
            txn, b.branch_id, op, attempt, url, b.payload, b.headers, failure_allowed=False
        )
        if outcome.result is CallResult.SUCCESS:
            return
        await rt.back_off(txn, attempt)
