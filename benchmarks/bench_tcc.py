"""Cross-book TCC transfers/s through the coordinator, and their latency (p50, p99).

Setup, all real processes on this machine: two ``ledger serve`` nodes (books ``A`` and
``B``, each with its own database and WAL directory) and one ``ledger coordinator`` (its
own database and WAL), on one PostgreSQL server. A transfer moves 1 minor unit from an
account in book A to one in book B as a two-branch TCC transaction: in A, ``alice_i →
settlement_A`` (pending), in B, ``settlement_B → bob_i`` (pending); confirm posts both.

Load: ``--clients`` concurrent closed-loop clients, each posting
``POST /v1/tcc?wait=true`` (answered when the transaction is final, so the latency is
the whole try + confirm round) with a fresh gid. After the run the books are checked:
every committed transfer moved exactly one unit on each side (settlement A's credits =
settlement B's debits = committed count) and nothing is left pending.

``--calls``: the branches call the nodes one request per call (``single``), through the
nodes' ``/v1/tcc/batch`` (``batched``: ``ledger.sagas.batching``), or ``both`` in turn
(default), each mode on new databases, WALs and processes, with the ratio printed.
``--metrics`` prints each process's mean stage latencies (from its ``/metrics``).

``--participants fake`` replaces both ledger nodes by a minimal participant that answers
success at once (one raw ASGI process): the coordinator's own ceiling.

Run: ``python -m benchmarks.bench_tcc [--quick] [--calls single|batched|both]
[--participants ledger|fake] [--metrics]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson

from ledger.adapters.migrate import upgrade
from ledger.api.auth import KeyStore
from ledger.devservices import free_port, start_postgres
from ledger.sagas.http import FastPoster, HttpxPoster

__all__ = ["main"]

ACCOUNTS = 200


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, *args], env={**os.environ, **env}, stdout=out, stderr=out
        )


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: process exited:\n{log.read_text()[-2000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not become ready")


CHILDREN: dict[str, int] = {}
"""name -> pid of every process started, for the CPU report."""


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def postgres_cpu_seconds() -> float:
    total = 0.0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() in ("postgres", "postmaster"):
                    total += cpu_seconds(int(entry.name))
    return total


def cpu_snapshot() -> dict[str, float]:
    snap = {name: cpu_seconds(pid) for name, pid in CHILDREN.items()}
    snap["postgres (all)"] = postgres_cpu_seconds()
    own = os.times()
    snap["load generator"] = own.user + own.system
    return snap


@contextlib.contextmanager
def process(
    args: list[str], env: dict[str, str], log: Path, port: int, name: str = ""
) -> Iterator[str]:
    proc = _start(args, env, log)
    url = f"http://127.0.0.1:{port}"
    if name:
        CHILDREN[name] = proc.pid
    try:
        _wait_ready(url, proc, log)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(20)


def token_for(db: str, scope: str) -> str:
    keys = KeyStore(db)
    try:
        return keys.create("bench", scope)[1]
    finally:
        keys.close()


@dataclass
class Book:
    """One ledger node and the accounts the benchmark uses in it."""

    url: str
    token: str
    settlement: str
    customers: list[str]


def open_book(url: str, token: str, side: str) -> Book:
    """Accounts: a funding account, a settlement account and ``ACCOUNTS`` customers; in
    book A the customers are funded (the debit side), in book B settlement is funded."""
    funding, settlement = str(uuid.uuid4()), str(uuid.uuid4())
    customers = [str(uuid.uuid4()) for _ in range(ACCOUNTS)]
    limited = {"debits_must_not_exceed_credits": True}
    accounts = [{"id": funding, "ledger": "USD", "code": 1}]
    accounts.append({"id": settlement, "ledger": "USD", "code": 2, "flags": limited})
    accounts += [{"id": c, "ledger": "USD", "code": 3, "flags": limited} for c in customers]
    funded = customers if side == "A" else [settlement]
    transfers = [
        {
            "id": str(uuid.uuid4()),
            "debit_account_id": funding,
            "credit_account_id": a,
            "amount_minor": 1_000_000_000,
            "ledger": "USD",
            "code": 1,
        }
        for a in funded
    ]
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as c:
        c.post("/v1/accounts", json={"accounts": accounts}, timeout=60).raise_for_status()
        c.post("/v1/transfers", json={"transfers": transfers}, timeout=60).raise_for_status()
    return Book(url, token, settlement, customers)


def ledger_branches(a: Book, b: Book, i: int, batched: bool) -> list[dict[str, Any]]:
    def branch(book: Book, name: str, debit: str, credit: str) -> dict[str, Any]:
        base = f"{book.url}/v1/tcc/{{gid}}/{{branch_id}}"
        return {
            "branch_id": name,
            "try_url": f"{base}/try",
            "confirm_url": f"{base}/confirm",
            "cancel_url": f"{base}/cancel",
            **({"batch_url": f"{book.url}/v1/tcc/batch"} if batched else {}),
            "payload": {
                "debit_account_id": debit,
                "credit_account_id": credit,
                "amount_minor": 1,
                "ledger": "USD",
                "code": 1,
                "timeout_s": 60,
            },
            "headers": {"Authorization": f"Bearer {book.token}"},
        }

    k = i % ACCOUNTS
    return [
        branch(a, "debit", a.customers[k], a.settlement),
        branch(b, "credit", b.settlement, b.customers[k]),
    ]


def fake_branches(url: str) -> list[dict[str, Any]]:
    return [
        {
            "branch_id": name,
            "try_url": f"{url}/try",
            "confirm_url": f"{url}/confirm",
            "cancel_url": f"{url}/cancel",
            "payload": {"amount_minor": 1},
        }
        for name in ("debit", "credit")
    ]


async def load(
    coordinator: str,
    token: str,
    make_branches: Any,
    clients: int,
    seconds: float,
) -> tuple[int, int, list[float]]:
    """Closed-loop clients for ``seconds``; (committed, other outcomes, latencies in s).
    The client is the coordinator's own small HTTP/1.1 client: httpx would be the
    bottleneck here (it costs more CPU per request than the coordinator does)."""
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    poster = FastPoster(HttpxPoster(httpx.AsyncClient()), connections_max=clients)
    url = f"{coordinator}/v1/tcc?wait=true"
    latencies: list[float] = []
    outcomes = {"committed": 0, "other": 0}
    counter = iter(range(1 << 62))
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        while time.perf_counter() < stop_at:
            i = next(counter)
            body = orjson.dumps({"gid": uuid.uuid4().hex, "branches": make_branches(i)})
            t0 = time.perf_counter()
            status, content = await poster.post(url, body, headers, 120)
            latencies.append(time.perf_counter() - t0)
            ok = status == 201 and orjson.loads(content)["status"] == "committed"
            outcomes["committed" if ok else "other"] += 1

    try:
        await asyncio.gather(*(worker() for _ in range(clients)))
    finally:
        await poster.aclose()
    return outcomes["committed"], outcomes["other"], latencies


def histograms(urls: dict[str, str]) -> dict[str, tuple[float, float]]:
    """(sum, count) of every histogram series each process exports at ``/metrics``,
    keyed ``process: name{labels}``."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, tuple[float, float]] = {}
    for name, url in urls.items():
        text = httpx.get(f"{url}/metrics", timeout=10).text
        for family in text_string_to_metric_families(text):
            if family.type != "histogram":
                continue
            for sample in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()) if k != "le")
                key = f"{name}: {family.name}{{{labels}}}" if labels else f"{name}: {family.name}"
                total, count = out.get(key, (0.0, 0.0))
                if sample.name.endswith("_sum"):
                    out[key] = (total + sample.value, count)
                elif sample.name.endswith("_count"):
                    out[key] = (total, count + sample.value)
    return out


def stage_means(
    before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]
) -> list[str]:
    """The mean of every histogram over what was observed between two readings: where a
    transaction's time goes (latencies in ms, batch sizes as they are)."""
    lines = []
    for key in sorted(after):
        total = after[key][0] - before.get(key, (0.0, 0.0))[0]
        count = after[key][1] - before.get(key, (0.0, 0.0))[1]
        if "gc_pause" in key and count > 0:  # rare and long: every one counts
            lines.append(
                f"{key}: {count:.0f} collections, {total * 1000:.0f} ms in all, "
                f"mean {total / count * 1000:.2f} ms"
            )
        elif count >= 100:  # not the setup's few requests
            mean = total / count
            shown = f"{mean * 1000:.2f} ms" if "seconds" in key else f"{mean:.1f}"
            lines.append(f"{key} mean {shown} over {count:.0f}")
    return lines


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def check_books(a: Book, b: Book, committed: int) -> str:
    """Settlement A credited and settlement B debited exactly once per committed
    transfer, nothing pending on either side."""
    out = []
    for book, side in ((a, "credits_posted"), (b, "debits_posted")):
        with httpx.Client(
            base_url=book.url, headers={"Authorization": f"Bearer {book.token}"}
        ) as c:
            bal = c.get(f"/v1/accounts/{book.settlement}/balance").json()
        out.append(bal[side])
        if bal["debits_pending"] or bal["credits_pending"]:
            return f"MISMATCH: pending left on {book.url}: {bal}"
    if out[0] != out[1]:
        return f"MISMATCH: book A moved {out[0]}, book B {out[1]}"
    return f"books agree: {out[0]} units moved on each side, {committed} transfers committed"


def serve_fake(port: int) -> None:
    """A participant that answers success to everything (raw ASGI, no framework)."""
    import uvicorn

    body = b'{"result":"success"}'

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def cpu_ms_per_transfer(
    before: dict[str, float], after: dict[str, float], transfers: int
) -> dict[str, float]:
    """Each process's CPU milliseconds per transfer between two :func:`cpu_snapshot`."""
    return {k: 1000 * (after[k] - before[k]) / max(transfers, 1) for k in after}


def measure(
    args: argparse.Namespace,
    runs: int,
    seconds: float,
    coordinator: str,
    token: str,
    make: Any,
    urls: dict[str, str],
) -> tuple[int, tuple[float, float, float]]:
    """A warm-up second, then ``runs`` timed runs; prints each run, the CPU shares and
    the stage latencies; returns (transfers committed, (median rate, p50 ms, p99 ms))."""
    warm, _, _ = asyncio.run(load(coordinator, token, make, args.clients, 1.0))
    figures = []
    pooled: list[float] = []
    total = warm
    measured = 0
    before = histograms(urls)
    cpu0, wall0 = cpu_snapshot(), time.perf_counter()
    for _ in range(runs):
        run0 = cpu_snapshot()
        done, other, lat = asyncio.run(load(coordinator, token, make, args.clients, seconds))
        run1 = cpu_snapshot()
        total += done
        measured += done + other
        figures.append((done / seconds, percentile(lat, 0.5), percentile(lat, 0.99)))
        pooled.extend(lat)
        each = cpu_ms_per_transfer(run0, run1, done + other)
        print(
            f"  run: {done / seconds:,.0f} committed/s ({other} not committed), "
            f"p50 {percentile(lat, 0.5) * 1000:.1f} ms, "
            f"p99 {percentile(lat, 0.99) * 1000:.1f} ms, "
            f"{sum(each.values()):.2f} ms CPU per transfer (all processes: "
            + ", ".join(f"{k} {v:.2f}" for k, v in each.items())
            + ")",
            flush=True,
        )
    cpu1, wall = cpu_snapshot(), time.perf_counter() - wall0
    shares = ", ".join(f"{name} {100 * (cpu1[name] - cpu0[name]) / wall:.0f}%" for name in cpu1)
    print(f"  CPU (100% = one core; 2 cores shared): {shares}", flush=True)
    # CPU time per transfer varies far less than throughput when other work shares the
    # machine, so before/after comparisons should quote it.
    each = cpu_ms_per_transfer(cpu0, cpu1, measured)
    print(
        "  CPU ms per transfer: " + ", ".join(f"{k} {v:.2f}" for k, v in each.items()), flush=True
    )
    if args.metrics:
        for line in stage_means(before, histograms(urls)):
            print("  " + line, flush=True)
    rate = statistics.median(f[0] for f in figures)
    p50 = statistics.median(f[1] for f in figures) * 1000
    p99 = statistics.median(f[2] for f in figures) * 1000
    print(
        f"cross-book TCC ({args.participants} participants, {args.clients} clients, "
        f"median of {runs}): {rate:,.0f} transfers/s, p50 {p50:.1f} ms, p99 {p99:.1f} ms",
        flush=True,
    )
    if runs > 1:  # the median of the runs' p99 hides one bad run: the runs together
        print(
            f"  all {runs} runs together: {len(pooled):,} transactions, "
            f"{len(pooled) / (runs * seconds):,.0f}/s, "
            f"p99 {percentile(pooled, 0.99) * 1000:.1f} ms, "
            f"p99.9 {percentile(pooled, 0.999) * 1000:.1f} ms, "
            f"max {max(pooled, default=0.0) * 1000:.1f} ms",
            flush=True,
        )
    return total, (rate, p50, p99)


def run(args: argparse.Namespace) -> int:
    runs = 1 if args.quick else args.runs
    seconds = 3.0 if args.quick else args.seconds
    modes = (
        [False]
        if args.participants == "fake"
        else {"single": [False], "batched": [True], "both": [False, True]}[args.calls]
    )
    pg = start_postgres("LEDGER_BENCH_DATABASE_URL")
    try:
        results = {}
        for batched in modes:
            # each mode on new databases, WALs and processes: the same start for both
            figures = run_mode(args, pg.url, runs, seconds, batched)
            if figures is None:
                return 2
            results[batched] = figures
        if len(results) == 2:
            one, many = results[False], results[True]
            print(
                f"batched / one request per call: {many[0]:,.0f} / {one[0]:,.0f} "
                f"transfers/s = {many[0] / max(one[0], 1e-9):.2f}x; p99 {many[2]:.1f} / "
                f"{one[2]:.1f} ms",
                flush=True,
            )
    finally:
        pg.close()
    return 0


def run_mode(
    args: argparse.Namespace, pg_url: str, runs: int, seconds: float, batched: bool
) -> tuple[float, float, float] | None:
    """Start the coordinator and the participants, measure, check the books."""
    from benchmarks.peer_eventsourcing import fresh_database

    CHILDREN.clear()
    with ExitStack() as stack:
        tmp = Path(
            stack.enter_context(
                tempfile.TemporaryDirectory(
                    dir=os.environ.get("LEDGER_BENCH_DIR", "."), prefix=".bench-tcc-"
                )
            )
        )
        coord_db = stack.enter_context(fresh_database(pg_url, prefix="bench_tcc_c"))
        upgrade(coord_db)
        common = {
            "LEDGER_LOG_LEVEL": os.environ.get("LEDGER_BENCH_LOG_LEVEL", "WARNING"),
            "LEDGER_LOG_JSON": "true",
        }
        port = free_port()
        coordinator = stack.enter_context(
            process(
                ["-m", "ledger.cli", "coordinator", "--port", str(port)],
                {
                    **common,
                    "LEDGER_DATABASE_URL": coord_db,
                    "LEDGER_WAL_DIR": str(tmp / "wal"),
                    "LEDGER_COORDINATOR_CONNECTIONS_MAX": str(max(8, args.clients * 2)),
                },
                tmp / "coordinator.log",
                port,
                "coordinator",
            )
        )
        token = token_for(coord_db, "write")
        books: tuple[Book, Book] | None = None
        if args.participants == "fake":
            fport = free_port()
            fake = stack.enter_context(
                process(
                    ["-m", "benchmarks.bench_tcc", "--serve-fake", str(fport)],
                    {},
                    tmp / "fake.log",
                    fport,
                    "participant",
                )
            )

            def make(i: int) -> list[dict[str, Any]]:
                return fake_branches(fake)
        else:
            opened = []
            for side in ("A", "B"):
                db = stack.enter_context(fresh_database(pg_url, prefix=f"bench_tcc_{side}"))
                upgrade(db)
                lport = free_port()
                url = stack.enter_context(
                    process(
                        ["-m", "ledger.cli", "serve", "--port", str(lport)],
                        {
                            **common,
                            "LEDGER_DATABASE_URL": db,
                            "LEDGER_WAL_DIR": str(tmp / f"wal-{side}"),
                            "LEDGER_BOOK_ID": side,
                        },
                        tmp / f"ledger-{side}.log",
                        lport,
                        f"ledger {side}",
                    )
                )
                opened.append(open_book(url, token_for(db, "write"), side))
            books = (opened[0], opened[1])
            a, b = books
            probe = httpx.post(f"{a.url}/v1/tcc/probe/b/cancel", timeout=10)
            if probe.status_code == 404:
                print(
                    "the ledger has no /v1/tcc participant endpoints yet: use --participants fake",
                    flush=True,
                )
                return None

            def make(i: int) -> list[dict[str, Any]]:
                return ledger_branches(a, b, i, batched)

        urls = {"coordinator": coordinator}
        if books is not None:
            urls.update({"ledger A": books[0].url, "ledger B": books[1].url})
        label = "batched calls" if batched else "one request per call"
        print(f"{args.participants} participants, {label}:", flush=True)
        total, figures = measure(args, runs, seconds, coordinator, token, make, urls)
        if books is not None:
            print("  " + check_books(books[0], books[1], total), flush=True)
        return figures


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_tcc", description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--participants", choices=["ledger", "fake"], default="ledger")
    parser.add_argument(
        "--calls",
        choices=["single", "batched", "both"],
        default="both",
        help="ledger participants: one request per call, batch_url branches, or both in turn",
    )
    parser.add_argument(
        "--metrics", action="store_true", help="print each process's mean latencies per mode"
    )
    parser.add_argument("--serve-fake", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_fake is not None:
        serve_fake(args.serve_fake)
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
