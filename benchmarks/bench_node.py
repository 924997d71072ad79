"""Durable transfers/s through ``LedgerNode.submit``, next to the eventsourcing library.

Every figure is end to end through the real write path: decide → WAL append + fdatasync →
PostgreSQL COPY in one transaction → reply. Configurations: batch sizes 1 (64 concurrent
submitters), 10, 100 and 1000 (8 concurrent submitters each); 1 000 and 100 000
accounts; uniform and hot-account (Zipf, s = 1.1) choice of accounts. The node is
restarted cold before the runs of each account count, so records are loaded lazily from
PostgreSQL snapshots as they would be after a restart. In the same run and on the same
PostgreSQL server, the ``eventsourcing`` library does the same transfers the way its
documentation recommends (``benchmarks/peer_eventsourcing.py``), with 1 and 16 clients.

Run: ``python -m benchmarks.bench_node [--quick] [--runs N] [--accounts N ...] [--batches N
...]``. PostgreSQL comes from ``LEDGER_BENCH_DATABASE_URL`` or the embedded server.
Figures are medians of ``--runs``.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import os
import platform
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

from ledger import domain
from ledger.adapters.migrate import upgrade
from ledger.adapters.postgres import PostgresEventStore
from ledger.adapters.wal import open_wal
from ledger.application.node import LedgerNode, NodeConfig
from ledger.application.recorder import Recorder
from ledger.bootstrap import tune_gc
from ledger.devservices import start_postgres

__all__ = ["NodeResult", "main", "run_config"]

FUND_MINOR = 10**12


@dataclass(frozen=True)
class NodeResult:
    """One configuration's median figures."""

    batch: int
    accounts: int
    distribution: str
    transfers_per_s: float
    p50_ms: float
    p99_ms: float
    created: int
    transfers: int


class Chooser:
    """Picks account pairs uniformly or with Zipf(s) weights (hot accounts)."""

    def __init__(self, ids: Sequence[UUID], distribution: str, seed: int) -> None:
        self.ids = list(ids)
        self.rng = random.Random(seed)
        self.cumulative: list[float] | None = None
        if distribution == "zipf":
            total = 0.0
            self.cumulative = []
            for k in range(1, len(ids) + 1):
                total += 1.0 / k**1.1
                self.cumulative.append(total)

    def one(self) -> UUID:
        if self.cumulative is None:
            return self.ids[self.rng.randrange(len(self.ids))]
        x = self.rng.random() * self.cumulative[-1]
        return self.ids[bisect.bisect_left(self.cumulative, x)]

    def pair(self) -> tuple[UUID, UUID]:
        a = self.one()
        b = self.one()
        while b == a:
            b = self.one()
        return a, b


def make_requests(
    chooser: Chooser, batch: int, transfers: int
) -> list[list[domain.CreateTransfer]]:
    requests = []
    for _ in range(max(1, transfers // batch)):
        items = []
        for _ in range(batch):
            debit, credit = chooser.pair()
            items.append(
                domain.CreateTransfer(
                    id=uuid.uuid4(),
                    debit_account_id=debit,
                    credit_account_id=credit,
                    amount_minor=1 + chooser.rng.randrange(1000),
                    ledger="USD",
                    code=1,
                )
            )
        requests.append(items)
    return requests


async def open_node(url: str, wal_dir: Path, book: str) -> LedgerNode:
    wal, _ = open_wal(wal_dir)
    node = await LedgerNode.open(
        Recorder(wal, PostgresEventStore(url, book)), NodeConfig(), expire_pending=False
    )
    tune_gc()  # as ledger serve does (ledger.bootstrap)
    return node


async def seed_accounts(url: str, wal_dir: Path, book: str, count: int) -> list[UUID]:
    node = await open_node(url, wal_dir, book)
    ids = [uuid.uuid4() for _ in range(count)]
    for i in range(0, count, 8000):
        chunk = ids[i : i + 8000]
        await node.submit([domain.OpenAccount(id=a, ledger="USD", code=1) for a in chunk])
    await node.close()
    return ids


async def drive(
    node: LedgerNode, requests: list[list[domain.CreateTransfer]], concurrency: int
) -> tuple[float, list[float], int]:
    latencies: list[float] = []
    created = 0
    queue = list(reversed(requests))

    async def worker() -> None:
        nonlocal created
        while queue:
            items = queue.pop()
            t0 = time.perf_counter()
            outcomes = await node.submit(items)
            latencies.append(time.perf_counter() - t0)
            created += sum(1 for o in outcomes if o.status == "created")

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - t0, latencies, created


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def run_config(
    node: LedgerNode,
    ids: Sequence[UUID],
    batch: int,
    distribution: str,
    transfers: int,
    runs: int,
    seed: int,
) -> NodeResult:
    concurrency = 64 if batch == 1 else 8
    rates, p50s, p99s, created_all = [], [], [], []
    for run in range(runs):
        chooser = Chooser(ids, distribution, seed + run)
        requests = make_requests(chooser, batch, transfers)
        elapsed, latencies, created = await drive(node, requests, concurrency)
        rates.append(len(requests) * batch / elapsed)
        p50s.append(_pct(latencies, 0.5))
        p99s.append(_pct(latencies, 0.99))
        created_all.append(created)
    return NodeResult(
        batch,
        len(ids),
        distribution,
        statistics.median(rates),
        statistics.median(p50s),
        statistics.median(p99s),
        int(statistics.median(created_all)),
        len(requests) * batch,
    )


def print_row(r: NodeResult) -> None:
    print(
        f"{r.batch:>6} {r.accounts:>8} {r.distribution:>8} {r.transfers_per_s:>12,.0f}"
        f" {r.p50_ms:>9.2f} {r.p99_ms:>9.2f} {r.created:>8}/{r.transfers}",
        flush=True,
    )


@dataclass
class StageTimes:
    """Seconds spent per pipeline stage (they overlap: each runs on its own thread)."""

    wal_s: float = 0.0
    store_s: float = 0.0

    def wal(self, seconds: float) -> None:
        self.wal_s += seconds

    def store(self, seconds: float) -> None:
        self.store_s += seconds


def print_stages(node: LedgerNode, stages: StageTimes) -> None:
    m = node.metrics
    cache = node.cache
    per = 1e6 / max(1, m.commands)
    print(
        f"  where the time goes, per command over {m.commands:,} commands in {m.batches:,} "
        f"batches: load {m.load_s * per:.1f} µs (ids not in memory: stream filter, then "
        f"PostgreSQL for those it cannot rule out), decide+chain {m.decide_s * per:.1f} µs "
        f"(decider thread); WAL append+fdatasync {stages.wal_s * per:.1f} µs; PostgreSQL "
        f"{stages.store_s * per:.1f} µs (their own threads, overlapping)",
        flush=True,
    )
    print(
        f"  ids not in memory: {cache.skipped:,} ruled out by the stream filter, "
        f"{cache.looked_up:,} looked up in PostgreSQL",
        flush=True,
    )


def print_filter(node: LedgerNode, seconds: float) -> None:
    streams = node.cache.streams
    if streams is None:
        return
    print(
        f"  cold start: {seconds:.2f} s, stream filter of {streams.count:,} streams, "
        f"{streams.size_bytes / (1 << 20):.1f} MiB for {streams.capacity:,} ids of capacity",
        flush=True,
    )


async def bench_ledger(
    url: str,
    root: Path,
    account_counts: list[int],
    batches: list[int],
    transfers: dict[int, int],
    runs: int,
) -> list[NodeResult]:
    results = []
    print(
        f"{'batch':>6} {'accounts':>8} {'choice':>8} {'transfers/s':>12} {'p50 ms':>9}"
        f" {'p99 ms':>9} {'created':>8}"
    )
    for count in account_counts:
        book = f"bench{count}"
        wal_dir = root / book
        ids = await seed_accounts(url, wal_dir, book, count)
        t0 = time.perf_counter()
        node = await open_node(url, wal_dir, book)  # cold: records load lazily
        print_filter(node, time.perf_counter() - t0)
        stages = StageTimes()
        node.recorder.observe_wal_s = stages.wal
        node.recorder.observe_store_s = stages.store
        try:
            for distribution in ("uniform", "zipf"):
                for batch in batches:
                    r = await run_config(
                        node, ids, batch, distribution, transfers[batch], runs, seed=count
                    )
                    print_row(r)
                    results.append(r)
            print_stages(node, stages)
        finally:
            await node.close()
    return results


def bench_peer(url: str, runs: int, accounts: int, transfers: int) -> dict[int, float]:
    from benchmarks.peer_eventsourcing import fresh_database, median_result, run_peer

    figures = {}
    for clients in (1, 16):
        results = []
        for run in range(runs):
            with fresh_database(url) as db:
                results.append(run_peer(db, accounts, transfers, clients, seed=run + 1))
        m = median_result(results)
        figures[clients] = m.transfers_per_s
        print(
            f"eventsourcing {clients:>2} client(s): {m.transfers_per_s:,.0f} transfers/s, "
            f"p50 {m.p50_ms:.2f} ms, p99 {m.p99_ms:.2f} ms, conflicts retried "
            f"{m.conflicts_retried}",
            flush=True,
        )
    return figures


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_node", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small run (smoke)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-peer", action="store_true")
    parser.add_argument(
        "--accounts", type=int, nargs="+", help="account counts (default 1000 100000)"
    )
    parser.add_argument(
        "--batches", type=int, nargs="+", help="batch sizes (default 1 10 100 1000)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        counts, runs = [1000], 1
        transfers = {1: 2000, 10: 5000, 100: 10_000, 1000: 20_000}
    else:
        counts, runs = [1000, 100_000], args.runs
        transfers = {1: 10_000, 10: 30_000, 100: 60_000, 1000: 100_000}
    counts = args.accounts or counts
    batches = args.batches or [1, 10, 100, 1000]
    for batch in batches:
        transfers.setdefault(batch, transfers[1000])
    pg = start_postgres("LEDGER_BENCH_DATABASE_URL")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; PostgreSQL {pg.origin}"
    )
    from benchmarks.peer_eventsourcing import fresh_database

    try:
        with (
            fresh_database(pg.url, prefix="bench_node") as db,
            tempfile.TemporaryDirectory(
                dir=os.environ.get("LEDGER_BENCH_DIR", "."), prefix=".bench-wal-"
            ) as tmp,
        ):
            upgrade(db)
            results = asyncio.run(bench_ledger(db, Path(tmp), counts, batches, transfers, runs))
        if args.no_peer:
            return 0
        peer = bench_peer(pg.url, runs, 1000, 1000 if args.quick else 3000)
        best_single = max((r.transfers_per_s for r in results if r.batch == 1), default=0.0)
        best_batch = max((r.transfers_per_s for r in results if r.batch == 1000), default=0.0)
        print(
            f"ratio: ledger batch 1000 {best_batch:,.0f}/s vs eventsourcing 16 clients "
            f"{peer[16]:,.0f}/s = {best_batch / peer[16]:.1f}x; ledger 64 single submitters "
            f"{best_single:,.0f}/s vs eventsourcing 16 clients = "
            f"{best_single / peer[16]:.1f}x"
        )
    finally:
        pg.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
