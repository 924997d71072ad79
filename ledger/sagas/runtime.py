"""What the TCC and saga drivers share: the clock, the journal, the HTTP client, the
back-off with its global retry budget, alerts and metrics.

The drivers never sleep on ``asyncio.sleep`` directly: they wait on the :class:`Clock`,
which tests replace by a :class:`ManualClock` and move forward, and every wait also ends
early when an operator asks for a retry now (the transaction's *poke* event).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ledger.sagas.batching import CallBatcher
from ledger.sagas.http import Poster
from ledger.sagas.journal import CallFinished, CallStarted, CoordinatorEvent, Journal
from ledger.sagas.metrics import CoordinatorMetrics
from ledger.sagas.protocol import Backoff, CallOutcome, CallResult, Op, call_participant
from ledger.sagas.state import Transaction, evolve

__all__ = [
    "Alarm",
    "Clock",
    "ManualClock",
    "RetryBudget",
    "Runtime",
    "RuntimeConfig",
    "SystemClock",
]

_log = logging.getLogger("ledger.sagas.alerts")


class Alarm(Protocol):
    """A pending :meth:`Clock.alarm`."""

    def cancel(self) -> object: ...


class Clock(Protocol):
    """Wall-clock time for deadlines and back-off (injectable: tests move it)."""

    def now_us(self) -> int: ...

    async def sleep_until(self, at_us: int, wake: asyncio.Event | None = None) -> None:
        """Return at ``at_us``, or earlier when ``wake`` is set."""
        ...

    def alarm(self, at_us: int, callback: Callable[[], object]) -> Alarm:
        """Call ``callback`` on the event loop at ``at_us`` unless cancelled first (a
        timer without a task of its own, for deadlines that rarely fire)."""
        ...


class SystemClock:
    """The real clock."""

    def now_us(self) -> int:
        return time.time_ns() // 1000

    async def sleep_until(self, at_us: int, wake: asyncio.Event | None = None) -> None:
        delay_s = (at_us - self.now_us()) / 1e6
        if delay_s <= 0:
            return
        if wake is None:
            await asyncio.sleep(delay_s)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), delay_s)

    def alarm(self, at_us: int, callback: Callable[[], object]) -> Alarm:
        delay_s = max(0.0, (at_us - self.now_us()) / 1e6)
        return asyncio.get_running_loop().call_later(delay_s, callback)


class ManualClock:
    """A clock that moves only when told (:meth:`advance`, thread-safe): each wait ends
    once the time it waits for is reached."""

    def __init__(self, start_us: int = 1_700_000_000_000_000) -> None:
        self._now_us = start_us
        self._sleepers: list[tuple[int, asyncio.Future[None]]] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def now_us(self) -> int:
        return self._now_us

    def advance(self, seconds: float) -> None:
        self._now_us += int(seconds * 1e6)
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._release)

    def _release(self) -> None:
        keep = []
        for at_us, future in self._sleepers:
            if at_us <= self._now_us:
                if not future.done():
                    future.set_result(None)
            elif not future.done():
                keep.append((at_us, future))
        self._sleepers = keep

    async def sleep_until(self, at_us: int, wake: asyncio.Event | None = None) -> None:
        if self._now_us >= at_us:
            return
        self._loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = self._loop.create_future()
        self._sleepers.append((at_us, future))
        if wake is None:
            await future
            return
        woken: asyncio.Future[Any] = asyncio.ensure_future(wake.wait())
        try:
            await asyncio.wait([future, woken], return_when=asyncio.FIRST_COMPLETED)
        finally:
            woken.cancel()
            future.cancel()

    def alarm(self, at_us: int, callback: Callable[[], object]) -> Alarm:
        self._loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = self._loop.create_future()
        future.add_done_callback(lambda f: None if f.cancelled() else callback())
        if self._now_us >= at_us:
            future.set_result(None)
        else:
            self._sleepers.append((at_us, future))
        return future


class RetryBudget:
    """A token bucket over all retries (not first attempts): at most ``rate_per_s`` on
    average, ``burst`` at once, so a participant outage cannot turn into a retry storm."""

    def __init__(self, rate_per_s: float, burst: int) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._tokens = float(burst)
        self._at = time.monotonic()

    async def acquire(self) -> None:
        while True:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate_per_s)
            self._at = now
            if self._tokens >= 1:
                self._tokens -= 1
                return
            await asyncio.sleep((1 - self._tokens) / self.rate_per_s)


@dataclass(frozen=True)
class RuntimeConfig:
    """Timings and limits of participant calls (see ``ledger.config.Settings``)."""

    call_timeout_s: float = 10.0
    retry_base_ms: int = 100
    retry_max_ms: int = 30_000
    alert_after_attempts: int = 5
    retries_per_s_max: float = 1000.0
    tcc_timeout_s: float = 30.0
    batch_calls_max: int = 512
    batch_in_flight_max: int = 4


@dataclass
class Runtime:
    """The drivers' view of the coordinator."""

    journal: Journal
    client: Poster
    clock: Clock
    metrics: CoordinatorMetrics
    config: RuntimeConfig = field(default_factory=RuntimeConfig)
    pokes: dict[str, asyncio.Event] = field(default_factory=dict)
    unrecorded: dict[str, list[CoordinatorEvent]] = field(default_factory=dict)
    budget: RetryBudget | None = None
    batcher: CallBatcher | None = None
    settled: Callable[[Transaction], None] | None = None
    """Called when a transaction's final state is applied, just before its closing
    record goes to the journal (``?wait=true`` answers then)."""

    def __post_init__(self) -> None:
        self.backoff = Backoff(self.config.retry_base_ms, self.config.retry_max_ms)
        if self.batcher is None:
            self.batcher = CallBatcher(
                self.client,
                self.config.call_timeout_s,
                items_max=self.config.batch_calls_max,
                in_flight_max=self.config.batch_in_flight_max,
                observe_items=self.metrics.batch_items.observe,
            )
        # labels() takes a lock and builds a key on every call: look each child up once
        self._call_seconds: dict[str, Any] = {}
        self._calls: dict[tuple[str, str], Any] = {}
        if self.budget is None:
            self.budget = RetryBudget(
                self.config.retries_per_s_max, max(1, int(self.config.retries_per_s_max))
            )

    # -- journal ----------------------------------------------------------------------------

    async def record(self, txn: Transaction, events: list[CoordinatorEvent]) -> None:
        """Apply ``events`` to ``txn`` and make them durable, together with any events
        held back so far (successful answers are held back to share the next write)."""
        for e in events:
            evolve(txn, e)
        if txn.finished and self.settled is not None:
            self.settled(txn)
        held = self.unrecorded.pop(txn.gid, None)
        await self.journal.record(txn.stream, held + events if held else events)

    def hold(self, txn: Transaction, event: CoordinatorEvent) -> None:
        """Apply ``event`` now and write it with the transaction's next record."""
        evolve(txn, event)
        self.unrecorded.setdefault(txn.gid, []).append(event)

    # -- calls ------------------------------------------------------------------------------

    async def start_call(self, txn: Transaction, branch_id: str, op: Op) -> int:
        """Record ``CallStarted`` for the next attempt; return its number."""
        attempt = txn.call(branch_id, op).attempts + 1
        await self.record(
            txn,
            [
                CallStarted(
                    gid=txn.gid,
                    branch_id=branch_id,
                    op=op,
                    attempt=attempt,
                    at_us=self.clock.now_us(),
                )
            ],
        )
        return attempt

    async def send(
        self,
        txn: Transaction,
        branch_id: str,
        op: Op,
        attempt: int,
        url: str,
        payload: Any,
        headers: Mapping[str, str],
        *,
        failure_allowed: bool,
        batch_url: str | None = None,
    ) -> CallOutcome:
        """Send an attempt already recorded by :meth:`start_call` (to ``batch_url`` in a
        batch when given, else to ``url`` alone); record its answer (held back when it is
        a success) and raise alerts."""
        t0 = time.perf_counter()
        if batch_url is not None:
            assert self.batcher is not None
            outcome = await self.batcher.call(batch_url, headers, txn.gid, branch_id, op, payload)
        else:
            outcome = await call_participant(
                self.client,
                url,
                txn.gid,
                branch_id,
                op,
                payload,
                headers,
                self.config.call_timeout_s,
            )
        elapsed = time.perf_counter() - t0
        timer = self._call_seconds.get(op)
        if timer is None:
            timer = self._call_seconds[op] = self.metrics.call_seconds.labels(op)
        timer.observe(elapsed)
        counted = self._calls.get((op, outcome.result))
        if counted is None:
            counted = self._calls[(op, outcome.result)] = self.metrics.calls.labels(
                op, outcome.result.value
            )
        counted.inc()
        finished = CallFinished(
            gid=txn.gid,
            branch_id=branch_id,
            op=op,
            attempt=attempt,
            result=outcome.result.value,
            status_code=outcome.status_code,
            detail=outcome.detail,
            at_us=self.clock.now_us(),
        )
        if outcome.result is CallResult.SUCCESS:
            self.hold(txn, finished)
            return outcome
        await self.record(txn, [finished])
        if outcome.result is CallResult.FAILURE and not failure_allowed:
            self.alert(txn, branch_id, op, attempt, "failure_answer", outcome)
        elif attempt >= self.config.alert_after_attempts and _alert_due(
            attempt, self.config.alert_after_attempts
        ):
            self.alert(txn, branch_id, op, attempt, "attempts", outcome)
        return outcome

    def alert(
        self,
        txn: Transaction,
        branch_id: str,
        op: str,
        attempt: int,
        reason: str,
        outcome: CallOutcome,
    ) -> None:
        self.metrics.alerts.labels(op, reason).inc()
        _log.error(
            "coordinator alert: %s %s of %s %s: %s after %d attempts (last: %s %s)",
            txn.kind,
            op,
            txn.gid,
            branch_id,
            reason,
            attempt,
            outcome.status_code,
            outcome.detail,
            extra={
                "alert": reason,
                "gid": txn.gid,
                "branch_id": branch_id,
                "op": op,
                "attempt": attempt,
                "result": outcome.result.value,
                "status_code": outcome.status_code,
            },
        )

    async def back_off(self, txn: Transaction, attempt: int, until_us: int | None = None) -> None:
        """Wait before the next attempt (full jitter, capped; at most until ``until_us``),
        ending early on a retry-now; then take a token from the retry budget."""
        wake = self.pokes.setdefault(txn.gid, asyncio.Event())
        if not wake.is_set():
            at_us = self.clock.now_us() + int(self.backoff.delay_s(attempt) * 1e6)
            if until_us is not None:
                at_us = min(at_us, until_us)
            await self.clock.sleep_until(at_us, wake)
        wake.clear()
        assert self.budget is not None
        await self.budget.acquire()

    def poke(self, gid: str) -> None:
        self.pokes.setdefault(gid, asyncio.Event()).set()

    def forget(self, gid: str) -> None:
        self.pokes.pop(gid, None)
        self.unrecorded.pop(gid, None)


def _alert_due(attempt: int, first: int) -> bool:
    """Alert at ``first`` attempts, then at 2x, 4x, 8x ... (not on every retry)."""
    n = attempt // max(first, 1)
    return attempt % max(first, 1) == 0 and n & (n - 1) == 0
