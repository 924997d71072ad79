"""CallBatcher: calls to one batch URL coalesced into requests, each answer classified."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest

from ledger.sagas.batching import CallBatcher
from ledger.sagas.http import CallFailed, CallTimeout
from ledger.sagas.protocol import CallOutcome, CallResult, Op

URL = "http://participant.test/batch"
OTHER_URL = "http://other.test/batch"
SUCCESS: dict[str, Any] = {"status": 200, "body": {"result": "success"}}


@dataclass
class Request:
    url: str
    body: Any
    headers: dict[str, str]
    timeout_s: float

    @property
    def calls(self) -> list[dict[str, Any]]:
        calls: list[dict[str, Any]] = self.body["calls"]
        return calls

    @property
    def gids(self) -> list[str]:
        return [call["gid"] for call in self.calls]


def success_for_each(request: Request) -> tuple[int, bytes]:
    return 200, orjson.dumps({"results": [SUCCESS for _ in request.calls]})


@dataclass
class FakePoster:
    """Records every request and answers it with ``answer`` (which may raise); while
    ``gate`` is set and not yet released, requests wait for it (stay in flight)."""

    answer: Callable[[Request], tuple[int, bytes]] = success_for_each
    gate: asyncio.Event | None = None
    requests: list[Request] = field(default_factory=list)
    closed: bool = False

    async def post(
        self, url: str, body: bytes | None, headers: Mapping[str, str], timeout_s: float
    ) -> tuple[int, bytes]:
        assert body is not None
        request = Request(url, orjson.loads(body), dict(headers), timeout_s)
        self.requests.append(request)
        if self.gate is not None:
            await self.gate.wait()
        return self.answer(request)

    async def aclose(self) -> None:
        self.closed = True


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run ``scenario``; a caller left waiting forever fails it in seconds, not hangs."""
    asyncio.run(asyncio.wait_for(scenario(), 5))


async def passes(n: int = 10) -> None:
    """Let the event loop run ``n`` passes (scheduled flushes, started requests)."""
    for _ in range(n):
        await asyncio.sleep(0)


def call(
    batcher: CallBatcher,
    gid: str,
    *,
    url: str = URL,
    headers: Mapping[str, str] | None = None,
    op: Op = "try",
    payload: Any = None,
) -> asyncio.Task[CallOutcome]:
    return asyncio.ensure_future(batcher.call(url, headers or {}, gid, f"b-{gid}", op, payload))


def text(body: Any) -> str:
    return orjson.dumps(body).decode()


# 1. one request per loop pass, one classified outcome per caller


def test_calls_in_one_pass_share_one_request_and_each_gets_its_own_outcome() -> None:
    items: dict[str, dict[str, Any]] = {
        "ok": {"status": 200, "body": {"result": "success", "n": 1}},
        "no": {"status": 409, "body": {"result": "failure", "code": "x"}},
        "wait": {"status": 200, "body": {"result": "ongoing"}},
        "busy": {"status": 503, "body": {"error": "overloaded"}},
    }

    def answer(request: Request) -> tuple[int, bytes]:
        return 200, orjson.dumps({"results": [items[gid] for gid in request.gids]})

    async def scenario() -> None:
        poster = FakePoster(answer)
        batcher = CallBatcher(poster, 2.5)
        outcomes = await asyncio.gather(
            batcher.call(URL, {}, "ok", "b1", "try", {"amount": 5}),
            batcher.call(URL, {}, "no", "b2", "confirm", None),
            batcher.call(URL, {}, "wait", "b3", "action", [1, 2]),
            batcher.call(URL, {}, "busy", "b4", "cancel", "text"),
        )
        assert len(poster.requests) == 1
        assert batcher.requests == 1
        (request,) = poster.requests
        assert request.url == URL
        assert request.timeout_s == 2.5
        assert request.body == {
            "calls": [
                {"gid": "ok", "branch_id": "b1", "op": "try", "payload": {"amount": 5}},
                {"gid": "no", "branch_id": "b2", "op": "confirm", "payload": None},
                {"gid": "wait", "branch_id": "b3", "op": "action", "payload": [1, 2]},
                {"gid": "busy", "branch_id": "b4", "op": "cancel", "payload": "text"},
            ]
        }
        assert list(outcomes) == [
            CallOutcome(CallResult.SUCCESS, 200, text(items["ok"]["body"])),
            CallOutcome(CallResult.FAILURE, 409, text(items["no"]["body"])),
            CallOutcome(CallResult.ONGOING, 200, text(items["wait"]["body"])),
            CallOutcome(CallResult.TRANSIENT, 503, text(items["busy"]["body"])),
        ]

    run(scenario)


def test_item_answers_are_classified_like_single_answers() -> None:
    items: list[dict[str, Any]] = [
        {"status": 201, "body": {"result": "success"}},  # any 2xx
        {"status": 200, "body": {"result": "failure"}},  # failure needs 409
        {"status": 409, "body": {"result": "success"}},  # 409 without failure
        {"status": 200},  # no body at all
        {"status": 200, "body": {"result": "success", "pad": "x" * 1000}},  # long
    ]

    def answer(request: Request) -> tuple[int, bytes]:
        return 200, orjson.dumps({"results": items})

    async def scenario() -> None:
        batcher = CallBatcher(FakePoster(answer), 1)
        outcomes = await asyncio.gather(*(call(batcher, f"g{i}") for i in range(len(items))))
        assert [(o.result, o.status_code) for o in outcomes] == [
            (CallResult.SUCCESS, 201),
            (CallResult.TRANSIENT, 200),
            (CallResult.TRANSIENT, 409),
            (CallResult.TRANSIENT, 200),
            (CallResult.SUCCESS, 200),
        ]
        assert "without result success or ongoing" in outcomes[1].detail
        assert outcomes[3].detail.endswith(": ")  # the empty body as text
        assert len(outcomes[4].detail) == 300
        assert outcomes[4].detail.endswith("…")

    run(scenario)


def test_calls_in_later_passes_go_in_later_requests() -> None:
    async def scenario() -> None:
        poster = FakePoster()
        batcher = CallBatcher(poster, 1)
        first = await call(batcher, "a")
        second = await call(batcher, "b")
        assert first.result is second.result is CallResult.SUCCESS
        assert [r.gids for r in poster.requests] == [["a"], ["b"]]

    run(scenario)


# 2. one queue per (URL, headers)


def test_different_headers_or_urls_go_in_separate_requests() -> None:
    alice = {"Authorization": "Bearer alice"}
    bob = {"Authorization": "Bearer bob"}

    async def scenario() -> None:
        poster = FakePoster()
        batcher = CallBatcher(poster, 1)
        outcomes = await asyncio.gather(
            call(batcher, "a1", headers=alice),
            call(batcher, "b1", headers=bob),
            call(batcher, "a2", headers=alice),
            call(batcher, "o1", headers=alice, url=OTHER_URL),
            call(batcher, "b2", headers=bob),
        )
        assert all(o.result is CallResult.SUCCESS for o in outcomes)
        assert batcher.requests == 3
        seen = {(r.url, r.headers["Authorization"]): r for r in poster.requests}
        assert len(seen) == 3
        assert seen[URL, "Bearer alice"].gids == ["a1", "a2"]
        assert seen[URL, "Bearer bob"].gids == ["b1", "b2"]
        assert seen[OTHER_URL, "Bearer alice"].gids == ["o1"]
        for request in poster.requests:
            assert request.headers == {
                "Authorization": request.headers["Authorization"],
                "Content-Type": "application/json",
            }

    run(scenario)


def test_the_same_headers_in_another_order_share_a_request() -> None:
    async def scenario() -> None:
        poster = FakePoster()
        batcher = CallBatcher(poster, 1)
        await asyncio.gather(
            call(batcher, "a", headers={"X-One": "1", "X-Two": "2"}),
            call(batcher, "b", headers={"X-Two": "2", "X-One": "1"}),
        )
        (request,) = poster.requests
        assert request.gids == ["a", "b"]
        assert request.headers == {
            "X-One": "1",
            "X-Two": "2",
            "Content-Type": "application/json",
        }

    run(scenario)


def test_no_headers_still_sends_the_content_type() -> None:
    async def scenario() -> None:
        poster = FakePoster()
        await call(CallBatcher(poster, 1), "a")
        assert poster.requests[0].headers == {"Content-Type": "application/json"}

    run(scenario)


# 3. items_max


def test_items_max_splits_the_queued_calls_in_order() -> None:
    async def scenario() -> None:
        poster = FakePoster()
        sizes: list[int] = []
        batcher = CallBatcher(poster, 1, items_max=2, in_flight_max=8, observe_items=sizes.append)
        outcomes = await asyncio.gather(*(call(batcher, f"g{i}") for i in range(5)))
        assert all(o.result is CallResult.SUCCESS for o in outcomes)
        assert [r.gids for r in poster.requests] == [["g0", "g1"], ["g2", "g3"], ["g4"]]
        assert sizes == [2, 2, 1]

    run(scenario)


def test_items_max_requests_are_in_flight_at_once_up_to_in_flight_max() -> None:
    async def scenario() -> None:
        gate = asyncio.Event()
        poster = FakePoster(gate=gate)
        batcher = CallBatcher(poster, 1, items_max=2, in_flight_max=2)
        tasks = [call(batcher, f"g{i}") for i in range(5)]
        await passes()
        # two requests of two in flight; the fifth call waits for a free slot
        assert [r.gids for r in poster.requests] == [["g0", "g1"], ["g2", "g3"]]
        gate.set()
        outcomes = await asyncio.gather(*tasks)
        assert all(o.result is CallResult.SUCCESS for o in outcomes)
        assert [r.gids for r in poster.requests] == [["g0", "g1"], ["g2", "g3"], ["g4"]]

    run(scenario)


# 4. in_flight_max and natural batching


def test_calls_queued_behind_a_request_in_flight_go_out_together() -> None:
    async def scenario() -> None:
        gate = asyncio.Event()
        poster = FakePoster(gate=gate)
        batcher = CallBatcher(poster, 1, in_flight_max=1)
        first = call(batcher, "first")
        await passes()
        assert [r.gids for r in poster.requests] == [["first"]]

        later = [call(batcher, "a")]
        await passes()
        later.append(call(batcher, "b"))
        await passes()
        later.append(call(batcher, "c"))
        await passes()
        assert len(poster.requests) == 1, "a call went out while the request was in flight"
        assert not first.done() and not any(t.done() for t in later)

        gate.set()
        outcomes = await asyncio.gather(first, *later)
        assert all(o.result is CallResult.SUCCESS for o in outcomes)
        assert [r.gids for r in poster.requests] == [["first"], ["a", "b", "c"]]
        assert batcher.requests == 2

    run(scenario)


def test_in_flight_max_is_per_queue() -> None:
    async def scenario() -> None:
        gate = asyncio.Event()
        poster = FakePoster(gate=gate)
        batcher = CallBatcher(poster, 1, in_flight_max=1)
        held = call(batcher, "held")
        await passes()
        other = call(batcher, "other", url=OTHER_URL)
        await passes()
        # the other URL's queue has its own slot
        assert [r.gids for r in poster.requests] == [["held"], ["other"]]
        gate.set()
        await asyncio.gather(held, other)

    run(scenario)


# 5. failures of the whole request, and malformed items


@pytest.mark.parametrize(
    ("answer", "status_code", "detail_has"),
    [
        pytest.param(CallTimeout("no answer within 1 s"), None, "timed out", id="timeout"),
        pytest.param(CallFailed("connection refused"), None, "no answer", id="failed"),
        pytest.param((500, b'{"result":"success"}'), 500, "without 3 results", id="500"),
        pytest.param((409, b'{"result":"failure"}'), 409, "without 3 results", id="409"),
        pytest.param(
            (200, orjson.dumps({"results": [SUCCESS, SUCCESS]})),
            200,
            "without 3 results",
            id="too-few",
        ),
        pytest.param(
            (200, orjson.dumps({"results": [SUCCESS] * 4})),
            200,
            "without 3 results",
            id="too-many",
        ),
        pytest.param((200, b"<html>oops</html>"), 200, "<html>oops</html>", id="not-json"),
        pytest.param((200, b""), 200, "without 3 results", id="empty"),
        pytest.param((200, orjson.dumps([SUCCESS] * 3)), 200, "without", id="bare-list"),
        pytest.param((200, b'{"results": "nope"}'), 200, "without", id="not-a-list"),
        pytest.param((200, b'{"result": "success"}'), 200, "without", id="single-answer"),
    ],
)
def test_a_failed_request_is_one_transient_outcome_for_every_call_in_it(
    answer: Exception | tuple[int, bytes], status_code: int | None, detail_has: str
) -> None:
    broken = [True]

    def respond(request: Request) -> tuple[int, bytes]:
        if broken[0]:
            if isinstance(answer, Exception):
                raise answer
            return answer
        return success_for_each(request)

    async def scenario() -> None:
        poster = FakePoster(respond)
        batcher = CallBatcher(poster, 1)
        outcomes = await asyncio.gather(*(call(batcher, f"g{i}") for i in range(3)))
        assert len(poster.requests) == 1
        for outcome in outcomes:
            assert outcome.result is CallResult.TRANSIENT
            assert outcome.status_code == status_code
            assert detail_has in outcome.detail
        # the queue is usable again afterwards
        broken[0] = False
        again = await call(batcher, "again")
        assert again.result is CallResult.SUCCESS
        assert [r.gids for r in poster.requests] == [["g0", "g1", "g2"], ["again"]]

    run(scenario)


def test_the_whole_request_failure_detail_is_short() -> None:
    def answer(request: Request) -> tuple[int, bytes]:
        return 502, b"x" * 5000

    async def scenario() -> None:
        outcome = await call(CallBatcher(FakePoster(answer), 1), "g")
        assert outcome.result is CallResult.TRANSIENT
        assert outcome.status_code == 502
        assert len(outcome.detail) == 300

    run(scenario)


def test_a_result_without_an_integer_status_is_transient_for_that_call_only() -> None:
    results: list[Any] = [
        {"body": {}},
        {"status": 200, "body": {"result": "success"}},
        {"status": True, "body": {"result": "success"}},
        {"status": "200", "body": {"result": "success"}},
        {"status": 200.0, "body": {"result": "success"}},
        {"status": 409, "body": {"result": "failure"}},
        None,
        [200, {"result": "success"}],
    ]

    def answer(request: Request) -> tuple[int, bytes]:
        return 200, orjson.dumps({"results": results})

    async def scenario() -> None:
        batcher = CallBatcher(FakePoster(answer), 1)
        outcomes = await asyncio.gather(*(call(batcher, f"g{i}") for i in range(len(results))))
        assert [o.result for o in outcomes] == [
            CallResult.TRANSIENT,
            CallResult.SUCCESS,
            CallResult.TRANSIENT,
            CallResult.TRANSIENT,
            CallResult.TRANSIENT,
            CallResult.FAILURE,
            CallResult.TRANSIENT,
            CallResult.TRANSIENT,
        ]
        for i in (0, 2, 3, 4, 6, 7):
            assert outcomes[i].status_code is None
            assert "batch result without a status" in outcomes[i].detail
            assert text(results[i]) in outcomes[i].detail
        assert outcomes[1].status_code == 200
        assert outcomes[5].status_code == 409

    run(scenario)


def test_an_unexpected_poster_error_reaches_every_caller_of_the_request() -> None:
    boom = [True]

    def answer(request: Request) -> tuple[int, bytes]:
        if boom[0]:
            raise ValueError("a header contains a line break")
        return success_for_each(request)

    async def scenario() -> None:
        poster = FakePoster(answer)
        batcher = CallBatcher(poster, 1, in_flight_max=1)
        results = await asyncio.gather(
            call(batcher, "a"), call(batcher, "b"), return_exceptions=True
        )
        assert len(results) == 2
        for result in results:
            assert isinstance(result, ValueError)
        boom[0] = False
        assert (await call(batcher, "c")).result is CallResult.SUCCESS  # slot given back

    run(scenario)


# 6. cancellation


def test_a_caller_cancelled_while_queued_is_not_sent() -> None:
    async def scenario() -> None:
        gate = asyncio.Event()
        poster = FakePoster(gate=gate)
        batcher = CallBatcher(poster, 1, in_flight_max=1)
        first = call(batcher, "first")
        await passes()
        a, doomed, b = call(batcher, "a"), call(batcher, "doomed"), call(batcher, "b")
        await passes()
        doomed.cancel()
        await passes()
        assert doomed.cancelled()
        assert len(poster.requests) == 1

        gate.set()
        outcomes = await asyncio.gather(first, a, b)
        assert all(o.result is CallResult.SUCCESS for o in outcomes)
        assert [r.gids for r in poster.requests] == [["first"], ["a", "b"]]

    run(scenario)


def test_when_every_queued_caller_is_cancelled_no_request_is_sent() -> None:
    async def scenario() -> None:
        gate = asyncio.Event()
        poster = FakePoster(gate=gate)
        sizes: list[int] = []
        batcher = CallBatcher(poster, 1, in_flight_max=1, observe_items=sizes.append)
        first = call(batcher, "first")
        await passes()
        doomed = [call(batcher, f"d{i}") for i in range(3)]
        await passes()
        for task in doomed:
            task.cancel()
        await passes()
        gate.set()
        assert (await first).result is CallResult.SUCCESS
        await passes()
        assert [r.gids for r in poster.requests] == [["first"]]
        assert batcher.requests == 1
        assert sizes == [1]
        # and the queue still works
        assert (await call(batcher, "later")).result is CallResult.SUCCESS
        assert [r.gids for r in poster.requests] == [["first"], ["later"]]

    run(scenario)


def test_a_caller_cancelled_while_in_flight_leaves_the_others_answered() -> None:
    async def scenario() -> None:
        gate = asyncio.Event()
        poster = FakePoster(gate=gate)
        batcher = CallBatcher(poster, 1, in_flight_max=1)
        a, doomed, b = call(batcher, "a"), call(batcher, "doomed"), call(batcher, "b")
        await passes()
        assert [r.gids for r in poster.requests] == [["a", "doomed", "b"]]
        doomed.cancel()
        await passes()
        gate.set()
        outcomes = await asyncio.gather(a, b)
        assert all(o.result is CallResult.SUCCESS for o in outcomes)
        assert doomed.cancelled()
        assert (await call(batcher, "c")).result is CallResult.SUCCESS

    run(scenario)


# 7. counters


def test_requests_and_observe_items_see_one_entry_per_request() -> None:
    fail = [False]

    def answer(request: Request) -> tuple[int, bytes]:
        if fail[0]:
            raise CallTimeout("slow")
        return success_for_each(request)

    async def scenario() -> None:
        poster = FakePoster(answer)
        sizes: list[int] = []
        batcher = CallBatcher(poster, 1, items_max=3, observe_items=sizes.append)
        assert batcher.requests == 0
        await asyncio.gather(*(call(batcher, f"g{i}") for i in range(4)))
        assert batcher.requests == 2
        assert sizes == [3, 1]
        await asyncio.gather(call(batcher, "x"), call(batcher, "y"))
        assert batcher.requests == 3
        assert sizes == [3, 1, 2]
        fail[0] = True  # failed requests count too
        outcome = await call(batcher, "z")
        assert outcome.result is CallResult.TRANSIENT
        assert batcher.requests == 4
        assert sizes == [3, 1, 2, 1]
        assert [len(r.calls) for r in poster.requests] == sizes

    run(scenario)


def test_observe_items_is_optional() -> None:
    async def scenario() -> None:
        batcher = CallBatcher(FakePoster(), 1)
        await asyncio.gather(call(batcher, "a"), call(batcher, "b"))
        assert batcher.requests == 1

    run(scenario)
