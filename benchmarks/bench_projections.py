"""Projection benchmarks: apply throughput per projection, end-to-end lag at a steady
transfer rate (node -> relay -> workers), and the WAL replay's speed.

Run: ``.venv/bin/python -m benchmarks.bench_projections [--quick] [--rate N]``. Figures are
medians of ``--runs`` runs. Everything shares the machine: PostgreSQL, the broker, the
relay and worker processes and the node all compete for the same cores, which is the
point of the end-to-end figure (the lag a single box sustains).

* apply: a synthetic book (``projections.workload``) in the event store; each projection
  applies it from memory in batches of ``CHUNK_EVENTS`` (one transaction per batch, with
  its checkpoint), from empty tables; events/s.
* lag: a node takes transfers at ``--rate`` per second (batches every 10 ms) while
  ``ledger relay`` and ``ledger project`` run as separate processes; every 20 ms the
  slowest projection's checkpoint is compared with the time its position was committed.
* replay: ``ledger.audit.replay_wal`` over the WAL of the synthetic book, with the event
  store and read-model checks; events/s of the WAL pass, and of the whole audit; then the
  command as a user runs it (``ledger wal replay``, a fresh process each time, from its
  start to its exit).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import psycopg

from ledger import domain
from ledger.adapters.migrate import upgrade
from ledger.adapters.postgres import PostgresEventStore
from ledger.adapters.wal import open_wal
from ledger.application.errors import Overloaded
from ledger.application.node import LedgerNode, NodeConfig
from ledger.application.recorder import Recorder
from ledger.audit import replay_wal
from ledger.devservices import start_kafka, start_postgres
from projections import all_projections
from projections.tracking import CHUNK_EVENTS, apply_records, dsn, iter_events
from projections.workload import SyntheticBook, store_records


def bench_apply(db: str, book_id: str, runs: int) -> dict[str, float]:
    """Events/s each projection applies, from memory, into empty tables."""
    with psycopg.connect(dsn(db), autocommit=True) as conn:
        records = [r for chunk in iter_events(conn, book_id, 1, 1 << 62) for r in chunk]
        out: dict[str, float] = {}
        for projection in all_projections():
            rates = []
            for _ in range(runs):
                for table in projection.tables:
                    conn.execute(f"TRUNCATE {table.name}")
                conn.execute(
                    "DELETE FROM projection_checkpoints WHERE projection = %s", (projection.name,)
                )
                started = time.perf_counter()
                for i in range(0, len(records), CHUNK_EVENTS):
                    apply_records(conn, projection, book_id, records[i : i + CHUNK_EVENTS])
                rates.append(len(records) / (time.perf_counter() - started))
            out[projection.name] = statistics.median(rates)
    return out


def settle(db: str) -> None:
    """Bring the freshly loaded database to the state of one that has been running a
    while, as an audit would find it: vacuumed and analysed (else autovacuum's passes over
    the new rows run during the timed audits), and the buffers written out."""
    with psycopg.connect(dsn(db), autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE)")
        conn.execute("CHECKPOINT")


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def _cpu_snapshot(children: dict[str, int]) -> dict[str, float] | None:
    """CPU seconds so far: the whole machine (busy, from /proc/stat), this process (the
    node and the load), each child, and every PostgreSQL process; None off Linux."""
    try:
        with open("/proc/stat") as f:
            head = f.readline().split()
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in head[1:8])
    out = {"machine": (user + nice + system + irq + softirq) / _TICK}
    out["node"] = _proc_cpu(os.getpid())
    for name, pid in children.items():
        out[name] = _proc_cpu(pid)
    postgres = 0.0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as f:
                    comm = f.read().strip()
            except OSError:
                continue
            if comm == "postgres":
                postgres += _proc_cpu(int(entry))
    out["postgres"] = postgres
    return out


def cpu_per_transfer(
    before: dict[str, float] | None, after: dict[str, float] | None, transfers: int
) -> dict[str, float]:
    """Microseconds of CPU per transfer, by part, between two snapshots (``other`` is the
    rest of the machine: the broker, the kernel's own threads, PostgreSQL backends that
    ended in between); empty without snapshots or transfers."""
    if before is None or after is None or transfers <= 0:
        return {}
    spent = {k: max(0.0, after[k] - before.get(k, 0.0)) for k in after}
    known = sum(v for k, v in spent.items() if k != "machine")
    spent["other"] = max(0.0, spent["machine"] - known)
    return {k: v / transfers * 1e6 for k, v in spent.items()}


def bench_replay(
    db: str, wal_dir: Path, book_id: str, runs: int
) -> tuple[float, float, float, int, float, dict[str, float]]:
    """(WAL alone events/s, WAL pass with the store check beside it events/s, whole audit
    events/s, events, the ``ledger wal replay`` command's events/s, the CPU seconds of one
    whole audit: the machine's and this process's), medians."""
    alone, wal_rates, audit_rates, events, command = [], [], [], 0, []
    cpu: list[dict[str, float]] = []
    argv = [sys.executable, "-m", "ledger.cli", "wal", "replay", str(wal_dir)]
    argv += ["--database-url", db, "--book", book_id, "--no-progress"]
    replay_wal(wal_dir, db, book_id)  # not timed: the first read of the rows after the load
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
        command.append(time.perf_counter() - started)
        report = replay_wal(wal_dir, None, book_id)
        alone.append(report.events / report.replay_s)
        cpu_before = _cpu_snapshot({})
        started = time.perf_counter()  # the whole call, freeing the pass's state too
        report = replay_wal(wal_dir, db, book_id)
        elapsed = time.perf_counter() - started
        cpu_after = _cpu_snapshot({})
        if cpu_before is not None and cpu_after is not None:
            cpu.append({k: cpu_after[k] - cpu_before[k] for k in cpu_after})
        events = report.events
        wal_rates.append(report.events / report.replay_s)
        audit_rates.append(report.events / elapsed)
    return (
        statistics.median(alone),
        statistics.median(wal_rates),
        statistics.median(audit_rates),
        events,
        events / statistics.median(command),
        {k: statistics.median(c[k] for c in cpu) for k in cpu[0]} if cpu else {},
    )


LAG_ACCOUNTS = 1000  # opened by the lag run before its transfers (one event each)


async def drive_node(
    db: str, wal_dir: Path, rate: int, seconds: float, commits: list[tuple[float, int]]
) -> tuple[float, int]:
    """Submit transfers at ``rate``/s for ``seconds``; record (time, committed position)."""
    wal, _ = open_wal(wal_dir, 64 << 20)
    node = await LedgerNode.open(
        Recorder(wal, PostgresEventStore(db, "bench"), retry_max_ms=1000), NodeConfig()
    )
    try:
        accounts = [uuid.uuid4() for _ in range(LAG_ACCOUNTS)]
        await node.submit([domain.OpenAccount(id=a, ledger="EUR", code=1) for a in accounts])
        commits.append((time.monotonic(), node.position))
        rng = random.Random(1)
        tick_s = 0.01
        per_tick = max(1, int(rate * tick_s))
        started = time.monotonic()
        sent = 0
        accepted = [0]
        pending: set[asyncio.Task[object]] = set()

        async def submit(commands: list[domain.Command]) -> None:
            try:
                await node.submit(commands)
            except Overloaded:
                return  # back-pressure: the node is saturated; this tick is shed
            accepted[0] += len(commands)
            commits.append((time.monotonic(), node.position))

        while time.monotonic() - started < seconds:
            commands: list[domain.Command] = []
            for _ in range(per_tick):
                debit, credit = rng.sample(accounts, 2)
                commands.append(
                    domain.CreateTransfer(
                        id=uuid.uuid4(),
                        debit_account_id=debit,
                        credit_account_id=credit,
                        amount_minor=rng.randint(1, 1000),
                        ledger="EUR",
                        code=1,
                    )
                )
            task = asyncio.create_task(submit(commands))
            pending.add(task)
            task.add_done_callback(pending.discard)
            sent += per_tick
            next_tick = started + (sent / per_tick) * tick_s
            await asyncio.sleep(max(0.0, next_tick - time.monotonic()))
        await asyncio.gather(*pending)
        elapsed = time.monotonic() - started
        return accepted[0] / elapsed, node.position
    finally:
        await node.close()


def bench_lag(db: str, bootstrap: str, tmp: Path, rate: int, seconds: float) -> dict[str, float]:
    env = {
        **os.environ,
        "LEDGER_DATABASE_URL": db,
        "LEDGER_KAFKA_BOOTSTRAP": bootstrap,
        "LEDGER_KAFKA_TOPIC": f"bench-{uuid.uuid4().hex[:8]}",
        "LEDGER_KAFKA_PARTITIONS": "3",
        "LEDGER_PROJECTION_GROUP": f"bench-{uuid.uuid4().hex[:8]}",
        "LEDGER_RELAY_POLL_INTERVAL_MS": "5",
    }
    children = [
        subprocess.Popen(
            [sys.executable, "-m", "ledger.cli", *command],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for command in (["relay"], ["project"])
    ]
    commits: list[tuple[float, int]] = []
    samples: list[tuple[float, int]] = []
    stop = threading.Event()

    def poll() -> None:
        with psycopg.connect(dsn(db), autocommit=True) as conn:
            while not stop.is_set():
                row = conn.execute(
                    "SELECT count(*), coalesce(min(position), 0) FROM projection_checkpoints "
                    "WHERE book_id = 'bench'"
                ).fetchone()
                assert row is not None
                samples.append((time.monotonic(), int(row[1]) if row[0] == 4 else 0))
                time.sleep(0.02)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        time.sleep(3)  # workers join their group
        pids = {"relay": children[0].pid, "workers": children[1].pid}
        cpu_before = _cpu_snapshot(pids)
        achieved, head = asyncio.run(drive_node(db, tmp, rate, seconds, commits))
        done_at = time.monotonic()
        deadline = done_at + 120
        while time.monotonic() < deadline and (not samples or samples[-1][1] < head):
            time.sleep(0.05)
        drained_s = time.monotonic() - done_at
        # Every transfer's whole way, from its command to the read models (the load and
        # the catch-up after it), over the transfers the node committed (its head less
        # the accounts' events).
        cpu = cpu_per_transfer(cpu_before, _cpu_snapshot(pids), head - LAG_ACCOUNTS)
    finally:
        stop.set()
        poller.join()
        for child in children:
            child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(20)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
    lags = []
    times = [c[0] for c in commits]
    positions = [c[1] for c in commits]
    import bisect

    for at, position in samples:
        if position <= positions[0]:
            continue
        i = bisect.bisect_left(positions, position)
        if i < len(times):
            lags.append(max(0.0, at - times[i]))
    lags.sort()
    return {
        "rate": achieved,
        "events": float(head),
        "p50_s": lags[len(lags) // 2] if lags else float("nan"),
        "p99_s": lags[int(len(lags) * 0.99)] if lags else float("nan"),
        "max_s": lags[-1] if lags else float("nan"),
        "drain_s": drained_s,
        **{f"cpu_{k}_us": v for k, v in cpu.items()},
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_projections", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small run (smoke)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rate", type=int, default=20_000, help="transfers/s for the lag run")
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument(
        "--phases", default="apply,replay,lag", help="comma-separated subset of apply,replay,lag"
    )
    args = parser.parse_args(argv)
    phases = set(args.phases.split(","))
    runs = 1 if args.quick else args.runs
    batches, size = (20, 1000) if args.quick else (100, 2000)
    seconds = args.seconds or (3.0 if args.quick else 15.0)
    pg = start_postgres("LEDGER_BENCH_DATABASE_URL")
    kafka = start_kafka("LEDGER_BENCH_KAFKA_BOOTSTRAP")
    from benchmarks.peer_eventsourcing import fresh_database

    print(
        f"machine: {os.cpu_count()} cores (shared); PostgreSQL {pg.origin}; broker {kafka.origin}"
    )
    try:
        with (
            fresh_database(pg.url, prefix="bench_proj") as db,
            tempfile.TemporaryDirectory(
                dir=os.environ.get("LEDGER_BENCH_DIR", "."), prefix=".bench-proj-"
            ) as tmp,
        ):
            upgrade(db)
            book = SyntheticBook(seed=1, accounts_per_ledger=500)
            wal_dir = Path(tmp) / "wal"
            events = 0
            if phases & {"apply", "replay"}:
                events = store_records(
                    db, "synthetic", list(book.batches(batches, size)), wal_dir=wal_dir
                )
            rates = bench_apply(db, "synthetic", runs) if "apply" in phases else {}
            for name, rate in rates.items():
                print(
                    f"apply {name}: {rate:,.0f} events/s "
                    f"({events:,} events, batches of {CHUNK_EVENTS})",
                    flush=True,
                )
            if "replay" in phases:
                if not rates:  # the audit compares the read models: build them once
                    bench_apply(db, "synthetic", 1)
                settle(db)
                alone, wal_rate, audit_rate, replayed, command, cpu = bench_replay(
                    db, wal_dir, "synthetic", runs
                )
                print(
                    f"wal replay ({replayed:,} events): WAL alone (checks + balances) "
                    f"{alone:,.0f} events/s; with the event store checked beside it "
                    f"{wal_rate:,.0f} events/s; whole audit incl. read models "
                    f"{audit_rate:,.0f} events/s; `ledger wal replay` start to exit "
                    f"{command:,.0f} events/s",
                    flush=True,
                )
                if cpu:
                    cores = os.cpu_count() or 1
                    print(
                        f"CPU per whole audit: {cpu['machine']:.2f} s on the machine (this "
                        f"process {cpu['node']:.2f} s, the rest {cpu['machine'] - cpu['node']:.2f}"
                        " s: mostly the audit's PostgreSQL backends, which end with it); "
                        f"{cores} cores kept busy by it would give at most "
                        f"{replayed / (cpu['machine'] / cores):,.0f} events/s",
                        flush=True,
                    )
            if "lag" in phases:
                lag_runs = []
                for run in range(runs):
                    with fresh_database(pg.url, prefix="bench_lag") as lag_db:
                        upgrade(lag_db)
                        wal_lag = Path(tmp) / f"lag-{run}"
                        lag_runs.append(
                            bench_lag(lag_db, kafka.bootstrap, wal_lag, args.rate, seconds)
                        )
                lag = {k: statistics.median(r[k] for r in lag_runs) for k in lag_runs[0]}
                print(
                    f"end-to-end at {args.rate:,}/s asked, {lag['rate']:,.0f} transfers/s "
                    f"sustained by the node for {seconds:.0f} s: projection lag p50 "
                    f"{lag['p50_s'] * 1000:,.0f} ms, p99 {lag['p99_s'] * 1000:,.0f} ms, max "
                    f"{lag['max_s'] * 1000:,.0f} ms; caught up {lag['drain_s']:.1f} s "
                    "after the load",
                    flush=True,
                )
                if "cpu_machine_us" in lag:
                    parts = ", ".join(
                        f"{name} {lag[f'cpu_{name}_us']:.0f}"
                        for name in ("node", "postgres", "relay", "workers", "other")
                    )
                    need = lag["cpu_machine_us"] * args.rate / 1e6
                    print(
                        f"CPU per transfer, command to read models: "
                        f"{lag['cpu_machine_us']:.0f} us ({parts}); at {args.rate:,}/s "
                        f"that is {need:.1f} cores' worth, on a machine of "
                        f"{os.cpu_count()}",
                        flush=True,
                    )
    finally:
        kafka.close()
        pg.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
