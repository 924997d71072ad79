"""The hot command endpoints as pure ASGI, in front of FastAPI.

FastAPI's request machinery (routing, dependency solving, parameter extraction, the
exception and telemetry middleware) costs several times the CPU of the command itself;
one process's event loop is the bottleneck of the API. :class:`FastPath` answers the
requests that the hot endpoints take in the common case — ``POST /v1/transfers``,
``POST /v1/accounts``, ``POST /v1/transfers/{id}/post`` and ``/void``, and the TCC
participant's ``try``, ``confirm`` and ``cancel`` — with
the same functions the FastAPI routes call, and hands everything else to FastAPI
untouched, so that there is one source of truth for every error document.

A request is answered here only when all of this holds; otherwise FastAPI gets it, with
any body already read replayed:

* the path is exactly one of the hot routes (no ``root_path``), the method is POST and
  no ``Content-Length`` is over the limit;
* for an endpoint with a body: ``Content-Type`` is plain ``application/json``, the whole
  body arrived within the limit (where the body is optional, post and void, an empty
  one is no body whatever the content type, as for FastAPI), it parses with orjson
  and it validates against the route's model as FastAPI validates it
  (``validate_python`` on the parsed value).
  orjson refuses some texts that ``json.loads`` reads (NaN, unpaired surrogates, invalid
  UTF-8, other encodings) and otherwise returns the same values, except integers beyond
  64 bits, which it returns as floats; every integer field of the hot models refuses
  those (strict, or bounded well within 64 bits), so such bodies go to FastAPI too;
* path parameters match their patterns;
* the bearer key is accepted by the same check the routes depend on.

From there on the answer is the one the route would give: the same operation, the same
``ApiProblem`` documents (idempotency key misuse, 503 overloaded), the same
``x-request-id`` header, request metrics and logging context, and the plain 500 that
Starlette's error middleware sends if an operation fails unexpectedly.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import orjson
from pydantic import TypeAdapter
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ledger.api.metrics import ApiMetrics
from ledger.api.problems import ApiProblem, problem_response
from ledger.logs import request_id

__all__ = ["Call", "Endpoint", "FastPath", "new_request_id"]

_JSON_TYPES: Final = frozenset(
    {b"application/json", b"application/json; charset=utf-8", b"application/json;charset=utf-8"}
)
_ids = random.Random()


def new_request_id() -> str:
    """16 hex digits. Request ids need to be unique, not secret: ``os.urandom`` is a
    system call that releases the interpreter lock, and getting it back while the
    node's threads run costs the event loop up to a switch interval (5 ms)."""
    return f"{_ids.getrandbits(64):016x}"


@dataclass(frozen=True, slots=True)
class Call:
    """What an operation gets besides its validated body and path parameters."""

    scope: Scope
    body: bytes
    idempotency_key: str | None


Operation = Callable[[Any, tuple[str, ...], Call], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One hot route: its path template (the metrics label), its body model (None: the
    route reads no body) and the operation its FastAPI route runs."""

    route: str
    body: TypeAdapter[Any] | None
    run: Operation
    optional_body: bool = False
    """An empty body is no body (the operation gets None), whatever its content type,
    as FastAPI treats a route whose body parameter has a default."""


class FastPath:
    """Answers the common case of the hot endpoints (see the module docstring)."""

    def __init__(
        self,
        *,
        limit_bytes: int,
        metrics: ApiMetrics,
        authorize: Callable[[str | None], Awaitable[Any]],
        exact: dict[str, Endpoint],
        tcc: dict[str, Endpoint],
        ident_pattern: str,
        transfer_actions: dict[str, Endpoint] | None = None,
        transfer_id: TypeAdapter[Any] | None = None,
    ) -> None:
        self.limit = limit_bytes
        self.metrics = metrics
        self.authorize = authorize
        self.exact = exact
        self.tcc = tcc
        self.ident = re.compile(ident_pattern.removeprefix("^").removesuffix("$"))
        self.transfer_actions = transfer_actions or {}
        self.transfer_id = transfer_id
        """Validates the ``{transfer_id}`` of ``/v1/transfers/{transfer_id}/<action>``
        as the route's path parameter is validated."""
        self.served = 0
        """Requests answered here (not handed on): lets tests see the path is taken."""

    def match(self, scope: Scope) -> tuple[Endpoint, tuple[str, ...]] | None:
        """The endpoint and path parameters for a request this path may answer."""
        if scope["method"] != "POST" or scope.get("root_path"):
            return None
        path: str = scope["path"]
        endpoint = self.exact.get(path)
        if endpoint is not None:
            return endpoint, ()
        if path.startswith("/v1/transfers/"):
            return self._match_transfer_action(path)
        if not path.startswith("/v1/tcc/"):
            return None
        parts = path.split("/")
        if len(parts) != 6:
            return None
        endpoint = self.tcc.get(parts[5])
        if endpoint is None:
            return None
        # fullmatch: the patterns are anchored with ^...$, and Python's $ would also
        # accept a trailing newline that pydantic's regex engine refuses.
        gid, branch = parts[3], parts[4]
        if self.ident.fullmatch(gid) is None or self.ident.fullmatch(branch) is None:
            return None
        return endpoint, (gid, branch)

    def _match_transfer_action(self, path: str) -> tuple[Endpoint, tuple[str, ...]] | None:
        parts = path.split("/")
        if len(parts) != 5 or self.transfer_id is None:
            return None
        endpoint = self.transfer_actions.get(parts[4])
        if endpoint is None:
            return None
        try:
            self.transfer_id.validate_python(parts[3])
        except ValueError:  # pydantic's ValidationError: FastAPI answers with its 422
            return None
        return endpoint, (parts[3],)

    async def serve(
        self,
        endpoint: Endpoint,
        params: tuple[str, ...],
        scope: Scope,
        receive: Receive,
        send: Send,
        fallback: ASGIApp,
    ) -> None:
        """Answer the request, or hand it to ``fallback`` (FastAPI) as it came."""
        authorization = content_type = idempotency_key = rid = None
        for name, raw in scope["headers"]:
            if name == b"authorization":
                if authorization is None:
                    authorization = raw.decode("latin-1")
            elif name == b"content-type":
                if content_type is None:
                    content_type = raw
            elif name == b"idempotency-key":
                if idempotency_key is None:
                    idempotency_key = raw.decode("latin-1")
            elif name == b"x-request-id":
                rid = raw  # the last one, as the edge middleware takes it
            elif name == b"content-length" and raw.isdigit() and int(raw) > self.limit:
                await fallback(scope, receive, send)
                return
        body = b""
        value: Any = None
        if endpoint.body is not None:
            json_body = content_type is not None and content_type.lower() in _JSON_TYPES
            if not json_body and not endpoint.optional_body:
                await fallback(scope, receive, send)
                return
            read = await self._read(receive)
            if isinstance(read, list):
                await fallback(scope, _replay(read, receive), send)
                return
            body = read
            if body or not endpoint.optional_body:
                if not json_body:
                    await fallback(scope, _replay([_message(body)], receive), send)
                    return
                try:
                    value = orjson.loads(body)
                except orjson.JSONDecodeError:
                    await fallback(scope, _replay([_message(body)], receive), send)
                    return
        # Any failure up to here, an unexpected one too (PostgreSQL away while a key is
        # verified), is FastAPI's to answer: it runs the same check again and answers
        # as it always does (problem document, or its error middleware's 500).
        try:
            await self.authorize(authorization)
        except Exception:
            await fallback(scope, self._again(endpoint, body, receive), send)
            return
        if endpoint.body is not None:
            try:
                value = endpoint.body.validate_python(value, from_attributes=True)
            except Exception:
                await fallback(scope, self._again(endpoint, body, receive), send)
                return
        self.served += 1
        await self._answer(endpoint, value, params, scope, body, idempotency_key, rid, send)

    async def _answer(
        self,
        endpoint: Endpoint,
        value: Any,
        params: tuple[str, ...],
        scope: Scope,
        body: bytes,
        idempotency_key: str | None,
        rid_header: bytes | None,
        send: Send,
    ) -> None:
        rid = rid_header.decode("latin-1")[:64] if rid_header else ""
        rid = rid or new_request_id()
        token = request_id.set(rid)
        t0 = time.perf_counter()
        status = 500
        started = False
        try:
            try:
                response = await endpoint.run(value, params, Call(scope, body, idempotency_key))
            except ApiProblem as problem:
                response = problem_response(problem)
            status = response.status_code
            started = True
            await send(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [*response.raw_headers, (b"x-request-id", rid.encode())],
                }
            )
            await send({"type": "http.response.body", "body": response.body})
        except Exception:
            # What Starlette's ServerErrorMiddleware does (it sits outside the edge
            # middleware, so its 500 carries no request id); the server logs the error.
            if not started:
                crash = PlainTextResponse("Internal Server Error", status_code=500)
                await send(
                    {"type": "http.response.start", "status": 500, "headers": crash.raw_headers}
                )
                await send({"type": "http.response.body", "body": crash.body})
            raise
        finally:
            request_id.reset(token)
            self.metrics.observe_request("POST", endpoint.route, status, time.perf_counter() - t0)

    @staticmethod
    def _again(endpoint: Endpoint, body: bytes, receive: Receive) -> Receive:
        """``receive`` for FastAPI once the body (if the route reads one) was read."""
        return _replay([_message(body)], receive) if endpoint.body is not None else receive

    async def _read(self, receive: Receive) -> bytes | list[Message]:
        """The whole body; or the messages received, when FastAPI should see them
        (a disconnect, or more than the limit: the edge middleware answers 413)."""
        message = await receive()
        if message["type"] == "http.request" and not message.get("more_body"):
            body: bytes = message.get("body", b"")
            if len(body) <= self.limit:
                return body
            return [message]
        messages = [message]
        size = 0
        while True:
            if message["type"] != "http.request":
                return messages
            size += len(message.get("body", b""))
            if size > self.limit:
                return messages
            if not message.get("more_body"):
                return b"".join(m.get("body", b"") for m in messages)
            message = await receive()
            messages.append(message)


def _message(body: bytes) -> Message:
    return {"type": "http.request", "body": body, "more_body": False}


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """``receive`` with ``messages`` (already received) in front."""
    pending = list(messages)

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay
