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
import functools

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
    todo = [b for b in txn.spec.branches if not txn.call(b.branch_id, op).succeeded]
    if todo:
        # The first branch runs in this task and the others in tasks of their own: as
        # with gather, but one task fewer per transaction.
        loop = asyncio.get_running_loop()
        others = [
            loop.create_task(_finish_branch(rt, txn, b, op, first_recorded)) for b in todo[1:]
        ]
        try:
            await _finish_branch(rt, txn, todo[0], op, first_recorded)
            for task in others:
                await task
        except BaseException:
            for task in others:
                task.cancel()
            for task in others:
                with contextlib.suppress(BaseException):
                    await task
            raise
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
    if not todo:
        return "confirm", "every try succeeded"
    # One future for the decision, set by the tries' done callbacks or the deadline's
    # alarm: no timer task and no asyncio.wait round per answer.
    loop = asyncio.get_running_loop()
    decided: asyncio.Future[tuple[Decision, str]] = loop.create_future()
    waiting = len(todo)

    def on_done(branch: BranchSpec, task: asyncio.Task[CallResult]) -> None:
        nonlocal waiting
        if task.cancelled():
            return
        exc = task.exception()  # retrieved even when moot, so it is never logged as lost
        if decided.done():
            return
        if exc is not None:
            decided.set_exception(exc)
        elif task.result() is CallResult.FAILURE:
            detail = txn.call(branch.branch_id, "try").detail
            decided.set_result(("cancel", f"try of branch {branch.branch_id} failed: {detail}"))
        else:
            waiting -= 1
            if waiting == 0:
                decided.set_result(("confirm", "every try succeeded"))

    def on_deadline() -> None:
        if not decided.done():
            decided.set_result(("cancel", "timed out before every try succeeded"))

    tasks = []
    for b in todo:
        task = loop.create_task(_try_branch(rt, txn, b, first_recorded))
        task.add_done_callback(functools.partial(on_done, b))
        tasks.append(task)
    alarm = rt.clock.alarm(deadline_us, on_deadline) if deadline_us is not None else None
    try:
        return await decided
    finally:
        if alarm is not None:
            alarm.cancel()
        running = [t for t in tasks if not t.done()]
        for task in running:
            task.cancel()
        for task in running:
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
            txn,
            b.branch_id,
            "try",
            attempt,
            b.try_url,
            b.payload,
            b.headers,
            failure_allowed=True,
            batch_url=b.batch_url,
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
            txn,
            b.branch_id,
            op,
            attempt,
            url,
            b.payload,
            b.headers,
            failure_allowed=False,
            batch_url=b.batch_url,
        )
        if outcome.result is CallResult.SUCCESS:
            return
        await rt.back_off(txn, attempt)
