"""How long a snapshot capture holds the node's decider (the state lock), and what is left
for the snapshot stage to do afterwards.

Setup, in one process with the node's collector settings (``ledger.bootstrap.GC_THRESHOLDS``
and a freeze): a :class:`~ledger.application.cache.BookCache` with ``--accounts`` accounts
and ``--holds`` pending transfers between them, every hold then posted, as the TCC
benchmark leaves a node between two captures (each hold, its two accounts and the post
changed). Timed: ``BookCache.capture_snapshots`` (taken under the state lock: field values
only) and ``Capture.rows`` (the snapshot rows, built afterwards on the snapshot stage's
thread), against the previous way in the same run, which built every row under the lock
(``to_snapshot`` of each changed record while the decider waits). Figures are medians of
``--runs`` fresh caches; they are printed, never asserted.

Run: ``python -m benchmarks.bench_snapshot [--quick] [--runs N] [--holds N] [--accounts N]``.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
import uuid
from collections.abc import Sequence

from ledger import domain
from ledger.adapters.memory import MemoryDatabase, MemoryEventStore
from ledger.adapters.postgres import SnapshotRow
from ledger.application.cache import BookCache
from ledger.bootstrap import GC_THRESHOLDS

__all__ = ["main"]

NOW_US = 1_700_000_000_000_000


def _decide(cache: BookCache, commands: list[domain.Command], now_us: int) -> None:
    for outcome in domain.decide_batch(cache.state, commands, now_us):
        if outcome.status != "created":
            raise RuntimeError(f"setup command refused: {outcome.code} {outcome.detail}")
        for event in outcome.events:
            cache.mark_dirty(event)


def build(accounts: int, holds: int) -> BookCache:
    """A cache whose changed records are ``accounts`` accounts and ``holds`` posted holds."""
    cache = BookCache(MemoryEventStore("bench", MemoryDatabase()))
    opened = [domain.OpenAccount(id=uuid.uuid4(), ledger="USD", code=1) for _ in range(accounts)]
    _decide(cache, list(opened), NOW_US)
    half = accounts // 2
    pending = [
        domain.CreateTransfer(
            id=uuid.uuid4(),
            debit_account_id=opened[i % half].id,
            credit_account_id=opened[half + i % half].id,
            amount_minor=1,
            ledger="USD",
            code=1,
            timeout_s=60,
            flags=domain.TransferFlags(pending=True),
        )
        for i in range(holds)
    ]
    _decide(cache, list(pending), NOW_US + 1)
    posts = [
        domain.CreateTransfer(
            id=uuid.uuid4(),
            pending_id=h.id,
            flags=domain.TransferFlags(post_pending_transfer=True),
        )
        for h in pending
    ]
    _decide(cache, list(posts), NOW_US + 2)
    return cache


def rows_under_the_lock(cache: BookCache) -> list[SnapshotRow]:
    """The previous capture: every row built while the decider waits."""
    rows: list[SnapshotRow] = []
    for account_id in cache.dirty_accounts:
        account = cache.state.accounts.get(account_id)
        if account is not None:
            rows.append(SnapshotRow(f"account-{account_id}", 1, account.to_snapshot()))
    for transfer_id in cache.dirty_transfers:
        transfer = cache.state.transfers.get(transfer_id)
        if transfer is not None and transfer.flags.pending:
            rows.append(SnapshotRow(f"transfer-{transfer_id}", 1, transfer.to_snapshot()))
    cache.dirty_accounts.clear()
    cache.dirty_transfers.clear()
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_snapshot", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small run (smoke)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--holds", type=int, default=50_000)
    parser.add_argument("--accounts", type=int, default=2_000)
    args = parser.parse_args(argv)
    runs, holds = (1, 5_000) if args.quick else (args.runs, args.holds)
    gc.set_threshold(*GC_THRESHOLDS)
    held_now, built_now, held_before, rows = [], [], [], 0
    for _ in range(runs):
        for way in ("now", "before"):
            cache = build(args.accounts, holds)
            gc.collect()
            gc.freeze()
            started = time.perf_counter()
            if way == "now":
                capture = cache.capture_snapshots()
                held_now.append(time.perf_counter() - started)
                started = time.perf_counter()
                rows = len(capture.rows())
                built_now.append(time.perf_counter() - started)
            else:
                rows_under_the_lock(cache)
                held_before.append(time.perf_counter() - started)
            gc.unfreeze()
            del cache
    now, after, before = (statistics.median(x) * 1000 for x in (held_now, built_now, held_before))
    print(
        f"snapshot capture of {rows:,} rows ({holds:,} posted holds, {args.accounts:,} "
        f"accounts; median of {runs}): the decider waits {now:.0f} ms (field values), the "
        f"snapshot stage then builds the rows in {after:.0f} ms; building them under the "
        f"lock, as before: {before:.0f} ms ({before / max(now, 1e-9):.1f}x as long)",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
