"""The participant protocol, back-off, crash points, specs and the HTTP client (no
database): how answers are classified, what is sent, and how network failures look."""

from __future__ import annotations

import asyncio
import random
import socket
import threading
import uuid
from collections.abc import Iterator

import httpx
import orjson
import pytest

from ledger.application.records import GENESIS_HASH, EventRecord, PendingRecord, chain_records
from ledger.sagas.http import (
    CallFailed,
    CallTimeout,
    FastPoster,
    HttpxPoster,
    _target,
    _target_split,
)
from ledger.sagas.journal import (
    EVENT_GROUP,
    CallFinished,
    CallStarted,
    CoordinatorEvent,
    CrashPoint,
    TransactionDecided,
    TransactionStarted,
    events_from_record,
    record_data,
)
from ledger.sagas.protocol import Backoff, CallResult, build_request, classify
from ledger.sagas.runtime import ManualClock
from ledger.sagas.specs import SagaSpec, TccSpec, redact_headers
from ledger.sagas.state import replay


@pytest.mark.parametrize(
    ("status", "body", "result"),
    [
        (200, {"result": "success"}, CallResult.SUCCESS),
        (201, {"result": "success", "transfer_id": "x"}, CallResult.SUCCESS),
        (200, {"result": "ongoing"}, CallResult.ONGOING),
        (409, {"result": "failure", "code": "exceeds_credits"}, CallResult.FAILURE),
        (409, {"code": "conflict"}, CallResult.TRANSIENT),  # a 409 without the protocol
        (200, {"result": "failure"}, CallResult.TRANSIENT),  # failure must be a 409
        (200, {}, CallResult.TRANSIENT),
        (200, None, CallResult.TRANSIENT),
        (500, {"result": "success"}, CallResult.TRANSIENT),
        (503, {"detail": "overloaded"}, CallResult.TRANSIENT),
        (404, {"detail": "no route"}, CallResult.TRANSIENT),
        (422, {"result": "failure"}, CallResult.TRANSIENT),
    ],
)
def test_answers_are_classified_by_the_fixed_protocol(
    status: int, body: object, result: CallResult
) -> None:
    raw = b"" if body is None else orjson.dumps(body)
    assert classify(status, raw).result is result


def test_malformed_bodies_are_transient_and_details_are_short() -> None:
    assert classify(200, b"<html>").result is CallResult.TRANSIENT
    assert len(classify(500, b"x" * 10_000).detail) <= 300


def test_envelope_and_template_conventions() -> None:
    url, body = build_request("http://p/reserve/try", "g1", "b1", "try", {"sku": "a"})
    assert url == "http://p/reserve/try"
    assert orjson.loads(body or b"") == {
        "gid": "g1",
        "branch_id": "b1",
        "op": "try",
        "payload": {"sku": "a"},
    }
    template = "http://l/v1/tcc/{gid}/{branch_id}/try"
    url, body = build_request(template, "g:1", "b/1", "try", {"amount_minor": 5})
    assert url == "http://l/v1/tcc/g%3A1/b%2F1/try"
    assert orjson.loads(body or b"") == {"amount_minor": 5}
    url, body = build_request("http://l/v1/tcc/{gid}/{branch_id}/confirm", "g", "b", "confirm", 1)
    assert url == "http://l/v1/tcc/g/b/confirm" and body is None


def test_back_off_is_capped_full_jitter() -> None:
    b = Backoff(base_ms=100, max_ms=1000)
    assert [b.ceiling_ms(n) for n in (1, 2, 3, 4, 5, 50)] == [100, 200, 400, 800, 1000, 1000]
    rng = random.Random(7)
    delays = [b.delay_s(3, rng) for _ in range(1000)]
    assert min(delays) >= 0 and max(delays) <= 0.4
    assert max(delays) > 0.3 and min(delays) < 0.05  # spread over the whole range


def test_crash_points_parse_and_match() -> None:
    point = CrashPoint.parse("CallStarted:confirm@2/wal")
    assert (point.type, point.op, point.nth, point.after_wal_only) == (
        "CallStarted",
        "confirm",
        2,
        True,
    )
    with pytest.raises(ValueError, match="expected TYPE"):
        CrashPoint.parse("Nonsense")


def _records(writes: list[list[CoordinatorEvent]]) -> list[EventRecord]:
    pending = []
    for version, events in enumerate(writes, 1):
        type_, data = record_data(events)
        pending.append(PendingRecord(uuid.uuid4(), "tcc-g", version, type_, 1, 0, data))
    return chain_records(pending, 1, GENESIS_HASH)


def _tcc_writes() -> list[list[CoordinatorEvent]]:
    url = "http://p/{gid}/{branch_id}"
    spec = {
        "gid": "g",
        "branches": [
            {"branch_id": b, "try_url": url, "confirm_url": url, "cancel_url": url}
            for b in ("b1", "b2")
        ],
    }
    tries = [CallStarted(gid="g", branch_id=b, op="try", attempt=1, at_us=1) for b in ("b1", "b2")]
    answers: list[CoordinatorEvent] = [
        CallFinished(
            gid="g",
            branch_id=b,
            op="try",
            attempt=1,
            result="success",
            status_code=200,
            detail="{}",
            at_us=2,
        )
        for b in ("b1", "b2")
    ]
    confirms = [
        CallStarted(gid="g", branch_id=b, op="confirm", attempt=1, at_us=3) for b in ("b1", "b2")
    ]
    decided = TransactionDecided(gid="g", decision="confirm", reason="ok", at_us=3)
    started = TransactionStarted(gid="g", kind="tcc", spec=spec, deadline_us=9, at_us=1)
    return [[started, *tries], [*answers, decided, *confirms], [confirms[0]]]


def test_one_write_is_one_record_and_reads_back_as_its_events() -> None:
    writes = _tcc_writes()
    grouped = _records(writes)
    assert [r.type for r in grouped] == [EVENT_GROUP, EVENT_GROUP, "CallStarted"]
    events = [e for r in grouped for e in events_from_record(r)]
    assert events == [e for w in writes for e in w]
    # a journal written one event per record (before grouping) replays to the same state
    single = _records([[e] for e in events])
    assert [e for r in single for e in events_from_record(r)] == events
    assert replay(events) == replay([e for r in single for e in events_from_record(r)])


@pytest.mark.parametrize(
    ("point", "record"),
    [
        ("TransactionStarted", 0),
        ("CallStarted:try@2", 0),
        ("CallFinished:try@2", 1),
        ("TransactionDecided", 1),
        ("CallStarted:confirm@2", 1),
        ("CallStarted:confirm@3", 2),
    ],
)
def test_crash_points_count_the_events_inside_a_record(point: str, record: int) -> None:
    """A crash point names an event, whichever record carries it: the process dies
    after the batch holding the record that holds that event."""
    crash = CrashPoint.parse(point)
    hits = [crash.hit([r]) for r in _records(_tcc_writes())]
    assert hits.index(True) == record and hits.count(True) == 1


def test_manual_clock_wakes_sleepers_when_moved() -> None:
    async def scenario() -> list[str]:
        clock = ManualClock()
        woke: list[str] = []
        wake = asyncio.Event()

        async def sleeper(name: str, seconds: float, event: asyncio.Event | None) -> None:
            await clock.sleep_until(clock.now_us() + int(seconds * 1e6), event)
            woke.append(name)

        tasks = [
            asyncio.create_task(sleeper("one", 1, None)),
            asyncio.create_task(sleeper("ten", 10, None)),
            asyncio.create_task(sleeper("poked", 100, wake)),
        ]
        await asyncio.sleep(0.01)
        clock.advance(2)
        await asyncio.sleep(0.01)
        wake.set()
        await asyncio.sleep(0.01)
        clock.advance(10)
        await asyncio.gather(*tasks)
        return woke

    assert asyncio.run(scenario()) == ["one", "poked", "ten"]


def test_header_values_are_redacted_in_views() -> None:
    spec = TccSpec.model_validate(
        {
            "branches": [
                {
                    "branch_id": "b",
                    "try_url": "http://x/t",
                    "confirm_url": "http://x/c",
                    "cancel_url": "http://x/x",
                    "headers": {"Authorization": "Bearer s3cret"},
                }
            ]
        }
    )
    shown = redact_headers(spec.model_dump(mode="json"))
    assert shown["branches"][0]["headers"] == {"Authorization": "***"}
    assert "s3cret" not in orjson.dumps(shown).decode()


def test_saga_specs_accept_every_valid_order() -> None:
    url = "http://x/a"
    for kinds in (["retriable"], ["pivot"], ["compensable", "compensable", "pivot", "retriable"]):
        SagaSpec.model_validate(
            {
                "steps": [
                    {"step_id": f"s{i}", "kind": k, "action_url": url}
                    | ({"compensate_url": url} if k == "compensable" else {})
                    for i, k in enumerate(kinds)
                ]
            }
        )


# -- the coordinator's own HTTP client -------------------------------------------------------


@pytest.fixture
def raw_server() -> Iterator[tuple[int, list[bytes]]]:
    """A socket server answering scripted raw bytes, one connection at a time."""
    script: list[bytes] = []
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            with conn:
                while script:
                    data = conn.recv(65536)
                    if not data:
                        break
                    answer = script.pop(0)
                    if answer == b"close":
                        break
                    if answer == b"hang":
                        stop.wait(5)
                        break
                    conn.sendall(answer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield sock.getsockname()[1], script
    stop.set()
    sock.close()
    thread.join(5)


OK = b'HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n{"result":"success"}'


def test_fast_client_reuses_a_connection_and_reports_failures(
    raw_server: tuple[int, list[bytes]],
) -> None:
    port, script = raw_server
    chunked = (
        b"HTTP/1.1 409 Conflict\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'5\r\n{"res\r\nf\r\nult":"failure"}\r\n0\r\n\r\n'
    )
    script += [OK, chunked, b"close"]

    async def scenario() -> None:
        poster = FastPoster(HttpxPoster(httpx.AsyncClient()))
        url = f"http://127.0.0.1:{port}/p"
        try:
            assert await poster.post(url, b"{}", {}, 2) == (200, b'{"result":"success"}')
            assert await poster.post(url, None, {"X-A": "1"}, 2) == (
                409,
                b'{"result":"failure"}',
            )
            with pytest.raises(CallFailed, match="closed before the answer"):
                await poster.post(url, b"{}", {}, 2)
            script.append(b"hang")
            with pytest.raises(CallTimeout):
                await poster.post(url, b"{}", {}, 0.2)
            with pytest.raises(ValueError, match="line break"):
                await poster.post(url, b"{}", {"X-Bad": "a\r\nInjected: 1"}, 1)
        finally:
            await poster.aclose()

    asyncio.run(scenario())


def test_fast_client_reports_refused_connections() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def scenario() -> None:
        poster = FastPoster(HttpxPoster(httpx.AsyncClient()))
        try:
            with pytest.raises(CallFailed, match="cannot connect"):
                await poster.post(f"http://127.0.0.1:{port}/p", b"{}", {}, 1)
        finally:
            await poster.aclose()

    asyncio.run(scenario())


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000/v1/tcc/g/b/try",
        "http://127.0.0.1:8000/v1/tcc/g%3A1/b/try?x=1&y=2",
        "http://localhost/p#fragment",
        "http://LocalHost:81",
        "http://h:9/a/b?q=1#f",
        "http://h?q=1",
        "http://h#f",
        "http://[::1]:8080/p",
        "http://user:pw@h:7/p",
        "http://h/a\r\nInjected: 1",
        "http://h/a\tb",
        "https://h/p",
        "ftp://h/p",
        "http:///p",
    ],
)
def test_fast_client_targets_are_those_of_urlsplit(url: str) -> None:
    assert _target(url) == _target_split(url)


def test_fast_client_keeps_to_its_connection_limit(raw_server: tuple[int, list[bytes]]) -> None:
    """With one connection allowed, concurrent requests queue for it (and one that is
    cancelled while queued gives its turn away) instead of opening more."""
    port, script = raw_server
    script += [OK, OK, OK]

    async def scenario() -> None:
        poster = FastPoster(HttpxPoster(httpx.AsyncClient()), connections_max=1)
        url = f"http://127.0.0.1:{port}/p"
        try:
            first = asyncio.ensure_future(poster.post(url, b"{}", {}, 2))
            doomed = asyncio.ensure_future(poster.post(url, b"{}", {}, 2))
            last = asyncio.ensure_future(poster.post(url, b"{}", {}, 2))
            await asyncio.sleep(0)
            doomed.cancel()
            assert (await first)[0] == 200 and (await last)[0] == 200
            assert doomed.cancelled()
            assert len(poster._all) == 1  # the one connection, reused
        finally:
            await poster.aclose()

    asyncio.run(scenario())
