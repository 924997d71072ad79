"""HTTP API throughput: single-transfer requests/s with 64 concurrent clients, and
transfers/s in 1 000-transfer batch requests.

The server is ``ledger serve`` in its own process (uvicorn, one worker: one writer per
book) on real PostgreSQL and a real WAL. The single-transfer load comes from ``wrk`` (C,
Debian package ``wrk``) with a Lua script that gives every request a fresh transfer id,
so the generator is not the bottleneck; it runs on the same 2 cores, which it shares with
the server and PostgreSQL. The batch load is 4 concurrent httpx clients posting
pre-serialised 1 000-transfer bodies.

Every run also prints the server's CPU time per request (or per transfer), read from
``/proc`` (Linux): on the event-loop thread, which does all the HTTP work and is what
bounds one process, and in the whole process (the node's threads share the interpreter
lock with it).

Run: ``python -m benchmarks.bench_api [--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import httpx
import orjson

from ledger.adapters.migrate import upgrade
from ledger.api.auth import KeyStore
from ledger.devservices import free_port, start_postgres

__all__ = ["main"]

LUA = """
local ids = {%s}
local n = #ids
local random = math.random
math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16))
local function uuid4()
  return string.format("%%08x-%%04x-4%%03x-%%04x-%%012x", random(0, 0xffffffff),
    random(0, 0xffff), random(0, 0xfff), random(0x8000, 0xbfff), random(0, 0xffffffffffff))
end
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %s"
request = function()
  local a = random(1, n)
  local b = random(1, n - 1)
  if b >= a then b = b + 1 end
  local body = '{"transfers":[{"id":"' .. uuid4() .. '","debit_account_id":"' .. ids[a] ..
    '","credit_account_id":"' .. ids[b] .. '","amount_minor":1,"ledger":"USD","code":1}]}'
  return wrk.format(nil, "/v1/transfers", nil, body)
end
"""


def thread_cpu_s(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of every thread of ``pid``; empty where ``/proc`` is
    missing."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    out: dict[int, float] = {}
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / tick
    return out


class CpuMeter:
    """CPU the server spends between ``start`` and ``stop``: on its main (event-loop)
    thread and in the whole process."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.before: dict[int, float] = {}
        self.loop_s = self.process_s = 0.0

    def start(self) -> None:
        self.before = thread_cpu_s(self.pid)

    def stop(self) -> None:
        after = thread_cpu_s(self.pid)
        self.loop_s = after.get(self.pid, 0.0) - self.before.get(self.pid, 0.0)
        self.process_s = sum(after.values()) - sum(self.before.get(tid, 0.0) for tid in after)

    def per(self, count: float) -> str:
        if count <= 0 or self.process_s <= 0:
            return "CPU per item not measured"
        return (
            f"CPU per item: loop thread {self.loop_s / count * 1e6:.0f} us, "
            f"process {self.process_s / count * 1e6:.0f} us"
        )


def start_server(url: str, wal_dir: Path, port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "LEDGER_DATABASE_URL": url,
        "LEDGER_WAL_DIR": str(wal_dir),
        "LEDGER_BOOK_ID": "bench",
        "LEDGER_LOG_LEVEL": "WARNING",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "ledger.cli", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not become ready")


def open_accounts(base: str, token: str, count: int) -> list[str]:
    ids = [str(uuid.uuid4()) for _ in range(count)]
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}) as c:
        for i in range(0, count, 1000):
            body = {"accounts": [{"id": a, "ledger": "USD", "code": 1} for a in ids[i : i + 1000]]}
            c.post("/v1/accounts", json=body, timeout=60).raise_for_status()
    return ids


def run_wrk(
    base: str, token: str, ids: list[str], seconds: int, meter: CpuMeter
) -> tuple[float, float, float, str]:
    script = Path(tempfile.mkstemp(suffix=".lua")[1])
    script.write_text(LUA % (",".join(f'"{i}"' for i in ids[:1000]), token))
    meter.start()
    out = subprocess.run(
        ["wrk", "-t2", "-c64", f"-d{seconds}s", "--latency", "-s", str(script), base],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    meter.stop()
    script.unlink()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"50%\s+([\d.]+\w+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"99%\s+([\d.]+\w+)", out).group(1))  # type: ignore[union-attr]
    count = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        print(f"  wrk saw {errors.group(1)} non-2xx responses", flush=True)
    cpu = meter.per(count)
    print(f"  run: {rps:,.0f} req/s, p50 {p50:.2f} ms, p99 {p99:.2f} ms; {cpu}", flush=True)
    return rps, p50, p99, cpu


def run_loadgen(
    base: str, token: str, ids: list[str], seconds: int, meter: CpuMeter
) -> tuple[float, float, float, str]:
    """The same load as :func:`run_wrk` from ``benchmarks.loadgen`` (Python, asyncio
    streams, its own process), for machines without ``wrk``."""
    accounts = Path(tempfile.mkstemp(suffix=".ids")[1])
    accounts.write_text("\n".join(ids[:1000]) + "\n")
    command = [sys.executable, "-m", "benchmarks.loadgen", "--url", base, "--token", token]
    command += ["--accounts", str(accounts), "--connections", "64", "--seconds", str(seconds)]
    meter.start()
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    meter.stop()
    accounts.unlink()
    result = orjson.loads(out)
    if result["non_2xx"]:
        print(f"  the load generator saw {result['non_2xx']} non-2xx responses", flush=True)
    requests = int(result["requests"])
    cpu = meter.per(requests)
    own = result["cpu_s"] / max(requests, 1) * 1e6
    print(
        f"  run: {result['rps']:,.0f} req/s, p50 {result['p50_ms']:.2f} ms, p99 "
        f"{result['p99_ms']:.2f} ms; {cpu}; load generator {own:.0f} µs CPU per request",
        flush=True,
    )
    return float(result["rps"]), float(result["p50_ms"]), float(result["p99_ms"]), cpu


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(\w+)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def batch_bodies(ids: list[str], batches: int) -> list[bytes]:
    bodies = []
    for _ in range(batches):
        items = []
        for _ in range(1000):
            a, b = os.urandom(2), os.urandom(2)
            ia, ib = int.from_bytes(a) % len(ids), int.from_bytes(b) % len(ids)
            if ia == ib:
                ib = (ib + 1) % len(ids)
            items.append(
                {
                    "id": str(uuid.uuid4()),
                    "debit_account_id": ids[ia],
                    "credit_account_id": ids[ib],
                    "amount_minor": 1,
                    "ledger": "USD",
                    "code": 1,
                }
            )
        bodies.append(orjson.dumps({"transfers": items}))
    return bodies


async def run_batches(base: str, token: str, bodies: list[bytes], meter: CpuMeter) -> float:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=120) as client:
        queue = list(bodies)

        async def worker() -> None:
            while queue:
                body = queue.pop()
                r = await client.post("/v1/transfers", content=body)
                r.raise_for_status()

        meter.start()
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(4)))
        rate = len(bodies) * 1000 / (time.perf_counter() - t0)
        meter.stop()
    print(f"  run: {rate:,.0f} transfers/s; {meter.per(len(bodies) * 1000)}", flush=True)
    return rate


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_api", description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--phases",
        default="single,batch",
        help="comma-separated: single (64 connections: wrk, else benchmarks.loadgen), batch "
        "(1000-transfer bodies)",
    )
    args = parser.parse_args(argv)
    phases = set(args.phases.split(","))
    runs = 1 if args.quick else args.runs
    seconds = 3 if args.quick else 10
    batches = 10 if args.quick else 40
    pg = start_postgres("LEDGER_BENCH_DATABASE_URL")
    from benchmarks.peer_eventsourcing import fresh_database

    try:
        with (
            fresh_database(pg.url, prefix="bench_api") as db,
            tempfile.TemporaryDirectory(
                dir=os.environ.get("LEDGER_BENCH_DIR", "."), prefix=".bench-api-"
            ) as tmp,
        ):
            upgrade(db)
            keys = KeyStore(db)
            _, token = keys.create("bench", "write")
            keys.close()
            port = free_port()
            server = start_server(db, Path(tmp), port)
            meter = CpuMeter(server.pid)
            base = f"http://127.0.0.1:{port}"
            try:
                ids = open_accounts(base, token, 1000)
                if "single" in phases:
                    generator, run_single = (
                        ("wrk", run_wrk)
                        if shutil.which("wrk")
                        else ("benchmarks.loadgen; wrk is not installed", run_loadgen)
                    )
                    figures = [run_single(base, token, ids, seconds, meter) for _ in range(runs)]
                    rps = statistics.median(f[0] for f in figures)
                    p50 = statistics.median(f[1] for f in figures)
                    p99 = statistics.median(f[2] for f in figures)
                    print(
                        f"single transfers, 64 connections ({generator}): {rps:,.0f} req/s, "
                        f"p50 {p50:.2f} ms, p99 {p99:.2f} ms",
                        flush=True,
                    )
                if "batch" in phases:
                    rates = [
                        asyncio.run(run_batches(base, token, batch_bodies(ids, batches), meter))
                        for _ in range(runs)
                    ]
                    print(
                        f"1000-transfer batches, 4 clients: {statistics.median(rates):,.0f} "
                        f"transfers/s",
                        flush=True,
                    )
            finally:
                server.terminate()
                server.wait(30)
    finally:
        pg.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
