"""The coalescing transport writes the same bytes, in order, with a head joined to the
write after it; and a server on it answers as plain uvicorn does."""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any

import httpx
import pytest
import uvicorn

from ledger.api.protocol import CoalescingHttpToolsProtocol, CoalescingTransport
from ledger.devservices import free_port

HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


class Recorder:
    """A transport that records what it is asked to do."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.calls.append(("write", bytes(data)))

    def close(self) -> None:
        self.closing = True
        self.calls.append(("close", None))

    def abort(self) -> None:
        self.closing = True
        self.calls.append(("abort", None))

    def write_eof(self) -> None:
        self.calls.append(("write_eof", None))

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return 7

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 1)}.get(name, default)


async def _pass() -> None:
    await asyncio.sleep(0)
    await asyncio.sleep(0)


def _transport() -> tuple[CoalescingTransport, Recorder]:
    raw = Recorder()
    return CoalescingTransport(raw, asyncio.get_running_loop()), raw  # type: ignore[arg-type]


def test_a_head_is_joined_to_the_next_write() -> None:
    asyncio.run(_test_a_head_is_joined_to_the_next_write())


async def _test_a_head_is_joined_to_the_next_write() -> None:
    t, raw = _transport()
    t.write(HEAD)
    assert raw.calls == [] and t.get_write_buffer_size() == 7 + len(HEAD)
    t.write(b"{}")
    t.write(b"more")
    assert raw.calls == [("write", HEAD + b"{}"), ("write", b"more")]
    await _pass()
    assert raw.calls == [("write", HEAD + b"{}"), ("write", b"more")]


def test_a_head_alone_goes_out_at_the_end_of_the_iteration() -> None:
    asyncio.run(_test_a_head_alone_goes_out_at_the_end_of_the_iteration())


async def _test_a_head_alone_goes_out_at_the_end_of_the_iteration() -> None:
    t, raw = _transport()
    t.write(bytearray(HEAD))
    await _pass()
    assert raw.calls == [("write", HEAD)]
    t.write(memoryview(b"body"))
    assert raw.calls == [("write", HEAD), ("write", b"body")]


def test_other_writes_go_straight_through() -> None:
    asyncio.run(_test_other_writes_go_straight_through())


async def _test_other_writes_go_straight_through() -> None:
    t, raw = _transport()
    for data in (b"HTTP/1.1 but not a head", b"5\r\n\r\n", b"", b"x"):
        t.write(data)
    assert [c[1] for c in raw.calls] == [b"HTTP/1.1 but not a head", b"5\r\n\r\n", b"", b"x"]


def test_close_and_eof_send_a_held_head_first_and_abort_drops_it() -> None:
    asyncio.run(_test_close_and_eof_send_a_held_head_first_and_abort_drops_it())


async def _test_close_and_eof_send_a_held_head_first_and_abort_drops_it() -> None:
    t, raw = _transport()
    t.write(HEAD)
    t.close()
    assert raw.calls == [("write", HEAD), ("close", None)]
    await _pass()
    assert raw.calls == [("write", HEAD), ("close", None)]
    t, raw = _transport()
    t.write(HEAD)
    t.write_eof()
    assert raw.calls == [("write", HEAD), ("write_eof", None)]
    t, raw = _transport()
    t.write(HEAD)
    t.abort()
    await _pass()
    assert raw.calls == [("abort", None)]


def test_a_held_head_is_dropped_when_the_peer_left() -> None:
    asyncio.run(_test_a_held_head_is_dropped_when_the_peer_left())


async def _test_a_held_head_is_dropped_when_the_peer_left() -> None:
    t, raw = _transport()
    t.write(HEAD)
    raw.closing = True
    await _pass()
    assert raw.calls == []
    assert t.get_extra_info("peername") == ("127.0.0.1", 1)


# -- a real server -------------------------------------------------------------------------


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    body = b"hello " + scope["path"].encode()
    if scope["path"] == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for part in (b"a", b"", b"bc"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
            await asyncio.sleep(0.01)
        await send({"type": "http.response.body", "body": b""})
        return
    headers = [(b"content-length", str(len(body)).encode()), (b"content-type", b"text/plain")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _raw_exchange(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(request)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


@pytest.mark.parametrize("protocol", ["httptools", CoalescingHttpToolsProtocol])
def test_a_server_answers_keep_alive_head_pipelined_and_streamed_requests(
    protocol: Any,
) -> None:
    port = free_port()
    config = uvicorn.Config(_app, host="127.0.0.1", port=port, log_level="warning", http=protocol)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            assert thread.is_alive()
            threading.Event().wait(0.02)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as c:
            for path in ("/a", "/b", "/c"):
                r = c.get(path)
                assert r.status_code == 200 and r.text == f"hello {path}"
            head = c.head("/a")
            assert head.status_code == 200 and head.content == b""
            assert head.headers["content-length"] == "8"
            assert c.get("/stream").text == "abc"
        pipelined = _raw_exchange(
            port,
            b"GET /x HTTP/1.1\r\nhost: h\r\n\r\nGET /y HTTP/1.1\r\nhost: h\r\n"
            b"connection: close\r\n\r\n",
        )
        assert pipelined.count(b"HTTP/1.1 200 OK") == 2
        assert pipelined.index(b"hello /x") < pipelined.index(b"hello /y")
        assert pipelined.endswith(b"hello /y")
    finally:
        server.should_exit = True
        thread.join(10)
