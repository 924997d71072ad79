"""Batched participant calls: the calls of many transactions to one participant in one
request.

A branch whose spec has a ``batch_url`` is called through :class:`CallBatcher` instead of
one POST per call. Calls to the same batch URL with the same headers that are ready at
about the same time go out together (natural batching, as in the journal's group commit:
nothing waits for a timer; whatever queued while the requests in flight were answered
goes in the next one), at most ``items_max`` per request and ``in_flight_max`` requests
per URL at once.

The batch convention, for any participant that wants it::

    POST <batch_url>   {"calls": [{"gid", "branch_id", "op", "payload"}, ...]}
    200                {"results": [{"status": <int>, "body": <JSON>}, ...]}

one result per call, in order, each the status and JSON body that call would have been
answered alone; each is classified by the same rules as a single answer
(``ledger.sagas.protocol``). Any other answer to the whole request (another status, a
body that is not such a list of the right length, a timeout, no connection) is one
transient outcome for every call in it: each is retried as a new recorded attempt, as a
single call would be. Recording is unchanged: every call's ``CallStarted`` is durable
before it is queued here, and its ``CallFinished`` is written by the caller.

The ledger's ``POST /v1/tcc/batch`` follows this convention.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from ledger.sagas.http import CallFailed, CallTimeout, Poster
from ledger.sagas.protocol import CallOutcome, CallResult, Op, classify, classify_parsed, short

__all__ = ["CallBatcher"]


@dataclass
class _Queue:
    url: str
    headers: dict[str, str]
    waiting: deque[tuple[dict[str, Any], asyncio.Future[CallOutcome]]] = field(
        default_factory=deque
    )
    in_flight: int = 0
    scheduled: bool = False


class CallBatcher:
    """Coalesces calls per (batch URL, headers); see the module docstring."""

    def __init__(
        self,
        poster: Poster,
        timeout_s: float,
        *,
        items_max: int = 512,
        in_flight_max: int = 4,
        observe_items: Callable[[int], None] | None = None,
    ) -> None:
        self.poster = poster
        self.timeout_s = timeout_s
        self.items_max = items_max
        self.in_flight_max = in_flight_max
        self.observe_items = observe_items
        self._queues: dict[tuple[str, tuple[tuple[str, str], ...]], _Queue] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.requests = 0
        """Batch requests sent so far (for tests and the benchmark)."""

    async def call(
        self,
        url: str,
        headers: Mapping[str, str],
        gid: str,
        branch_id: str,
        op: Op,
        payload: Any,
    ) -> CallOutcome:
        """Send one call in the next batch to ``url``; its classified answer. Never
        raises for network trouble (that is a transient outcome)."""
        key = (url, tuple(sorted(headers.items())))
        queue = self._queues.get(key)
        if queue is None:
            sent = {**headers, "Content-Type": "application/json"}
            queue = self._queues[key] = _Queue(url, sent)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[CallOutcome] = loop.create_future()
        item = {"gid": gid, "branch_id": branch_id, "op": op, "payload": payload}
        queue.waiting.append((item, future))
        self._schedule(queue)
        return await future

    def _schedule(self, queue: _Queue) -> None:
        # On the next loop pass, so the calls made in this one share the request.
        if not queue.scheduled and queue.waiting and queue.in_flight < self.in_flight_max:
            queue.scheduled = True
            asyncio.get_running_loop().call_soon(self._flush, queue)

    def _flush(self, queue: _Queue) -> None:
        queue.scheduled = False
        while queue.waiting and queue.in_flight < self.in_flight_max:
            batch: list[tuple[dict[str, Any], asyncio.Future[CallOutcome]]] = []
            while queue.waiting and len(batch) < self.items_max:
                item, future = queue.waiting.popleft()
                if not future.done():  # a caller cancelled while queued: not sent
                    batch.append((item, future))
            if not batch:
                continue
            queue.in_flight += 1
            task = asyncio.get_running_loop().create_task(self._send(queue, batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(
        self, queue: _Queue, batch: list[tuple[dict[str, Any], asyncio.Future[CallOutcome]]]
    ) -> None:
        try:
            outcomes = await self._post(queue, [item for item, _ in batch])
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                if not future.done():
                    future.set_result(outcome)
        except BaseException as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            queue.in_flight -= 1
            self._schedule(queue)

    async def _post(self, queue: _Queue, items: list[dict[str, Any]]) -> list[CallOutcome]:
        self.requests += 1
        if self.observe_items is not None:
            self.observe_items(len(items))
        body = orjson.dumps({"calls": items})
        try:
            status, content = await self.poster.post(queue.url, body, queue.headers, self.timeout_s)
        except CallTimeout as exc:
            return _all(items, CallOutcome(CallResult.TRANSIENT, None, short(f"timed out: {exc}")))
        except CallFailed as exc:
            return _all(items, CallOutcome(CallResult.TRANSIENT, None, short(f"no answer: {exc}")))
        results = _results(status, content, len(items))
        if results is None:
            answer = classify(status, content)
            why = f"batch answer without {len(items)} results"
            whole = CallOutcome(CallResult.TRANSIENT, status, short(f"{why}: {answer.detail}"))
            return _all(items, whole)
        return [_item_outcome(r) for r in results]


def _all(items: list[dict[str, Any]], outcome: CallOutcome) -> list[CallOutcome]:
    return [outcome] * len(items)


def _results(status: int, content: bytes, n: int) -> list[Any] | None:
    """The per-call results of a well-formed batch answer, else None."""
    if status != 200:
        return None
    try:
        parsed = orjson.loads(content)
    except orjson.JSONDecodeError:
        return None
    results = parsed.get("results") if isinstance(parsed, dict) else None
    if not isinstance(results, list) or len(results) != n:
        return None
    return results


def _item_outcome(result: Any) -> CallOutcome:
    status = result.get("status") if isinstance(result, dict) else None
    if not isinstance(status, int) or isinstance(status, bool):
        detail = short(f"batch result without a status: {orjson.dumps(result).decode()}")
        return CallOutcome(CallResult.TRANSIENT, None, detail)
    body = result.get("body")
    text = orjson.dumps(body).decode() if body is not None else ""
    return classify_parsed(status, body, text)
