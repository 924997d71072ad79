"""A small HTTP/1.1 load generator for single-transfer requests, for machines without
``wrk``: ``bench_api`` runs it in its own process when ``wrk`` is not installed.

It keeps ``--connections`` keep-alive connections busy (one request in flight on each,
as ``wrk`` does), each request a ``POST /v1/transfers`` of one transfer with a fresh id
between two random accounts of ``--accounts`` (a file of account ids, one per line).
Requests are built from bytes templates and each connection is an ``asyncio.Protocol``
that sends the next request from ``data_received`` once the response (head up to its
blank line, then the ``Content-Length`` body) is complete: no HTTP library and no
stream machinery, so the generator spends little CPU per request. It
prints one JSON object: requests, seconds, requests/s, p50 and p99 latency in ms,
non-2xx responses, and its own CPU seconds (user + system), so a run shows whether the
generator could have been the bottleneck.

    python -m benchmarks.loadgen --url http://127.0.0.1:PORT --token T --accounts FILE \\
        [--connections 64] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import resource
import statistics
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

import orjson

__all__ = ["main"]


def _head(host: str, token: str) -> bytes:
    """The request line and headers up to ``Content-Length``: the same for every request
    of a run, so built once."""
    return (
        b"POST /v1/transfers HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\n"
        b"Content-Type: application/json\r\nContent-Length: " % (host.encode(), token.encode())
    )


def _request(head: bytes, debit: str, credit: str, transfer_id: str) -> bytes:
    body = (
        b'{"transfers":[{"id":"%s","debit_account_id":"%s","credit_account_id":"%s",'
        b'"amount_minor":1,"ledger":"USD","code":1}]}'
        % (transfer_id.encode(), debit.encode(), credit.encode())
    )
    return b"%b%d\r\n\r\n%b" % (head, len(body), body)


def _uuid4(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


class _Connection(asyncio.Protocol):
    """One keep-alive connection with one request in flight: the next request is sent
    from ``data_received`` as soon as the previous response is complete."""

    def __init__(
        self,
        authority: str,
        token: str,
        ids: list[str],
        deadline: float,
        latencies: list[float],
        failures: list[int],
        seed: int,
    ) -> None:
        self.head, self.ids = _head(authority, token), ids
        self.deadline, self.latencies, self.failures = deadline, latencies, failures
        self.rng = random.Random(seed)
        self.buffer = b""
        self.started = 0.0
        self.transport: asyncio.Transport | None = None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._send()

    def _send(self) -> None:
        assert self.transport is not None
        a, b = self.rng.sample(self.ids, 2)
        request = _request(self.head, a, b, _uuid4(self.rng))
        self.started = time.perf_counter()
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buffer[:end].lower()
        at = head.find(b"\r\ncontent-length:")
        length = 0
        if at >= 0:
            stop = head.find(b"\r\n", at + 2)
            length = int(head[at + 17 : stop if stop >= 0 else len(head)])
        if len(self.buffer) < end + 4 + length:
            return
        now = time.perf_counter()
        self.latencies.append(now - self.started)
        if not head.startswith(b"http/1.1 2"):
            self.failures.append(1)
        self.buffer = self.buffer[end + 4 + length :]
        if now < self.deadline:
            self._send()
        elif self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            if exc is None and time.perf_counter() >= self.deadline:
                self.done.set_result(None)
            else:
                self.done.set_exception(exc or ConnectionError("the server closed the connection"))


async def _run(
    url: str, token: str, ids: list[str], connections: int, seconds: float
) -> dict[str, float]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    latencies: list[float] = []
    failures: list[int] = []
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    deadline = started + seconds
    loop = asyncio.get_running_loop()
    authority = f"{host}:{port}"
    protocols = []
    for seed in range(connections):
        _, protocol = await loop.create_connection(
            lambda seed=seed: _Connection(  # type: ignore[misc]
                authority, token, ids, deadline, latencies, failures, seed
            ),
            host,
            port,
        )
        protocols.append(protocol)
    await asyncio.gather(*(p.done for p in protocols))
    elapsed = time.perf_counter() - started
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    ordered = sorted(latencies)
    return {
        "requests": len(latencies),
        "seconds": elapsed,
        "rps": len(latencies) / elapsed,
        "p50_ms": statistics.median(ordered) * 1000 if ordered else 0.0,
        "p99_ms": ordered[int(len(ordered) * 0.99)] * 1000 if ordered else 0.0,
        "non_2xx": len(failures),
        "cpu_s": cpu,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.loadgen", description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--accounts", type=Path, required=True, help="file of account ids")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    ids = [line.strip() for line in args.accounts.read_text().splitlines() if line.strip()]
    if len(ids) < 2:
        parser.error(f"{args.accounts}: at least two account ids are needed")
    if args.connections < 1 or args.seconds <= 0:
        parser.error("--connections and --seconds must be positive")
    result = asyncio.run(_run(args.url, args.token, ids, args.connections, args.seconds))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
