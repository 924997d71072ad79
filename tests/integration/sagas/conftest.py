"""Live coordinators and scriptable participants for the coordinator tests.

* :class:`FakeParticipant`: a real HTTP server (uvicorn on a loopback port) whose answers
  are scripted per (branch, op) and whose handlers can be *gated* (held until the test
  opens the gate), to force a delivery order deterministically. It records every request.
* :func:`start_coordinator`: the coordinator's real app and journal (PostgreSQL + WAL) on
  uvicorn in a thread, optionally with a :class:`ManualClock` that the test moves.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ledger.api.auth import KeyStore
from ledger.api.server import uvicorn_options
from ledger.devservices import free_port
from ledger.sagas.app import CoordinatorContext, create_app
from ledger.sagas.coordinator import Coordinator, CoordinatorConfig
from ledger.sagas.runtime import Clock, ManualClock, RuntimeConfig

SUCCESS = (200, {"result": "success"})
FAILURE = (409, {"result": "failure", "code": "refused", "detail": "scripted refusal"})
ONGOING = (200, {"result": "ongoing"})
BROKEN = (500, {"detail": "scripted server error"})


@dataclass
class Received:
    gid: str
    branch_id: str
    op: str
    body: Any
    at: float


@dataclass
class FakeParticipant:
    """A scriptable participant; answers success unless told otherwise."""

    base_url: str = ""
    script: dict[tuple[str, str], list[tuple[int, Any] | str]] = field(default_factory=dict)
    gates: dict[tuple[str, str], threading.Event] = field(default_factory=dict)
    arrived: dict[tuple[str, str], threading.Event] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, op: str) -> str:
        return f"{self.base_url}/{op}"

    def answer(self, branch_id: str, op: str, *answers: tuple[int, Any] | str) -> None:
        """Answers for the next calls of (branch, op), in order; then success. An answer
        may be "hang" (never answer: the call times out)."""
        self.script.setdefault((branch_id, op), []).extend(answers)

    def gate(self, branch_id: str, op: str) -> threading.Event:
        """Hold (branch, op) requests until the returned event is set."""
        gate = self.gates[(branch_id, op)] = threading.Event()
        return gate

    def wait_arrived(self, branch_id: str, op: str, timeout_s: float = 10) -> None:
        event = self.arrived.setdefault((branch_id, op), threading.Event())
        assert event.wait(timeout_s), f"{op} of {branch_id} never arrived"

    def ops(self, gid: str | None = None) -> list[tuple[str, str]]:
        with self.lock:
            return [(r.branch_id, r.op) for r in self.received if gid in (None, r.gid)]

    async def handle(self, request: Request) -> Response:
        op = request.path_params["op"]
        body = orjson.loads(await request.body() or b"null")
        gid = request.headers.get("x-ledger-gid", "")
        branch = request.headers.get("x-ledger-branch", "")
        key = (branch, op)
        self.arrived.setdefault(key, threading.Event()).set()
        gate = self.gates.get(key)
        if gate is not None:
            await asyncio.to_thread(gate.wait, 30)
        with self.lock:
            self.received.append(Received(gid, branch, op, body, time.monotonic()))
            queue = self.script.get(key)
            answer = queue.pop(0) if queue else SUCCESS
        if answer == "hang":
            await asyncio.sleep(3600)
        assert isinstance(answer, tuple)
        content = answer[1] if isinstance(answer[1], bytes) else orjson.dumps(answer[1])
        return Response(content, answer[0], media_type="application/json")


@contextmanager
def serve_asgi(app: Any, **options: Any) -> Iterator[str]:
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="on",
            timeout_graceful_shutdown=1,
            **options,
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.fixture
def participant() -> Iterator[FakeParticipant]:
    fake = FakeParticipant()
    app = Starlette(routes=[Route("/{op}", fake.handle, methods=["POST"])])
    with serve_asgi(app) as url:
        fake.base_url = url
        yield fake
        for gate in fake.gates.values():
            gate.set()


@dataclass
class LiveCoordinator:
    """A running coordinator (app + journal) and keys to call it with."""

    base_url: str
    ctx: CoordinatorContext
    tokens: dict[str, str]

    @property
    def coordinator(self) -> Coordinator:
        assert self.ctx.coordinator is not None
        return self.ctx.coordinator

    def client(self, scope: str = "admin") -> httpx.Client:
        return httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {self.tokens[scope]}"},
            timeout=60,
        )

    def wait_finished(
        self, gid: str, timeout_s: float = 20, clock: ManualClock | None = None
    ) -> dict[str, Any]:
        """Poll until ``gid`` is finished; with a manual clock, move it 1 s per poll so
        that back-off waits end."""
        with self.client("read") as c:
            deadline = time.monotonic() + timeout_s
            while True:
                body: dict[str, Any] = c.get(f"/v1/transactions/{gid}").json()
                if body.get("finished") or time.monotonic() > deadline:
                    return body
                if clock is not None:
                    clock.advance(1)
                time.sleep(0.02)


FAST = RuntimeConfig(
    call_timeout_s=2.0, retry_base_ms=5, retry_max_ms=40, alert_after_attempts=3, tcc_timeout_s=30
)


def create_keys(database_url: str) -> dict[str, str]:
    keys = KeyStore(database_url, cache_ttl_s=0)
    try:
        return {s: keys.create(f"test-{s}", s)[1] for s in ("read", "write", "admin")}
    finally:
        keys.close()


@contextmanager
def start_coordinator(
    database_url: str,
    wal_dir: Path,
    *,
    runtime: RuntimeConfig = FAST,
    clock: Clock | None = None,
    configure: Callable[[CoordinatorConfig], CoordinatorConfig] | None = None,
) -> Iterator[LiveCoordinator]:
    config = CoordinatorConfig(database_url=database_url, wal_dir=wal_dir, runtime=runtime)
    if configure is not None:
        config = configure(config)
    tokens = create_keys(database_url)
    keys = KeyStore(database_url)
    ctx = CoordinatorContext(
        open_coordinator=lambda: Coordinator.open(config, clock=clock), keys=keys
    )
    try:
        with serve_asgi(create_app(ctx), **uvicorn_options()) as url:  # as ledger coordinator
            yield LiveCoordinator(url, ctx, tokens)
    finally:
        keys.close()


@pytest.fixture
def live(database_url: str, tmp_path: Path) -> Iterator[LiveCoordinator]:
    with start_coordinator(database_url, tmp_path / "coordinator-wal") as running:
        yield running


class Gated:
    """ASGI wrapper around a real participant: holds chosen requests until released and
    can replace the answer of a processed request by a 500 (an answer lost on the way
    back). The body is read *before* waiting, so a held request is still processed after
    the coordinator has given up on it (a late delivery), as a slow network would do."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.holds: dict[str, threading.Event] = {}
        self.paths: list[str] = []
        self.lose_answers: dict[str, int] = {}
        self.failing: dict[str, int] = {}
        self.answers: list[tuple[str, int]] = []

    def hold(self, path_suffix: str) -> threading.Event:
        gate = self.holds[path_suffix] = threading.Event()
        return gate

    def wait_arrived(self, path_suffix: str, timeout_s: float = 10) -> None:
        deadline = time.monotonic() + timeout_s
        while not any(p.endswith(path_suffix) for p in list(self.paths)):
            assert time.monotonic() < deadline, f"no request to {path_suffix}"
            time.sleep(0.01)

    def lose_answer(self, path_suffix: str, times: int = 1) -> None:
        self.lose_answers[path_suffix] = times

    def fail(self, path_suffix: str, times: int = 1) -> None:
        """Answer 503 without processing (the service is failing)."""
        self.failing[path_suffix] = times

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        suffix = next((s for s in (*self.holds, *self.lose_answers) if path.endswith(s)), "")
        self.paths.append(path)
        failing = next((s for s, n in self.failing.items() if n > 0 and path.endswith(s)), None)
        if failing is not None:
            self.failing[failing] -= 1
            await send({"type": "http.response.start", "status": 503, "headers": []})
            await send({"type": "http.response.body", "body": b"failing"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        gate = self.holds.get(suffix)
        if gate is not None:
            await asyncio.to_thread(gate.wait, 30)
        sent = False

        async def replay() -> Any:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.sleep(3600)

        lose = self.lose_answers.get(suffix, 0) > 0
        if lose:
            self.lose_answers[suffix] -= 1
        status = [0]

        async def capture(message: Any) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            if not lose:
                await send(message)

        await self.app(scope, replay, capture)
        self.answers.append((path, status[0]))
        if lose:
            await send({"type": "http.response.start", "status": 500, "headers": []})
            await send({"type": "http.response.body", "body": b"lost"})


@dataclass
class Inventory:
    """The inventory example on its own database, behind a :class:`Gated` wrapper."""

    base_url: str
    database_url: str
    gated: Gated

    def url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    def set_stock(self, sku: str, on_hand: int) -> None:
        r = httpx.post(self.url("/v1/items"), json={"sku": sku, "on_hand": on_hand}, timeout=10)
        r.raise_for_status()

    def stock(self, sku: str) -> dict[str, int]:
        body: dict[str, int] = httpx.get(self.url(f"/v1/items/{sku}"), timeout=10).json()
        return body


@pytest.fixture
def inventory(pg_server: Any) -> Iterator[Inventory]:
    from examples.inventory.service import create_app as create_inventory
    from tests.conftest import _with_database, create_database, drop_database

    name = create_database(pg_server, None)
    url = _with_database(pg_server.url, name)
    gated = Gated(create_inventory(url))
    try:
        with serve_asgi(gated) as base:
            yield Inventory(base, url, gated)
            for gate in gated.holds.values():
                gate.set()
    finally:
        drop_database(pg_server, name)


@dataclass
class LedgerNode:
    """A ``ledger serve`` app (uvicorn in a thread) on its own database, WAL and book."""

    base_url: str
    book_id: str
    token: str
    database_url: str
    gated: Gated

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.base_url, headers={"Authorization": f"Bearer {self.token}"}, timeout=30
        )

    def open_account(self, *, limited: bool = True, code: int = 1) -> str:
        account = str(uuid.uuid4())
        flags = {"debits_must_not_exceed_credits": limited}
        body = {"accounts": [{"id": account, "ledger": "USD", "code": code, "flags": flags}]}
        with self.client() as c:
            r = c.post("/v1/accounts", json=body)
            assert r.json()["results"][0]["status"] == "created", r.text
        return account

    def move(self, debit: str, credit: str, amount_minor: int) -> None:
        transfer = {
            "id": str(uuid.uuid4()),
            "debit_account_id": debit,
            "credit_account_id": credit,
            "amount_minor": amount_minor,
            "ledger": "USD",
            "code": 1,
        }
        with self.client() as c:
            r = c.post("/v1/transfers", json={"transfers": [transfer]})
            assert r.json()["results"][0]["status"] == "created", r.text

    def balances(self, account: str) -> dict[str, int]:
        with self.client() as c:
            body: dict[str, int] = c.get(f"/v1/accounts/{account}/balance").json()
            return body

    def branch_urls(self, op: str) -> str:
        return f"{self.base_url}/v1/tcc/{{gid}}/{{branch_id}}/{op}"


@contextmanager
def start_ledger(
    pg_server: Any, template: str, wal_root: Path, book_id: str
) -> Iterator[LedgerNode]:
    from ledger.api.app import ApiContext
    from ledger.api.app import create_app as create_ledger_app
    from ledger.api.idempotency import IdempotencyStore
    from ledger.bootstrap import open_node
    from ledger.config import load_settings
    from tests.conftest import _with_database, create_database, drop_database

    name = create_database(pg_server, template)
    url = _with_database(pg_server.url, name)
    settings = load_settings(wal_dir=wal_root, book_id=book_id, pending_expiry_interval_ms=100)
    token = create_keys(url)["write"]
    keys = KeyStore(url, cache_ttl_s=60)
    ctx = ApiContext(
        open_node=lambda: open_node(settings, url),
        keys=keys,
        idempotency=IdempotencyStore(url, book_id),
    )
    gated = Gated(create_ledger_app(ctx))
    try:
        with serve_asgi(gated) as base:
            yield LedgerNode(base, book_id, token, url, gated)
            for gate in gated.holds.values():
                gate.set()
    finally:
        keys.close()
        ctx.idempotency.close()
        drop_database(pg_server, name)


@pytest.fixture
def two_ledgers(
    pg_server: Any, template_database: str, tmp_path: Path
) -> Iterator[tuple[LedgerNode, LedgerNode]]:
    with (
        start_ledger(pg_server, template_database, tmp_path / "wal-a", "A") as a,
        start_ledger(pg_server, template_database, tmp_path / "wal-b", "B") as b,
    ):
        yield a, b
