"""The coordinator journal's two stages: the WAL stage's thread hands each fsynced batch to
the store stage's thread, in order, and after one insert fails nothing queued behind it is
inserted (PostgreSQL must hold a prefix of the WAL)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ledger.adapters.memory import MemoryEventStore
from ledger.adapters.wal import FileWal, open_wal
from ledger.application.errors import LeaseLost
from ledger.application.recorder import Recorder
from ledger.application.records import EventRecord
from ledger.sagas.journal import CallStarted, Journal, JournalFailed


class GatedStore(MemoryEventStore):
    """Holds the first insert until released, then fails it or lets it through."""

    def __init__(self, fail_first: bool) -> None:
        super().__init__("coordinator")
        self.fail_first = fail_first
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.inserts: list[list[int]] = []

    def append_batch(
        self,
        records: Sequence[EventRecord],
        epoch: int,
        snapshots: Sequence[Any] = (),
        watermark: int | None = None,
        *,
        pace: Any = None,
    ) -> None:
        first = not self.inserts
        self.inserts.append([r.position for r in records])
        if first:
            self.entered.set()
            assert self.gate.wait(10)
            if self.fail_first:
                raise LeaseLost("taken over while the batch was in flight")
        super().append_batch(records, epoch, snapshots, watermark)


def _event(gid: str) -> CallStarted:
    return CallStarted(gid=gid, branch_id="b1", op="try", attempt=1, at_us=1)


async def _two_batches(store: GatedStore, wal: FileWal) -> list[BaseException | None]:
    journal = Journal(Recorder(wal, store), lambda: 1)
    journal.recover()
    journal.start()
    journal.open_stream("tcc-a")
    journal.open_stream("tcc-b")
    first = asyncio.create_task(journal.record("tcc-a", [_event("a")]))
    assert await asyncio.to_thread(store.entered.wait, 10)
    # The first batch is in the store stage; the second is written to the WAL and queued
    # behind it.
    second = asyncio.create_task(journal.record("tcc-b", [_event("b")]))
    deadline = time.monotonic() + 10
    while wal.last_position < 2 and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.001)  # (the WAL stage's thread has no event to wait on)
    assert wal.last_position == 2
    store.gate.set()
    results = await asyncio.gather(first, second, return_exceptions=True)
    await journal.close()
    return [r if isinstance(r, BaseException) else None for r in results]


def test_batches_reach_the_store_in_order_through_the_stage_threads(tmp_path: Path) -> None:
    store, (wal, _) = GatedStore(fail_first=False), open_wal(tmp_path, 1 << 16)
    assert asyncio.run(_two_batches(store, wal)) == [None, None]
    assert store.inserts == [[1], [2]]
    assert store.head()[0] == 2


def test_after_a_failed_insert_the_batch_queued_behind_it_is_not_inserted(
    tmp_path: Path,
) -> None:
    store, (wal, _) = GatedStore(fail_first=True), open_wal(tmp_path, 1 << 16)
    results = asyncio.run(_two_batches(store, wal))
    assert all(isinstance(r, JournalFailed) for r in results), results
    # Only the first batch was tried: the second, already in the WAL, was refused, so
    # PostgreSQL still holds a prefix of the WAL (recovery re-inserts the tail).
    assert store.inserts == [[1]]
    assert store.head()[0] == 0
