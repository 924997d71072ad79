"""The recorder: the dual write (WAL first, then PostgreSQL) and its recovery.

Order. Every batch is appended to the write-ahead log and made durable with one
``fdatasync`` before it is inserted into PostgreSQL, and callers are answered only after
both. So at every instant **PostgreSQL holds exactly a prefix of the WAL, and the WAL is
ahead by at most the batches in flight** (the node runs the two steps as two pipeline
stages, so the WAL may sync batch N+1 while PostgreSQL commits batch N: at most two
batches). Batches are recorded strictly one after another by the book's only writer, so
position order is commit order in both places.

Failures. A WAL write or fsync error is fatal: the process must stop and recover from
disk, because after a failed fsync the page cache can no longer be trusted (the
"fsyncgate" lesson). A PostgreSQL error is not fatal: the batch is already durable in the
WAL, so the recorder retries the insert with bounded exponential back-off for as long as
it takes (reconnecting and re-checking the lease), while the node stops taking new work;
nothing is acknowledged until the insert commits. If the lease was taken over
(``LeaseLost``) this writer was deposed: it stops without acknowledging the batch, and the
batch stays only in this WAL, to be moved aside at its next start.

Recovery (at start, before serving): take the lease (incrementing its epoch); read the
highest position in PostgreSQL; compare the WAL's record at that position (event id and
hash; the hash chain makes one comparison cover the whole prefix); then

* WAL ahead of PostgreSQL: re-insert the WAL tail (the batch that was in flight);
* WAL behind PostgreSQL (a new disk, or a tail moved aside): copy the missing records from
  PostgreSQL into the WAL so that the invariant holds again;
* WAL diverges from PostgreSQL (written by a deposed writer): find the first differing
  position, move the WAL's conflicting tail aside into a side file, report it, and continue
  from PostgreSQL's history. Nothing is ever silently merged.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ledger.application.errors import EventStoreUnavailable, RecoveryFailed
from ledger.application.ports import EventLog, EventStore, SnapshotLike
from ledger.application.records import EventRecord

_JITTER = random.Random()
"""Back-off jitter from a generator of this module's own: the process-wide one is left alone."""

__all__ = ["Recorder", "RecoveryReport", "WalWithTail"]

_log = logging.getLogger(__name__)
RECOVERY_CHUNK = 5000


class WalWithTail(EventLog, Protocol):
    """The WAL operations recovery needs besides the port."""

    def move_tail_aside(self, after_position: int) -> Path | None: ...


@dataclass
class RecoveryReport:
    """What recovery found and did; printed at start and kept for ``/ready``."""

    epoch: int
    store_position: int
    wal_position: int
    reinserted: int = 0
    copied_to_wal: int = 0
    conflict_from: int | None = None
    conflict_file: Path | None = None
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [
            f"epoch {self.epoch}",
            f"event store at {self.store_position}",
            f"WAL at {self.wal_position}",
        ]
        if self.reinserted:
            parts.append(f"re-inserted {self.reinserted} WAL records into the event store")
        if self.copied_to_wal:
            parts.append(f"copied {self.copied_to_wal} records from the event store to the WAL")
        if self.conflict_from is not None:
            parts.append(
                f"WAL diverged from the event store at position {self.conflict_from}: "
                f"conflicting tail moved to {self.conflict_file}"
            )
        return "; ".join(parts)


class Recorder:
    """Owns the WAL → PostgreSQL order for one book (see the module docstring)."""

    def __init__(
        self,
        wal: WalWithTail,
        store: EventStore,
        *,
        retry_max_ms: int = 2000,
        on_retry: Callable[[int, BaseException], None] | None = None,
        observe_wal_s: Callable[[float], None] | None = None,
        observe_store_s: Callable[[float], None] | None = None,
    ) -> None:
        self.wal = wal
        self.store = store
        self.epoch = 0
        self.retry_max_ms = retry_max_ms
        self._on_retry = on_retry
        self.observe_wal_s = observe_wal_s
        self.observe_store_s = observe_store_s

    # -- recovery --------------------------------------------------------------------------

    def recover(self, holder: str | None = None) -> RecoveryReport:
        """Take the lease and make PostgreSQL an exact prefix of the WAL (and equal to it)."""
        self.epoch = self.store.acquire_lease(holder)
        store_pos, _ = self.store.head()
        report = RecoveryReport(self.epoch, store_pos, self.wal.last_position)
        common = min(store_pos, self.wal.last_position)
        if common > 0 and not self._same_at(common):
            diverge = self._first_difference(common)
            report.conflict_from = diverge
            report.conflict_file = self.wal.move_tail_aside(diverge - 1)
            report.notes.append(f"WAL tail from position {diverge} conflicted with the store")
            _log.warning("recovery: %s", report.summary())
        if self.wal.last_position < store_pos:
            report.copied_to_wal = self._copy_store_to_wal(store_pos)
        elif self.wal.last_position > store_pos:
            report.reinserted = self._reinsert_wal_tail(store_pos)
        head_pos, head_hash = self.store.head()
        if head_pos != self.wal.last_position or head_hash != self.wal.last_hash:
            raise RecoveryFailed(
                f"after recovery the event store is at {head_pos} and the WAL at "
                f"{self.wal.last_position}: they must be equal"
            )
        return report

    def _record_at(self, position: int) -> tuple[EventRecord, EventRecord | None]:
        wal_rec = next(iter(self.wal.read(position, position)))
        store_rec = next(iter(self.store.read_positions(position, position)), None)
        return wal_rec, store_rec

    def _same_at(self, position: int) -> bool:
        wal_rec, store_rec = self._record_at(position)
        return (
            store_rec is not None
            and store_rec.event_id == wal_rec.event_id
            and store_rec.hash == wal_rec.hash
        )

    def _first_difference(self, upto: int) -> int:
        """Smallest position <= ``upto`` where the WAL and the store differ (binary search:
        the hash chain makes "same at p" imply "same at every position before p")."""
        lo, hi = 1, upto
        while lo < hi:
            mid = (lo + hi) // 2
            if self._same_at(mid):
                lo = mid + 1
            else:
                hi = mid
        return lo

    def _copy_store_to_wal(self, upto: int) -> int:
        copied = 0
        chunk: list[EventRecord] = []
        for rec in self.store.read_positions(self.wal.last_position + 1, upto):
            chunk.append(rec)
            if len(chunk) >= RECOVERY_CHUNK:
                self.wal.append_batch(chunk)
                copied += len(chunk)
                chunk = []
        if chunk:
            self.wal.append_batch(chunk)
            copied += len(chunk)
        return copied

    def _reinsert_wal_tail(self, store_pos: int) -> int:
        inserted = 0
        chunk: list[EventRecord] = []
        for rec in self.wal.read(store_pos + 1):
            chunk.append(rec)
            if len(chunk) >= RECOVERY_CHUNK:
                self._insert_with_retry(chunk, (), None)
                inserted += len(chunk)
                chunk = []
        if chunk:
            self._insert_with_retry(chunk, (), None)
            inserted += len(chunk)
        return inserted

    # -- the commit protocol ---------------------------------------------------------------

    def commit(
        self,
        records: Sequence[EventRecord],
        snapshots: Sequence[SnapshotLike] = (),
        watermark: int | None = None,
    ) -> None:
        """1. WAL append + fdatasync (fatal on error); 2. PostgreSQL in one transaction,
        retried until it commits. Returns only when both hold the batch."""
        self.append(records)
        self.insert(records, snapshots, watermark)

    def append(self, records: Sequence[EventRecord]) -> None:
        """Step 1 alone: the batch is durable in the WAL when this returns."""
        if records:
            t0 = time.perf_counter()
            self.wal.append_batch(records)
            if self.observe_wal_s:
                self.observe_wal_s(time.perf_counter() - t0)

    def insert(
        self,
        records: Sequence[EventRecord],
        snapshots: Sequence[SnapshotLike] = (),
        watermark: int | None = None,
        *,
        pace: Callable[[], None] | None = None,
    ) -> None:
        """Step 2 alone (after :meth:`append` of the same batch): PostgreSQL, retried.
        With no records: the snapshots and the watermark alone (``pace``: see
        :meth:`EventStore.append_batch`)."""
        if records or snapshots or watermark is not None:
            t1 = time.perf_counter()
            self._insert_with_retry(records, snapshots, watermark, pace)
            if self.observe_store_s:
                self.observe_store_s(time.perf_counter() - t1)

    def _insert_with_retry(
        self,
        records: Sequence[EventRecord],
        snapshots: Sequence[SnapshotLike],
        watermark: int | None,
        pace: Callable[[], None] | None = None,
    ) -> None:
        attempt = 0
        delay_ms = 10.0
        while True:
            try:
                self.store.append_batch(records, self.epoch, snapshots, watermark, pace=pace)
                return
            except EventStoreUnavailable as exc:
                attempt += 1
                if self._on_retry:
                    self._on_retry(attempt, exc)
                if attempt in (1, 10) or attempt % 100 == 0:
                    _log.warning("event store unavailable (attempt %d): %s", attempt, exc)
                time.sleep(delay_ms / 1000 * (0.5 + _JITTER.random() / 2))
                delay_ms = min(delay_ms * 2, float(self.retry_max_ms))
                self._reassert_lease()
                if records and self._already_stored(records):
                    # The commit reached PostgreSQL but its acknowledgement was lost.
                    return

    def _reassert_lease(self) -> None:
        with contextlib.suppress(EventStoreUnavailable):
            self.store.reassert_lease(self.epoch)

    def _already_stored(self, records: Sequence[EventRecord]) -> bool:
        try:
            found = self.store.event_ids_exist([records[0].event_id, records[-1].event_id])
        except EventStoreUnavailable:
            return False
        if len(found) == 2:
            return True
        if found:
            raise RecoveryFailed(
                f"batch {records[0].position}..{records[-1].position} is partly stored: "
                "a transaction was split, which must not happen"
            )
        return False

    def close(self) -> None:
        self.wal.close()
        self.store.close()
