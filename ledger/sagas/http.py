"""How the coordinator sends its POSTs: a small keep-alive HTTP/1.1 client, or httpx.

Why a client of our own: every TCC transaction costs four participant calls, and httpx
(with httpcore's connection pool) spends about a millisecond of CPU per request on this
kind of machine, which alone would cap the coordinator near 200 transactions/s. The
coordinator's calls are all alike (``POST``, small JSON body, plain ``http://`` on a
private network, one response with ``Content-Length`` or chunked), so :class:`FastPoster`
does only that, with ``httptools`` (the C parser of ``uvicorn[standard]``) for responses,
and sends everything else (``https://``) through httpx.

Failure semantics are the same for both: :class:`CallTimeout` when no whole answer came
within the timeout, :class:`CallFailed` when there was no answer (refused, reset, closed,
malformed), so the protocol layer can classify both as transient. A connection is reused
only after a complete response that allows keep-alive; any error, timeout or cancellation
closes it, so a late answer can never be read as the answer to a later request. A request
is never resent by this layer: the coordinator's retry (a new, recorded attempt) does that.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections import defaultdict, deque
from collections.abc import Mapping
from typing import Protocol, cast
from urllib.parse import urlsplit

import httptools
import httpx

__all__ = ["CallFailed", "CallTimeout", "FastPoster", "HttpxPoster", "Poster"]


class CallFailed(Exception):
    """No usable answer: connection refused, reset or closed, or a malformed response."""


class CallTimeout(CallFailed):
    """No complete answer within the timeout."""


class Poster(Protocol):
    """Sends one POST and returns (status code, body)."""

    async def post(
        self, url: str, body: bytes | None, headers: Mapping[str, str], timeout_s: float
    ) -> tuple[int, bytes]: ...

    async def aclose(self) -> None: ...


class HttpxPoster:
    """:class:`Poster` over an ``httpx.AsyncClient`` (any scheme; tests pass a transport)."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def post(
        self, url: str, body: bytes | None, headers: Mapping[str, str], timeout_s: float
    ) -> tuple[int, bytes]:
        try:
            r = await self.client.post(url, content=body, headers=dict(headers), timeout=timeout_s)
        except httpx.TimeoutException as exc:
            raise CallTimeout(f"timed out: {exc!r}") from exc
        except httpx.HTTPError as exc:
            raise CallFailed(f"no answer: {exc!r}") from exc
        return r.status_code, r.content

    async def aclose(self) -> None:
        await self.client.aclose()


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: at most one request in flight."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser: httptools.HttpResponseParser | None = None
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.body: list[bytes] = []
        self.open = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        if self.waiter is None or self.parser is None:
            self.close()  # bytes nobody asked for (e.g. a 408 on an idle connection)
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(CallFailed(f"malformed response: {exc}"))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        assert self.parser is not None
        status = self.parser.get_status_code()
        if not self.parser.should_keep_alive():
            self.open = False
        waiter, body = self.waiter, b"".join(self.body)
        self.waiter, self.body = None, []
        if waiter is not None and not waiter.done():
            waiter.set_result((status, body))
        if not self.open:
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        self._fail(CallFailed(f"connection closed before the answer ({exc!r})"))

    def _fail(self, exc: CallFailed) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        self.close()

    def close(self) -> None:
        self.open = False
        if self.transport is not None:
            self.transport.close()

    def time_out(self, timeout_s: float) -> None:
        self._fail(CallTimeout(f"no answer within {timeout_s} s"))

    def send(self, data: bytes) -> asyncio.Future[tuple[int, bytes]]:
        assert self.transport is not None and self.waiter is None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return self.waiter


def _target(url: str) -> tuple[tuple[str, int], str, str] | None:
    """((host, port), path with query, netloc) of a plain ``http://`` URL, else None.

    Most URLs are seen once (templates are filled with each gid), so caching whole URLs
    would miss; the origin is cached per netloc and the path is cut off by hand, which
    gives what ``urlsplit`` gives for these URLs. Anything unusual (tabs or line breaks,
    which ``urlsplit`` strips; a query or fragment right after the host) goes the slow
    way."""
    if not url.startswith("http://") or "\r" in url or "\n" in url or "\t" in url:
        return _target_split(url)
    netloc, _, tail = url[7:].partition("/")
    if "?" in netloc or "#" in netloc:
        return _target_split(url)
    origin = _origin(netloc)
    if origin is None:
        return None
    return origin, "/" + tail.partition("#")[0], netloc


@functools.lru_cache(maxsize=1024)
def _origin(netloc: str) -> tuple[str, int] | None:
    parts = urlsplit(f"http://{netloc}/")
    return (parts.hostname, parts.port or 80) if parts.hostname else None


def _target_split(url: str) -> tuple[tuple[str, int], str, str] | None:
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        return None
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return (parts.hostname, parts.port or 80), path, parts.netloc


class _Slots:
    """At most ``n`` requests at once to one host:port (an ``asyncio.Semaphore`` without
    the coroutine call when a slot is free, which is nearly always)."""

    __slots__ = ("free", "waiters")

    def __init__(self, n: int) -> None:
        self.free = n
        self.waiters: deque[asyncio.Future[None]] = deque()

    def take(self) -> bool:
        if self.free > 0 and not self.waiters:
            self.free -= 1
            return True
        return False

    async def wait(self) -> None:
        """Wait for a slot handed over by :meth:`give`."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.give()  # handed over, but this request was cancelled meanwhile
            else:
                with contextlib.suppress(ValueError):
                    self.waiters.remove(waiter)
            raise

    def give(self) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.free += 1


class FastPoster:
    """Keep-alive HTTP/1.1 POSTs for ``http://`` URLs (see the module docstring), at most
    ``connections_max`` connections per host:port; other URLs go to ``fallback``."""

    def __init__(self, fallback: Poster, connections_max: int = 256) -> None:
        self.fallback = fallback
        self.connections_max = connections_max
        self._idle: dict[tuple[str, int], list[_Connection]] = defaultdict(list)
        self._slots: dict[tuple[str, int], _Slots] = {}
        self._all: set[_Connection] = set()

    async def post(
        self, url: str, body: bytes | None, headers: Mapping[str, str], timeout_s: float
    ) -> tuple[int, bytes]:
        target = _target(url)
        if target is None:
            return await self.fallback.post(url, body, headers, timeout_s)
        key, path, netloc = target
        fields = "".join([f"{k}: {v}\r\n" for k, v in headers.items()])
        if fields.count("\n") != len(headers) or fields.count("\r") != len(headers):
            raise ValueError(f"a header contains a line break: {dict(headers)!r}")
        size = len(body) if body else 0
        head = f"POST {path} HTTP/1.1\r\nHost: {netloc}\r\n{fields}Content-Length: {size}\r\n\r\n"
        request = head.encode("latin-1") + body if body else head.encode("latin-1")
        slots = self._slots.get(key)
        if slots is None:
            slots = self._slots[key] = _Slots(self.connections_max)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        if not slots.take():
            await slots.wait()
        try:
            conn = self._idle_connection(key)
            if conn is None:
                conn = await self._connect(key, deadline - loop.time())
            # One timer per request instead of a wait_for task: when it fires, the
            # connection is closed and the waiting request fails with CallTimeout.
            timer = loop.call_later(max(0.0, deadline - loop.time()), conn.time_out, timeout_s)
            try:
                result = await conn.send(request)
            except BaseException:
                conn.close()
                self._all.discard(conn)
                raise
            finally:
                timer.cancel()
        finally:
            slots.give()
        if conn.open:
            self._idle[key].append(conn)
        else:
            self._all.discard(conn)
        return result

    def _idle_connection(self, key: tuple[str, int]) -> _Connection | None:
        idle = self._idle[key]
        while idle:
            candidate = idle.pop()
            if candidate.open:
                return candidate
            self._all.discard(candidate)
        return None

    async def _connect(self, key: tuple[str, int], timeout_s: float) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(_Connection, key[0], key[1]), max(timeout_s, 0.001)
            )
        except TimeoutError as exc:
            raise CallTimeout(f"cannot connect to {key[0]}:{key[1]} in time") from exc
        except OSError as exc:
            raise CallFailed(f"cannot connect to {key[0]}:{key[1]}: {exc}") from exc
        self._all.add(conn)
        return conn

    async def aclose(self) -> None:
        for conn in list(self._all):
            conn.close()
        self._all.clear()
        self._idle.clear()
        with contextlib.suppress(Exception):
            await self.fallback.aclose()
