"""``ledger coordinator``: the coordinator's HTTP API (FastAPI) and its process.

Endpoints (bearer API keys from the same ``api_keys`` table as the ledger; scopes nest
read ⊂ write ⊂ admin)::

    POST /v1/tcc                           write  start a TCC transaction   202 (201: wait=true
    POST /v1/sagas                         write  start a saga                   and finished)
    GET  /v1/tcc/{gid}, /v1/sagas/{gid}    read   state + durable history
    GET  /v1/transactions/{gid}            read   the same, either kind
    GET  /v1/transactions?status=unfinished|<status>&limit=
                                           read   unfinished ones, oldest first
    POST /v1/transactions/{gid}/retry      admin  send the waiting calls now
    POST /v1/transactions/{gid}/force-stop admin  stop driving it; operator takes over
    GET  /metrics, /health, /ready

Starting with a ``gid`` that was already used with the same spec answers 200 with the
transaction as it is (a safe repeat); with another spec, 409 ``gid_already_used``.
Errors are ``application/problem+json`` with a stable ``code`` (``ledger.api.problems``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any, Final

import uvicorn
from fastapi import Depends, FastAPI, Path, Query
from fastapi.exceptions import RequestValidationError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ledger.api.auth import ApiKey, KeyStore, scope_allows
from ledger.api.problems import (
    ApiProblem,
    JsonResponse,
    handle_http,
    handle_problem,
    handle_validation,
    problem_response,
)
from ledger.api.security import bearer_key
from ledger.config import Settings
from ledger.sagas.coordinator import (
    Coordinator,
    CoordinatorConfig,
    GidConflict,
    NotFound,
    Overloaded,
    TransactionAlreadyFinished,
)
from ledger.sagas.journal import JournalFailed
from ledger.sagas.runtime import RuntimeConfig
from ledger.sagas.specs import ID_PATTERN, SagaSpec, TccSpec
from ledger.sagas.state import FINAL_STATUSES, UNFINISHED_STATUSES, Transaction, view

__all__ = ["CoordinatorContext", "coordinator_config", "create_app", "serve_coordinator"]

_log = logging.getLogger(__name__)
LIST_LIMIT_MAX: Final = 1000


Wait = Annotated[bool, Query(description="wait for the final state (up to wait_timeout_s)")]
WaitTimeout = Annotated[float | None, Query(gt=0, le=3600)]
GidPath = Annotated[str, Path(min_length=1, max_length=128, pattern=ID_PATTERN)]


class ForceStopRequest(BaseModel):
    """Why the operator stops the transaction (kept in its history)."""

    model_config = ConfigDict(extra="forbid")
    reason: str = Field(default="", max_length=400)


@dataclass
class CoordinatorContext:
    """What the app needs; ``open_coordinator`` runs inside the server's event loop."""

    open_coordinator: Callable[[], Awaitable[Coordinator]]
    keys: KeyStore
    wait_max_s: float = 60.0
    coordinator: Coordinator | None = None
    on_shutdown: list[Callable[[], None]] = field(default_factory=list)
    """Run last at shutdown, inside the server: uvicorn re-raises SIGTERM after its
    shutdown, so code after ``uvicorn.run`` may never run."""


def coordinator_config(settings: Settings, database_url: str) -> CoordinatorConfig:
    wal_dir = settings.coordinator_wal_dir or settings.wal_dir / settings.coordinator_book_id
    return CoordinatorConfig(
        database_url=database_url,
        wal_dir=wal_dir,
        book_id=settings.coordinator_book_id,
        wal_segment_size_bytes=settings.wal_segment_size_bytes,
        postgres_retry_max_ms=settings.postgres_retry_max_ms,
        runtime=RuntimeConfig(
            call_timeout_s=settings.coordinator_call_timeout_ms / 1000,
            retry_base_ms=settings.coordinator_retry_base_ms,
            retry_max_ms=settings.coordinator_retry_max_ms,
            alert_after_attempts=settings.coordinator_alert_after_attempts,
            retries_per_s_max=settings.coordinator_retries_per_s_max,
            tcc_timeout_s=settings.coordinator_tcc_timeout_s,
            batch_calls_max=settings.coordinator_batch_calls_max,
            batch_in_flight_max=settings.coordinator_batch_in_flight_max,
        ),
        in_flight_max=settings.coordinator_in_flight_max,
        connections_max=settings.coordinator_connections_max,
    )


def _problem_responses() -> dict[int | str, dict[str, Any]]:
    return {
        401: {"description": "missing or invalid API key (problem+json)"},
        403: {"description": "key lacks the scope (problem+json)"},
        422: {"description": "request does not match the schema (problem+json)"},
        503: {"description": "overloaded or not ready; retry (problem+json)"},
    }


def create_app(ctx: CoordinatorContext) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if ctx.coordinator is None:
            ctx.coordinator = await ctx.open_coordinator()
        try:
            yield
        finally:
            if ctx.coordinator is not None:
                await ctx.coordinator.close()
            for close in ctx.on_shutdown:
                await asyncio.to_thread(close)

    app = CoordinatorApi(
        title="eventledger coordinator",
        version="0.1.0",
        description="TCC transactions and sagas over HTTP participants, durably recorded.",
        lifespan=lifespan,
    )
    app.add_exception_handler(ApiProblem, handle_problem)
    app.add_exception_handler(RequestValidationError, handle_validation)
    app.add_exception_handler(StarletteHTTPException, handle_http)
    errors = _problem_responses()

    def coordinator() -> Coordinator:
        c = ctx.coordinator
        if c is None or not c.ready:
            raise ApiProblem(
                503, "unavailable", "coordinator is not ready", headers={"Retry-After": "1"}
            )
        return c

    def require(scope: str) -> Callable[..., Awaitable[ApiKey]]:
        return bearer_key(ctx.keys, scope)

    async def started(
        kind: str, spec: TccSpec | SagaSpec, wait: bool, wait_timeout_s: float | None
    ) -> Response:
        c = coordinator()
        try:
            if isinstance(spec, TccSpec):
                txn, created = await c.start_tcc(spec)
            else:
                txn, created = await c.start_saga(spec)
        except GidConflict as exc:
            raise ApiProblem(409, "gid_already_used", str(exc)) from exc
        except Overloaded as exc:
            raise ApiProblem(503, "overloaded", str(exc), headers={"Retry-After": "1"}) from exc
        except JournalFailed as exc:
            raise ApiProblem(503, "unavailable", str(exc), headers={"Retry-After": "1"}) from exc
        if wait:
            await c.wait(txn.gid, min(wait_timeout_s or ctx.wait_max_s, ctx.wait_max_s))
        status = 202
        if not created:
            status = 200
        elif txn.finished:
            status = 201
        return JsonResponse(
            view(txn),
            status_code=status,
            headers={"Location": f"/v1/{'tcc' if kind == 'tcc' else 'sagas'}/{txn.gid}"},
        )

    @app.post(
        "/v1/tcc",
        status_code=202,
        responses={409: {"description": "gid already used"}, **errors},
        dependencies=[Depends(require("write"))],
    )
    async def start_tcc(
        spec: TccSpec, wait: Wait = False, wait_timeout_s: WaitTimeout = None
    ) -> Response:
        return await started("tcc", spec, wait, wait_timeout_s)

    @app.post(
        "/v1/sagas",
        status_code=202,
        responses={409: {"description": "gid already used"}, **errors},
        dependencies=[Depends(require("write"))],
    )
    async def start_saga(
        spec: SagaSpec, wait: Wait = False, wait_timeout_s: WaitTimeout = None
    ) -> Response:
        return await started("saga", spec, wait, wait_timeout_s)

    async def one(gid: str, kind: str | None) -> Response:
        try:
            txn, history = await coordinator().get(gid)
        except NotFound as exc:
            raise ApiProblem(404, "transaction_not_found", str(exc)) from exc
        if kind is not None and txn.kind != kind:
            raise ApiProblem(404, "transaction_not_found", f"no {kind} transaction {gid!r}")
        return JsonResponse(view(txn, history))

    @app.get("/v1/tcc/{gid}", responses=errors, dependencies=[Depends(require("read"))])
    async def get_tcc(gid: GidPath) -> Response:
        return await one(gid, "tcc")

    @app.get("/v1/sagas/{gid}", responses=errors, dependencies=[Depends(require("read"))])
    async def get_saga(gid: GidPath) -> Response:
        return await one(gid, "saga")

    @app.get("/v1/transactions/{gid}", responses=errors, dependencies=[Depends(require("read"))])
    async def get_transaction(gid: GidPath) -> Response:
        return await one(gid, None)

    @app.get("/v1/transactions", responses=errors, dependencies=[Depends(require("read"))])
    async def list_transactions(
        status: Annotated[str, Query()] = "unfinished",
        limit: Annotated[int, Query(ge=1, le=LIST_LIMIT_MAX)] = 100,
    ) -> Response:
        if status in FINAL_STATUSES:
            raise ApiProblem(
                422,
                "status_not_listable",
                f"only unfinished transactions are listed (status=unfinished or one of "
                f"{', '.join(UNFINISHED_STATUSES)}); read a finished one by its gid",
            )
        if status != "unfinished" and status not in UNFINISHED_STATUSES:
            raise ApiProblem(422, "invalid_status", f"unknown status {status!r}")
        c = coordinator()
        txns = c.unfinished(None if status == "unfinished" else status, limit)
        return JsonResponse({"transactions": [view(t) for t in txns], "count": len(c.live)})

    admin_key = Depends(require("admin"))

    async def admin(
        gid: str, action: Callable[[Coordinator], Awaitable[Transaction]]
    ) -> Transaction:
        c = coordinator()
        try:
            return await action(c)
        except TransactionAlreadyFinished as exc:
            try:
                await c.get(gid)
            except NotFound as missing:
                raise ApiProblem(404, "transaction_not_found", str(missing)) from missing
            raise ApiProblem(409, "transaction_finished", str(exc)) from exc

    @app.post(
        "/v1/transactions/{gid}/retry",
        status_code=202,
        responses={409: {"description": "already finished"}, **errors},
    )
    async def retry_now(gid: GidPath, key: ApiKey = admin_key) -> Response:
        txn = await admin(gid, lambda c: c.retry_now(gid, f"key {key.key_id}"))
        return JsonResponse(view(txn), status_code=202)

    @app.post(
        "/v1/transactions/{gid}/force-stop",
        responses={409: {"description": "already finished"}, **errors},
    )
    async def force_stop(
        gid: GidPath,
        key: ApiKey = admin_key,
        body: ForceStopRequest | None = None,
    ) -> Response:
        reason = (body or ForceStopRequest()).reason
        txn = await admin(gid, lambda c: c.force_stop(gid, f"key {key.key_id}", reason))
        return JsonResponse(view(txn))

    @app.get("/health")
    async def health() -> Response:
        return JsonResponse({"status": "ok"})

    @app.get("/ready")
    async def ready() -> Response:
        c = ctx.coordinator
        if c is None or not c.ready:
            failure = c.journal.failure if c is not None else None
            detail = "starting" if c is None else f"not ready: {failure or 'closing'}"
            return JsonResponse({"status": "unavailable", "detail": detail}, status_code=503)
        return JsonResponse(
            {"status": "ready", "unfinished": len(c.live), "position": c.journal.committed_position}
        )

    @app.get("/metrics")
    async def metrics() -> Response:
        c = ctx.coordinator
        if c is None:
            return Response(b"", media_type=CONTENT_TYPE_LATEST)
        c.update_gauges()
        return Response(generate_latest(c.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.fast = FastStart(functools.partial(FastAPI.__call__, app), started, ctx.keys)
    return app


class CoordinatorApi(FastAPI):
    """The FastAPI app with :class:`FastStart` in front of it: the starts' common case is
    answered before FastAPI's own stack (error, telemetry and body-limit middleware,
    routing) is entered, which costs about as much CPU again as the answer."""

    fast: FastStart | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        fast = self.fast
        if (
            fast is not None
            and scope["type"] == "http"
            and scope["method"] == "POST"
            and scope.get("path") in _STARTS
        ):
            await fast(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


class FastStart:
    """The hot path of ``POST /v1/tcc`` and ``POST /v1/sagas`` as pure ASGI.

    FastAPI's request machinery (dependency solving, parameter validation, its error,
    telemetry and body-limit middleware) costs about as much CPU as running the
    transaction itself, so :class:`CoordinatorApi` calls this before entering it. A
    request whose key verifies with write scope (from the verification cache, or one
    look-up shared by every request with that key), whose query string is plain and
    whose body validates is answered here by the same ``started`` function the routes
    use; anything else (no, unknown or insufficient key, bad input) is handed on to
    FastAPI with its body replayed, so every error keeps its problem document. Bodies
    over ``FAST_BODY_BYTES_MAX`` are refused (413) before they are read further; an
    unexpected error is a plain 500, as Starlette's error middleware sends it.
    """

    def __init__(
        self,
        app: ASGIApp,
        started: Callable[[str, TccSpec | SagaSpec, bool, float | None], Awaitable[Response]],
        keys: KeyStore,
    ) -> None:
        self.app = app
        self.started = started
        self.keys = keys
        self._verifying: dict[str, asyncio.Future[ApiKey | None]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path")
        if scope["type"] != "http" or scope["method"] != "POST" or path not in _STARTS:
            await self.app(scope, receive, send)
            return
        body, more = await _read_body(receive, FAST_BODY_BYTES_MAX)
        if more:
            detail = f"request body exceeds {FAST_BODY_BYTES_MAX} bytes"
            await problem_response(ApiProblem(413, "request_too_large", detail))(
                scope, receive, send
            )
            return
        spec: TccSpec | SagaSpec | None = None
        params = _plain_query(scope.get("query_string", b""))
        if not more and params is not None and await self._authorized(scope):
            model = TccSpec if path == "/v1/tcc" else SagaSpec
            with contextlib.suppress(ValidationError):
                spec = model.model_validate_json(body)
        if spec is None or params is None:
            await self.app(scope, _replay(body, more, receive), send)
            return
        wait, timeout_s = params
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            try:
                response = await self.started(_STARTS[path], spec, wait, timeout_s)
            except ApiProblem as problem:
                response = problem_response(problem)
            await response(scope, receive, tracked)
        except Exception:
            # What Starlette's error middleware does in front of FastAPI: a plain 500
            # if nothing was sent yet, and the error goes on to the server's log.
            if not started:
                await PlainTextResponse("Internal Server Error", 500)(scope, receive, send)
            raise

    async def _authorized(self, scope: Scope) -> bool:
        """The write check of the routes' key dependency; a key not verified within the
        cache's TTL is verified once for all the requests that carry it meanwhile (they
        would otherwise each take FastAPI's path and query PostgreSQL)."""
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                text = value.decode("latin-1")
                if not text.lower().startswith("bearer "):
                    return False
                token = text[7:].strip()
                known, key = self.keys.cached(token)
                if not known:
                    try:
                        key = await self._verify(token)
                    except Exception:
                        return False  # FastAPI's path answers (and reports) it
                return key is not None and scope_allows(key.scope, "write")
        return False

    async def _verify(self, token: str) -> ApiKey | None:
        pending = self._verifying.get(token)
        if pending is None:
            pending = asyncio.ensure_future(asyncio.to_thread(self.keys.verify, token))
            self._verifying[token] = pending
            pending.add_done_callback(lambda _: self._verifying.pop(token, None))
        return await asyncio.shield(pending)


_STARTS: Final = {"/v1/tcc": "tcc", "/v1/sagas": "saga"}
FAST_BODY_BYTES_MAX: Final = 1 << 20


async def _read_body(receive: Receive, limit: int) -> tuple[bytes, bool]:
    """The body, up to ``limit`` bytes; (bytes read, True if more is left unread)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        if not message.get("more_body"):
            return b"".join(chunks), False
        if size > limit:
            return b"".join(chunks), True


def _replay(body: bytes, more: bool, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": more}
        return await receive()

    return replay


def _plain_query(query: bytes) -> tuple[bool, float | None] | None:
    """``wait`` and ``wait_timeout_s`` from a simple query string, or None (let FastAPI
    validate it) for anything else."""
    wait, timeout_s = False, None
    if not query:
        return wait, timeout_s
    for part in query.decode("latin-1").split("&"):
        name, _, value = part.partition("=")
        if name == "wait" and value in ("true", "false", "1", "0"):
            wait = value in ("true", "1")
        elif name == "wait_timeout_s":
            try:
                timeout_s = float(value)
            except ValueError:
                return None
            if not 0 < timeout_s <= 3600:
                return None
        else:
            return None
    return wait, timeout_s


def serve_coordinator(settings: Settings, host: str | None = None, port: int | None = None) -> int:
    """Run the coordinator process (uvicorn, one worker: one writer of its book)."""
    from ledger.adapters.migrate import upgrade
    from ledger.api.server import uvicorn_options
    from ledger.bootstrap import tune_gc
    from ledger.devservices import start_embedded_postgres
    from ledger.logs import configure_logging

    configure_logging(settings.log_level, settings.log_json)
    url = settings.coordinator_database_url or settings.database_url
    pg = None
    if not url:
        pg = start_embedded_postgres()
        url = pg.url
        upgrade(url)
        _log.warning("no LEDGER_DATABASE_URL: using embedded PostgreSQL at %s (dev only)", url)
        key, token = KeyStore(url).create("dev", "admin")
        print(f"dev admin key {key.key_id}: {token}", flush=True)
    config = coordinator_config(settings, url)
    keys = KeyStore(url)

    async def open_coordinator() -> Coordinator:
        coordinator = await Coordinator.open(config)
        # As in the node: with the default thresholds the collector re-traverses the
        # whole heap (the app, its models, every live transaction) every few hundred
        # transactions, for garbage that is almost never cyclic.
        tune_gc()
        return coordinator

    ctx = CoordinatorContext(
        open_coordinator=open_coordinator,
        keys=keys,
        wait_max_s=settings.coordinator_wait_max_s,
    )
    ctx.on_shutdown.append(keys.close)
    if pg is not None:
        ctx.on_shutdown.append(pg.close)
    uvicorn.run(
        create_app(ctx),
        host=host or settings.http_host,
        port=port if port is not None else settings.coordinator_http_port,
        log_level=settings.log_level.lower(),
        **uvicorn_options(),  # as ledger serve: one write per response, no access log
    )
    return 0
