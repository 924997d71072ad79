"""SIGKILL a loaded node at random moments; after each restart nothing acknowledged is lost.

Method: a child process runs a node on real PostgreSQL and a real WAL directory with 16
concurrent submitters and prints every acknowledged outcome. The parent kills it with
SIGKILL after a random delay, then checks, before and after recovery:

* PostgreSQL holds exactly a prefix of the WAL (same event ids and hashes);
* every acknowledged ``created`` transfer is stored exactly once, every acknowledged
  ``rejected`` one not at all;
* the balances the recovered node serves equal a replay of all stored events from empty
  state, and Σ debits = Σ credits (posted and pending).

5 cycles in the normal suite; ``--slow`` runs 50.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import psycopg

from ledger import domain
from ledger.adapters.postgres import PostgresEventStore
from ledger.adapters.wal import open_wal
from ledger.application.node import LedgerNode, NodeConfig
from ledger.application.recorder import Recorder
from tests.integration.crash_child import BOOK, account_ids

ROOT = Path(__file__).resolve().parents[2]


def run_child_and_kill(
    url: str, wal_dir: Path, seed: int, rng: random.Random
) -> list[dict[str, str]]:
    err_path = wal_dir.parent / f"child-{seed}.err"
    acked: list[dict[str, str]] = []
    ready = threading.Event()
    with (
        open(err_path, "wb") as err,
        subprocess.Popen(
            [sys.executable, "-m", "tests.integration.crash_child", url, str(wal_dir), str(seed)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=err,
        ) as proc,
    ):

        def reader() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                msg = orjson.loads(line)
                if "ready" in msg:
                    ready.set()
                else:
                    acked.append(msg)

        t = threading.Thread(target=reader, daemon=True)
        t.start()
        if not ready.wait(60):
            proc.kill()
            proc.wait()
            raise AssertionError(f"child did not start: {err_path.read_text()[-3000:]}")
        time.sleep(rng.uniform(0.2, 1.2))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        t.join(10)
    assert proc.returncode == -signal.SIGKILL, err_path.read_text()[-3000:]
    return acked


def check_store_is_prefix_of_wal(url: str, wal_dir: Path) -> None:
    wal, _ = open_wal(wal_dir, 256 * 1024)
    store = PostgresEventStore(url, BOOK)
    try:
        head, _ = store.head()
        assert wal.last_position >= head, f"WAL at {wal.last_position} behind store at {head}"
        stored = list(store.read_positions(1, head))
        logged = list(wal.read(1, head))
        assert [(r.position, r.event_id, r.hash) for r in stored] == [
            (r.position, r.event_id, r.hash) for r in logged
        ]
    finally:
        wal.close()
        store.close()


def check_after_recovery(url: str, wal_dir: Path, acked: list[dict[str, str]]) -> int:
    async def scenario() -> int:
        wal, _ = open_wal(wal_dir, 256 * 1024)
        store = PostgresEventStore(url, BOOK)
        node = await LedgerNode.open(Recorder(wal, store), NodeConfig(), expire_pending=False)
        try:
            head, _ = store.head()
            assert wal.last_position == head
            served = {}
            for a in account_ids():
                account = await node.read_account(a)
                assert account is not None
                served[a] = (
                    account.debits_pending,
                    account.debits_posted,
                    account.credits_pending,
                    account.credits_posted,
                )
            replayed = domain.BookState()
            for r in store.read_positions(1):
                domain.evolve(
                    replayed, domain.event_from_data(r.type, r.schema_version, dict(r.data))
                )
            assert {
                a: (x.debits_pending, x.debits_posted, x.credits_pending, x.credits_posted)
                for a, x in replayed.accounts.items()
            } == served
            for field in ("posted", "pending"):
                debits = sum(getattr(x, f"debits_{field}") for x in replayed.accounts.values())
                credits = sum(getattr(x, f"credits_{field}") for x in replayed.accounts.values())
                assert debits == credits, field
            return head
        finally:
            await node.close()

    head = asyncio.run(scenario())
    created = [a["id"] for a in acked if a["status"] == "created"]
    rejected = [a["id"] for a in acked if a["status"] == "rejected"]
    with psycopg.connect(url.replace("+psycopg", "")) as conn:
        counts: dict[str, int] = dict(
            conn.execute(
                "SELECT stream_id, count(*) FROM events WHERE book_id = %s "
                "AND stream_id = ANY(%s) GROUP BY stream_id",
                (BOOK, [f"transfer-{i}" for i in created + rejected]),
            ).fetchall()
        )
    missing = [i for i in created if counts.get(f"transfer-{i}") != 1]
    assert not missing, f"{len(missing)} acknowledged transfers lost, e.g. {missing[:3]}"
    stored_rejected = [i for i in rejected if f"transfer-{i}" in counts]
    assert not stored_rejected, f"rejected transfers stored: {stored_rejected[:3]}"
    return head


def test_sigkill_under_load_loses_nothing_acknowledged(
    database_url: str, tmp_path: Path, slow: bool
) -> None:
    cycles = 50 if slow else 5
    rng = random.Random(20261125)
    wal_dir = tmp_path / "wal"
    total_acked = 0
    positions = []
    for cycle in range(cycles):
        acked = run_child_and_kill(database_url, wal_dir, cycle + 1, rng)
        assert acked, f"cycle {cycle}: nothing was acknowledged before the kill"
        total_acked += len(acked)
        check_store_is_prefix_of_wal(database_url, wal_dir)
        positions.append(check_after_recovery(database_url, wal_dir, acked))
    assert positions == sorted(positions) and positions[-1] > positions[0]
    assert total_acked > cycles * 10
