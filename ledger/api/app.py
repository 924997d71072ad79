"""The HTTP/JSON command API (FastAPI, orjson), ``/v1``.

Batches (``POST /v1/accounts``, ``POST /v1/transfers``) answer 200 with one result per item,
in order: ``created``, ``exists`` or ``rejected`` with a stable ``code``. Errors of the
request itself are ``application/problem+json``: 401/403 (auth), 409 (idempotency key
reused), 413 (too large), 422 (schema, with where), 503 + ``Retry-After`` (overloaded or
PostgreSQL away; nothing of the request was acknowledged, retry with the same ids).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal
from uuid import UUID

import orjson
from fastapi import Depends, FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter
from starlette.datastructures import URL
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ledger import domain
from ledger.api.auth import ApiKey, KeyStore
from ledger.api.fast import Call, Endpoint, FastPath, new_request_id
from ledger.api.idempotency import KEY_LENGTH_MAX, IdempotencyStore, body_digest
from ledger.api.limits import BATCH_ITEMS_MAX
from ledger.api.metrics import ApiMetrics
from ledger.api.problems import (
    ApiProblem,
    JsonResponse,
    handle_http,
    handle_problem,
    handle_validation,
    problem_response,
)
from ledger.api.security import bearer_key
from ledger.api.tcc import (
    IDENT_PATTERN,
    TccBatchRequest,
    TccOperations,
    TccTryRequest,
    register_tcc_routes,
)
from ledger.application.errors import NodeStopped, Overloaded, Retriable
from ledger.application.node import LedgerNode
from ledger.logs import request_id

__all__ = ["BATCH_ITEMS_MAX", "ApiContext", "LedgerApi", "create_app"]

POST_VOID_NAMESPACE = uuid.UUID("4f3c7a52-7d0e-4c56-9c55-1f0d8e0a7b11")


@dataclass
class ApiContext:
    """What the app needs; ``open_node`` runs inside the server's event loop."""

    open_node: Callable[[], Awaitable[LedgerNode]]
    keys: KeyStore
    idempotency: IdempotencyStore
    body_size_max_bytes: int = 8 * 1024 * 1024
    metrics: ApiMetrics = field(default_factory=ApiMetrics)
    node: LedgerNode | None = None
    close_node_on_shutdown: bool = True
    read_models: Any = None
    fast_path: bool = True
    """Answer the hot endpoints' common case in pure ASGI (``ledger.api.fast``); off,
    FastAPI answers everything (the tests compare the two)."""
    on_shutdown: list[Callable[[], None]] = field(default_factory=list)
    """Run last at shutdown, inside the server: uvicorn re-raises SIGTERM after its
    shutdown, so code after ``uvicorn.run`` (or atexit) may never run."""


# -- wire models ------------------------------------------------------------------------


class AccountsRequest(BaseModel):
    """A batch of accounts to open (linked chains allowed)."""

    model_config = ConfigDict(extra="forbid")
    accounts: list[domain.OpenAccount] = Field(min_length=1, max_length=BATCH_ITEMS_MAX)


class TransfersRequest(BaseModel):
    """A batch of transfers (plain, pending, post, void; linked chains allowed)."""

    model_config = ConfigDict(extra="forbid")
    transfers: list[domain.CreateTransfer] = Field(min_length=1, max_length=BATCH_ITEMS_MAX)


class ResolvePendingRequest(BaseModel):
    """Post or void a pending transfer. ``id`` defaults to one derived from the pending id,
    so repeating the call is idempotent; ``amount_minor`` 0 posts the full amount."""

    model_config = ConfigDict(extra="forbid")
    id: UUID | None = None
    amount_minor: int = Field(default=0, ge=0, le=domain.AMOUNT_MAX)
    metadata: dict[str, str] = Field(default_factory=dict)


class ItemResult(BaseModel):
    index: int
    id: UUID | None
    status: Literal["created", "exists", "rejected"]
    code: str | None = None
    detail: str | None = None


class BatchResponse(BaseModel):
    results: list[ItemResult]


class Balances(BaseModel):
    debits_pending: int
    debits_posted: int
    credits_pending: int
    credits_posted: int
    available: int = Field(description="credits_posted - debits_posted - debits_pending")


class AccountView(BaseModel):
    id: UUID
    ledger: str
    scale: int
    code: int
    flags: dict[str, bool]
    metadata: dict[str, str]
    closed: bool
    timestamp_us: int
    balances: Balances


class Entry(BaseModel):
    """One movement of an account, with its balances after it (read model)."""

    position: int
    transfer_id: UUID
    pending_id: UUID | None
    type: str
    side: Literal["debit", "credit"]
    amount_minor: int
    ledger: str
    timestamp_us: int
    debits_pending: int
    debits_posted: int
    credits_pending: int
    credits_posted: int
    available: int


class TransferView(BaseModel):
    id: UUID
    debit_account_id: UUID
    credit_account_id: UUID
    amount_minor: int
    ledger: str
    code: int
    flags: dict[str, bool]
    pending_id: UUID | None
    timeout_s: int
    expires_at_us: int | None
    pending_status: str
    amount_posted_minor: int
    metadata: dict[str, str]
    timestamp_us: int


class Health(BaseModel):
    status: str
    position: int | None = None
    queue_depth: int | None = None
    detail: str | None = None


IdemKey = Annotated[str | None, Header(alias="Idempotency-Key")]

PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "missing or invalid API key (problem+json)"},
    403: {"description": "key lacks the scope (problem+json)"},
    409: {"description": "Idempotency-Key reused with another body (problem+json)"},
    413: {"description": "request too large (problem+json)"},
    422: {"description": "request does not match the schema (problem+json)"},
    503: {"description": "overloaded or storage unavailable; retry (problem+json)"},
}


# -- views ------------------------------------------------------------------------------


def account_view(a: domain.Account) -> AccountView:
    return AccountView(
        id=a.id,
        ledger=a.ledger,
        scale=a.scale,
        code=a.code,
        flags={
            "debits_must_not_exceed_credits": a.flags.debits_must_not_exceed_credits,
            "credits_must_not_exceed_debits": a.flags.credits_must_not_exceed_debits,
        },
        metadata=dict(a.metadata),
        closed=a.closed,
        timestamp_us=a.timestamp_us,
        balances=Balances(
            debits_pending=a.debits_pending,
            debits_posted=a.debits_posted,
            credits_pending=a.credits_pending,
            credits_posted=a.credits_posted,
            available=a.credits_posted - a.debits_posted - a.debits_pending,
        ),
    )


def transfer_view(t: domain.Transfer) -> TransferView:
    f = t.flags
    return TransferView(
        id=t.id,
        debit_account_id=t.debit_account_id,
        credit_account_id=t.credit_account_id,
        amount_minor=t.amount_minor,
        ledger=t.ledger,
        code=t.code,
        flags={
            "linked": f.linked,
            "pending": f.pending,
            "post_pending_transfer": f.post_pending_transfer,
            "void_pending_transfer": f.void_pending_transfer,
        },
        pending_id=t.pending_id,
        timeout_s=t.timeout_s,
        expires_at_us=t.expires_at_us,
        pending_status=str(t.pending_status),
        amount_posted_minor=t.amount_posted_minor,
        metadata=dict(t.metadata),
        timestamp_us=t.timestamp_us,
    )


# -- middleware -------------------------------------------------------------------------


class EdgeMiddleware:
    """Pure ASGI middleware (no task group per request, unlike ``@app.middleware``): a
    request id in the logging context and the ``x-request-id`` header, request metrics,
    and 413 (problem+json) for bodies over the limit, declared or streamed."""

    def __init__(self, app: ASGIApp, limit_bytes: int, metrics: ApiMetrics) -> None:
        self.app = app
        self.limit = limit_bytes
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = ""
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                await self._reject(scope, receive, send)
                return
            if name == b"x-request-id":
                rid = value.decode("latin-1")[:64]
        rid = rid or new_request_id()
        token = request_id.set(rid)
        t0 = time.perf_counter()
        status = [500]
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise StarletteHTTPException(413, f"request body exceeds {self.limit} bytes")
            return message

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, limited, send_with_id)
        finally:
            request_id.reset(token)
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            self.metrics.observe_request(
                scope.get("method", ""), path, status[0], time.perf_counter() - t0
            )

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = problem_response(
            ApiProblem(413, "request_too_large", f"request body exceeds {self.limit} bytes")
        )
        await response(scope, receive, send)


# -- the app ----------------------------------------------------------------------------


class LedgerApi(FastAPI):
    """The FastAPI app with :class:`~ledger.api.fast.FastPath` in front of it: the hot
    endpoints' common case is answered before FastAPI's own stack is entered."""

    fast: FastPath | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        fast = self.fast
        if fast is not None and scope["type"] == "http":
            hit = fast.match(scope)
            if hit is not None:
                await fast.serve(hit[0], hit[1], scope, receive, send, super().__call__)
                return
        await super().__call__(scope, receive, send)


def create_app(ctx: ApiContext) -> LedgerApi:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if ctx.node is None:
            ctx.node = await ctx.open_node()
        _wire_node_metrics(ctx)
        try:
            yield
        finally:
            if ctx.close_node_on_shutdown and ctx.node is not None:
                await ctx.node.close()
            if ctx.read_models is not None:
                await ctx.read_models.close()
            for close in ctx.on_shutdown:
                await asyncio.to_thread(close)

    app = LedgerApi(
        title="eventledger",
        version="0.1.0",
        description="Event-sourced double-entry ledger: accounts, transfers, pending transfers.",
        lifespan=lifespan,
    )
    app.add_exception_handler(ApiProblem, handle_problem)
    app.add_exception_handler(RequestValidationError, handle_validation)
    app.add_exception_handler(StarletteHTTPException, handle_http)
    app.add_middleware(EdgeMiddleware, limit_bytes=ctx.body_size_max_bytes, metrics=ctx.metrics)

    handlers = _Handlers(ctx)
    tcc = TccOperations(handlers.submit)
    _command_routes(app, handlers)
    _read_routes(app, handlers)
    _operation_routes(app, handlers)
    register_tcc_routes(app, tcc, handlers.require("write"))
    if ctx.fast_path:
        app.fast = _fast_path(ctx, handlers, tcc)
    return app


def _fast_path(ctx: ApiContext, h: _Handlers, tcc: TccOperations) -> FastPath:
    """The hot endpoints, each running what its route runs."""

    async def transfers(body: TransfersRequest, _: tuple[str, ...], call: Call) -> Response:
        return await h.idempotent_call(call, lambda: h.create_transfers(body))

    async def accounts(body: AccountsRequest, _: tuple[str, ...], call: Call) -> Response:
        return await h.idempotent_call(call, lambda: h.open_accounts(body))

    async def tcc_try(body: TccTryRequest, params: tuple[str, ...], _: Call) -> Response:
        return await tcc.try_(params[0], params[1], body)

    async def tcc_confirm(_: None, params: tuple[str, ...], __: Call) -> Response:
        return await tcc.confirm(params[0], params[1])

    async def tcc_cancel(_: None, params: tuple[str, ...], __: Call) -> Response:
        return await tcc.cancel(params[0], params[1])

    async def tcc_batch(body: TccBatchRequest, _: tuple[str, ...], __: Call) -> Response:
        return await tcc.batch(body)

    def resolve(kind: str) -> Endpoint:
        async def run(
            body: ResolvePendingRequest | None, params: tuple[str, ...], call: Call
        ) -> Response:
            pending_id = _UUID.validate_python(params[0])  # match() checked that it parses
            return await h.idempotent_call(call, lambda: h.resolve_pending(pending_id, body, kind))

        route = f"/v1/transfers/{{transfer_id}}/{kind}"
        return Endpoint(route, _RESOLVE_BODY, run, optional_body=True)

    tcc_route = "/v1/tcc/{gid}/{branch_id}/"
    return FastPath(
        limit_bytes=ctx.body_size_max_bytes,
        metrics=ctx.metrics,
        authorize=h.require("write"),
        exact={
            "/v1/transfers": Endpoint("/v1/transfers", TypeAdapter(TransfersRequest), transfers),
            "/v1/accounts": Endpoint("/v1/accounts", TypeAdapter(AccountsRequest), accounts),
            "/v1/tcc/batch": Endpoint("/v1/tcc/batch", TypeAdapter(TccBatchRequest), tcc_batch),
        },
        tcc={
            "try": Endpoint(tcc_route + "try", TypeAdapter(TccTryRequest), tcc_try),
            "confirm": Endpoint(tcc_route + "confirm", None, tcc_confirm),
            "cancel": Endpoint(tcc_route + "cancel", None, tcc_cancel),
        },
        ident_pattern=IDENT_PATTERN,
        transfer_actions={"post": resolve("post"), "void": resolve("void")},
        transfer_id=_UUID,
    )


_UUID: TypeAdapter[UUID] = TypeAdapter(UUID)
_RESOLVE_BODY: TypeAdapter[ResolvePendingRequest | None] = TypeAdapter(ResolvePendingRequest | None)

Run = Callable[[], Awaitable[tuple[int, Any]]]


class _Handlers:
    """What the routes share: the node, read models, auth, submission, idempotency."""

    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    def node(self) -> LedgerNode:
        if self.ctx.node is None or not self.ctx.node.ready:
            detail = "ledger node is not ready"
            if self.ctx.node is not None and self.ctx.node.failure is not None:
                detail = f"ledger node stopped: {self.ctx.node.failure!r}"
            raise ApiProblem(503, "unavailable", detail, headers={"Retry-After": "1"})
        return self.ctx.node

    def read_models(self) -> Any:
        if self.ctx.read_models is None:
            raise ApiProblem(
                501,
                "read_model_not_available",
                "balances as of a time and entries are served by the projections "
                "(ledger relay + ledger project); they are not enabled on this server",
            )
        return self.ctx.read_models

    def require(self, scope: str) -> Callable[..., Awaitable[ApiKey]]:
        return bearer_key(self.ctx.keys, scope)

    async def submit(self, commands: list[domain.Command]) -> list[domain.CommandOutcome]:
        try:
            outcomes = await self.node().submit(commands)
        except Overloaded as exc:
            raise ApiProblem(
                503, "overloaded", str(exc), headers={"Retry-After": str(int(exc.retry_after_s))}
            ) from exc
        except Retriable as exc:
            raise ApiProblem(503, "unavailable", str(exc), headers={"Retry-After": "1"}) from exc
        except NodeStopped as exc:
            raise ApiProblem(503, "unavailable", str(exc), headers={"Retry-After": "1"}) from exc
        self.ctx.metrics.count_outcomes(outcomes)
        return outcomes

    async def open_accounts(self, body: AccountsRequest) -> tuple[int, Any]:
        outcomes = await self.submit(list(body.accounts))
        return 200, self.results([a.id for a in body.accounts], outcomes)

    async def create_transfers(self, body: TransfersRequest) -> tuple[int, Any]:
        outcomes = await self.submit(list(body.transfers))
        return 200, self.results([t.id for t in body.transfers], outcomes)

    async def resolve_pending(
        self, pending_id: UUID, body: ResolvePendingRequest | None, kind: str
    ) -> tuple[int, Any]:
        """``POST /v1/transfers/{id}/post`` or ``/void``: the one item's result."""
        body = body or ResolvePendingRequest()
        transfer_id = body.id or uuid.uuid5(POST_VOID_NAMESPACE, f"{kind}:{pending_id}")
        flags = domain.TransferFlags(
            post_pending_transfer=kind == "post", void_pending_transfer=kind == "void"
        )
        command = domain.CreateTransfer(
            id=transfer_id,
            pending_id=pending_id,
            amount_minor=body.amount_minor,
            flags=flags,
            metadata=body.metadata,
        )
        outcomes = await self.submit([command])
        return 200, self.results([transfer_id], outcomes)["results"][0]

    async def idempotent(self, request: Request, key: str | None, run: Run) -> Response:
        if key is None:
            return _json(*await run())
        body = await request.body()
        return await self._idempotent(key, lambda: (request.method, request.url.path), body, run)

    async def idempotent_call(self, call: Call, run: Run) -> Response:
        """:meth:`idempotent` for the fast path (same checks, same digest)."""
        if call.idempotency_key is None:
            return _json(*await run())
        scope = call.scope
        return await self._idempotent(
            call.idempotency_key, lambda: (scope["method"], URL(scope=scope).path), call.body, run
        )

    async def _idempotent(
        self, key: str, target: Callable[[], tuple[str, str]], body: bytes, run: Run
    ) -> Response:
        if not key or len(key) > KEY_LENGTH_MAX:
            raise ApiProblem(
                422, "invalid_idempotency_key", f"Idempotency-Key must be 1..{KEY_LENGTH_MAX} chars"
            )
        digest = body_digest(*target(), body)
        stored = await asyncio.to_thread(self.ctx.idempotency.get, key)
        if stored is not None:
            if stored.digest != digest:
                raise ApiProblem(
                    409,
                    "idempotency_key_reused",
                    f"Idempotency-Key {key!r} was used with a different request",
                )
            replayed = JsonResponse(stored.body, status_code=stored.status_code)
            replayed.headers["idempotent-replayed"] = "true"
            return replayed
        status, content = await run()
        response = _json(status, content)
        # Stored as plain JSON values (the ids as strings), exactly what was sent.
        stored_body = orjson.loads(response.body)
        await asyncio.to_thread(self.ctx.idempotency.put, key, digest, status, stored_body)
        return response

    @staticmethod
    def results(ids: list[UUID | None], outcomes: list[domain.CommandOutcome]) -> dict[str, Any]:
        """One result per item. Ids stay ``UUID`` objects: orjson writes them in their
        canonical text (as ``str`` would), without a Python call per item."""
        out = [
            {"index": i, "id": item_id, "status": o.status}
            if o.code is None
            else {
                "index": i,
                "id": item_id,
                "status": o.status,
                "code": str(o.code),
                "detail": o.detail,
            }
            for i, (item_id, o) in enumerate(zip(ids, outcomes, strict=True))
        ]
        return {"results": out}


def _json(status: int, content: Any) -> Response:
    return JsonResponse(content, status_code=status)


def _command_routes(app: FastAPI, h: _Handlers) -> None:
    """POST endpoints: batches of accounts and transfers, post/void of holds."""
    require, idempotent = h.require, h.idempotent

    @app.post(
        "/v1/accounts",
        response_model=BatchResponse,
        responses=PROBLEM_RESPONSES,
        dependencies=[Depends(require("write"))],
    )
    async def open_accounts(
        body: AccountsRequest, request: Request, idempotency_key: IdemKey = None
    ) -> Response:
        return await idempotent(request, idempotency_key, lambda: h.open_accounts(body))

    @app.post(
        "/v1/transfers",
        response_model=BatchResponse,
        responses=PROBLEM_RESPONSES,
        dependencies=[Depends(require("write"))],
    )
    async def create_transfers(
        body: TransfersRequest, request: Request, idempotency_key: IdemKey = None
    ) -> Response:
        return await idempotent(request, idempotency_key, lambda: h.create_transfers(body))

    for kind in ("post", "void"):
        _resolve_route(app, kind, h.resolve_pending, idempotent, require("write"))


def _resolve_route(
    app: FastAPI,
    kind: str,
    resolve: Callable[[UUID, ResolvePendingRequest | None, str], Awaitable[tuple[int, Any]]],
    idempotent: Callable[..., Awaitable[Response]],
    writer: Callable[..., Awaitable[ApiKey]],
) -> None:
    """``POST /v1/transfers/{id}/post`` or ``/void``: resolve a pending transfer."""

    async def resolve_pending(
        transfer_id: Annotated[UUID, Path()],
        request: Request,
        body: ResolvePendingRequest | None = None,
        idempotency_key: IdemKey = None,
    ) -> Response:
        return await idempotent(request, idempotency_key, lambda: resolve(transfer_id, body, kind))

    app.post(
        f"/v1/transfers/{{transfer_id}}/{kind}",
        response_model=ItemResult,
        responses=PROBLEM_RESPONSES,
        dependencies=[Depends(writer)],
        name=f"{kind}_pending",
    )(resolve_pending)


def _read_routes(app: FastAPI, h: _Handlers) -> None:
    """GET endpoints for accounts, balances, entries and transfers."""
    node, read_models, require = h.node, h.read_models, h.require

    @app.get(
        "/v1/accounts/{account_id}",
        response_model=AccountView,
        responses={404: {"description": "no such account (problem+json)"}, **PROBLEM_RESPONSES},
        dependencies=[Depends(require("read"))],
    )
    async def get_account(account_id: Annotated[UUID, Path()]) -> AccountView:
        account = await node().read_account(account_id)
        if account is None:
            raise ApiProblem(404, "account_not_found", f"no account {account_id}")
        return account_view(account)

    @app.get(
        "/v1/accounts/{account_id}/balance",
        response_model=Balances,
        responses={
            404: {"description": "no such account (then) (problem+json)"},
            501: {"description": "read models not enabled (problem+json)"},
            **PROBLEM_RESPONSES,
        },
        dependencies=[Depends(require("read"))],
    )
    async def get_balance(
        account_id: Annotated[UUID, Path()],
        as_of: Annotated[
            int | None, Query(ge=0, le=2**63 - 1, description="microseconds since the epoch")
        ] = None,
    ) -> Balances:
        if as_of is not None:
            found = await read_models().balance_as_of(account_id, as_of)
            if found is None:
                raise ApiProblem(
                    404,
                    "account_not_found",
                    f"account {account_id} did not exist at {as_of} us "
                    "(or the projections have not reached it yet)",
                )
            return Balances(**found)
        account = await node().read_account(account_id)
        if account is None:
            raise ApiProblem(404, "account_not_found", f"no account {account_id}")
        return account_view(account).balances

    @app.get(
        "/v1/accounts/{account_id}/entries",
        response_model=list[Entry],
        responses={501: {"description": "read models not enabled"}, **PROBLEM_RESPONSES},
        dependencies=[Depends(require("read"))],
    )
    async def get_entries(
        account_id: Annotated[UUID, Path()],
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        after_position: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,
    ) -> list[Entry]:
        rows = await read_models().entries(account_id, limit, after_position)
        return [Entry(**row) for row in rows]

    @app.get(
        "/v1/transfers/{transfer_id}",
        response_model=TransferView,
        responses={404: {"description": "no such transfer (problem+json)"}, **PROBLEM_RESPONSES},
        dependencies=[Depends(require("read"))],
    )
    async def get_transfer(transfer_id: Annotated[UUID, Path()]) -> TransferView:
        transfer = await node().read_transfer(transfer_id)
        if transfer is None:
            raise ApiProblem(404, "transfer_not_found", f"no transfer {transfer_id}")
        return transfer_view(transfer)


def _operation_routes(app: FastAPI, h: _Handlers) -> None:
    """Health, readiness and Prometheus metrics (no key needed)."""

    @app.get("/health", response_model=Health)
    async def health() -> Health:
        return Health(status="ok")

    @app.get("/ready", response_model=Health, responses={503: {"model": Health}})
    async def ready() -> Response:
        n = h.ctx.node
        if n is None or not n.ready:
            detail = "starting" if n is None else f"not ready: {n.failure or 'closing'}"
            return JsonResponse(
                Health(status="unavailable", detail=detail).model_dump(), status_code=503
            )
        try:
            await asyncio.wait_for(asyncio.to_thread(n.store.head), timeout=2)
        except Exception as exc:
            return JsonResponse(
                Health(status="unavailable", detail=f"PostgreSQL: {exc!r}").model_dump(),
                status_code=503,
            )
        return JsonResponse(
            Health(status="ready", position=n.position, queue_depth=n.queue_depth).model_dump()
        )

    @app.get("/metrics", response_class=Response)
    async def metrics() -> Response:
        if h.ctx.node is not None:
            h.ctx.metrics.queue_depth.set(h.ctx.node.queue_depth)
            h.ctx.metrics.position.set(h.ctx.node.position)
        return Response(generate_latest(h.ctx.metrics.registry), media_type=CONTENT_TYPE_LATEST)


def _wire_node_metrics(ctx: ApiContext) -> None:
    node = ctx.node
    if node is None:
        return
    node.metrics.observe_batch_size = ctx.metrics.batch_commands.observe
    node.recorder.observe_wal_s = ctx.metrics.wal_fsync_seconds.observe
    node.recorder.observe_store_s = ctx.metrics.store_commit_seconds.observe
