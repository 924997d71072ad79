"""The node's in-memory state of its book, and how it is filled from storage.

Since the node is the only writer, its cache is authoritative: a record that is in memory
is current. A record that is not in memory has not changed since the snapshot watermark,
so its snapshot (accounts, pending transfers) or its creating event (transfers that are
not holds never change) is current too. At start the cache reads the id of every stream
of the book into a :class:`~ledger.application.loading.StreamFilter`, loads every open
hold (so expiry finds them) and replays the events after the watermark.

Ids that are not in memory are looked up in PostgreSQL, except those the filter says were
never stored: a new transfer's id, the common case, then costs no round trip. The filter
must never miss a stored stream, so :meth:`BookCache.applied` adds every stream the node
creates, in the batch that creates it. Until the filter is built every id is looked up.

Snapshots: the cache remembers which records changed since the last snapshot; every
``snapshot_every_events`` events the node captures those records as of the batch that
reaches the threshold, whose last position becomes the new watermark, and saves them in
a PostgreSQL transaction of their own once that batch has committed (beside the batches
that follow; the watermark moves only with the rows).

All methods run on the node's decider thread (or before it starts).
"""

from __future__ import annotations

import logging
import operator
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import fields
from typing import Any, Final
from uuid import UUID

from ledger import domain
from ledger.adapters.postgres import SnapshotRow
from ledger.application.errors import EventStoreUnavailable
from ledger.application.loading import (
    StreamFilter,
    created_record,
    event_references,
    transfer_from_event,
)
from ledger.application.ports import EventStore

__all__ = ["BookCache", "Capture"]

_log = logging.getLogger(__name__)
LOAD_ATTEMPTS_MAX = 10_000
STREAM_PAGE_ROWS = 50_000
FILTER_CAPACITY_MIN = 1 << 20
PROGRESS_EVERY_S = 5.0


class BookCache:
    """``state`` plus lazy loading (behind the stream filter) and snapshot bookkeeping."""

    def __init__(
        self,
        store: EventStore,
        *,
        load_retry_max_ms: int = 2000,
        stopping: Callable[[], bool] = lambda: False,
    ) -> None:
        self.store = store
        self.state = domain.BookState()
        self.dirty_accounts: set[UUID] = set()
        self.dirty_transfers: set[UUID] = set()
        self.streams: StreamFilter | None = None
        """Every stream ever stored in the book (None until :meth:`build_stream_filter`)."""
        self.looked_up = 0
        """Ids asked of the event store (those the filter could not rule out)."""
        self.skipped = 0
        """References to ids not in memory that the filter ruled out (no round trip)."""
        self._load_retry_max_ms = load_retry_max_ms
        self._stopping = stopping

    # -- at start ------------------------------------------------------------------------

    def load_tail(self, head: int) -> int:
        """Build the stream filter, load the open holds, then replay events after the
        watermark; return the watermark."""
        self.build_stream_filter(head)
        watermark = self.store.watermark()
        holds = [
            domain.Transfer.from_snapshot(data)
            for data in self.store.load_snapshots_where("transfer-", "pending_status", "pending")
        ]
        for hold in holds:
            self.state.add_transfer(hold)
        hold_accounts = {a for h in holds for a in (h.debit_account_id, h.credit_account_id)}
        self.load(hold_accounts, set(), from_events=False)
        tail = list(self.store.read_positions(watermark + 1, head))
        events = [domain.event_from_data(r.type, r.schema_version, dict(r.data)) for r in tail]
        accounts: set[UUID] = set()
        transfers: set[UUID] = set()
        for event in events:
            a, t = event_references(event)
            accounts.update(a)
            transfers.update(t)
        self.load(accounts, transfers, from_events=False)
        for event in events:
            domain.evolve(self.state, event)
            self.mark_dirty(event)  # stored events: the filter has their streams already
        return watermark

    def build_stream_filter(self, head: int) -> StreamFilter:
        """Read every stream id of the book (one index-only scan, in pages) into a new
        filter, sized for twice the ``head`` events (an event creates at most one
        stream), and start using it. Call after recovery and before deciding."""
        started = time.monotonic()
        streams = StreamFilter(max(FILTER_CAPACITY_MIN, 2 * head))
        after = ""
        read = 0
        report_at = started + PROGRESS_EVERY_S
        while True:
            page = self.store.stream_ids(after, STREAM_PAGE_ROWS)
            streams.add_stream_ids(page)
            read += len(page)
            if len(page) < STREAM_PAGE_ROWS:
                break
            after = page[-1]
            if time.monotonic() >= report_at:
                report_at += PROGRESS_EVERY_S
                _log.info(
                    "stream filter: %d stream ids read (of at most %d) in %.1f s",
                    read,
                    head,
                    time.monotonic() - started,
                )
        self.streams = streams
        _log.info(
            "stream filter: %d streams in %.1f s; %.1f MiB for %d ids of capacity",
            streams.count,
            time.monotonic() - started,
            streams.size_bytes / (1 << 20),
            streams.capacity,
        )
        return streams

    # -- before deciding -----------------------------------------------------------------

    def ensure_loaded(self, commands: Sequence[domain.Command]) -> None:
        """Load every record the commands refer to that is not in memory: transfers
        first, then accounts, including those of a pending transfer that a post or void
        refers to without naming its accounts."""
        known_a = self.state.accounts
        known_t = self.state.transfers
        accounts: list[UUID] = []
        transfers: list[UUID] = []
        pending_ids: list[UUID] = []
        create = domain.CreateTransfer
        nil = domain.NIL_ID
        for c in commands:
            if type(c) is create and c.pending_id is None:
                # The hot path, without the generic calls: a single-phase or pending
                # transfer refers to its own id and its two accounts (nil ones left out).
                if c.id not in known_t:
                    transfers.append(c.id)
                a = c.debit_account_id
                if a not in known_a and a != nil:
                    accounts.append(a)
                a = c.credit_account_id
                if a not in known_a and a != nil:
                    accounts.append(a)
                continue
            for a in c.referenced_account_ids():
                if a not in known_a:
                    accounts.append(a)
            for t in c.referenced_transfer_ids():
                if t not in known_t:
                    transfers.append(t)
            pending_id = getattr(c, "pending_id", None)
            if pending_id is not None:
                pending_ids.append(pending_id)
        if transfers:
            self.load((), transfers, from_events=True)
        for pending_id in pending_ids:
            pending = known_t.get(pending_id)
            if pending is not None:
                for a in (pending.debit_account_id, pending.credit_account_id):
                    if a not in known_a:
                        accounts.append(a)
        if accounts:
            self.load(accounts, (), from_events=True)

    def load(
        self, accounts: Collection[UUID], transfers: Collection[UUID], from_events: bool
    ) -> None:
        """:meth:`_load_once` of the ids that may be stored, retried with bounded back-off
        while PostgreSQL is away."""
        streams = self.streams
        if streams is None:
            wanted_a, wanted_t = set(accounts), set(transfers)
        else:
            wanted_a = streams.accounts_maybe_stored(accounts) if accounts else set()
            wanted_t = streams.transfers_maybe_stored(transfers) if transfers else set()
            self.skipped += len(accounts) + len(transfers) - len(wanted_a) - len(wanted_t)
        if not wanted_a and not wanted_t:
            return
        self.looked_up += len(wanted_a) + len(wanted_t)
        delay_s = 0.01
        attempt = 0
        while True:
            try:
                self._load_once(wanted_a, wanted_t, from_events)
                return
            except EventStoreUnavailable as exc:
                attempt += 1
                if self._stopping() or attempt > LOAD_ATTEMPTS_MAX:
                    raise
                if attempt in (1, 10):
                    _log.warning("loading records: event store unavailable: %s", exc)
                time.sleep(delay_s)
                delay_s = min(delay_s * 2, self._load_retry_max_ms / 1000)

    def _load_once(self, accounts: set[UUID], transfers: set[UUID], from_events: bool) -> None:
        account_streams = [f"account-{a}" for a in accounts]
        transfer_streams = [f"transfer-{t}" for t in transfers]
        snaps, firsts = self.store.load_records(
            account_streams + transfer_streams, transfer_streams if from_events else []
        )
        state = self.state
        for stream_id, data in snaps.items():
            if stream_id.startswith("account-"):
                account = domain.Account.from_snapshot(data)
                if account.id not in state.accounts:
                    state.add_account(account)
            else:
                transfer = domain.Transfer.from_snapshot(data)
                if transfer.id not in state.transfers:
                    state.add_transfer(transfer)
        for stream_id, first in firsts.items():
            if stream_id in snaps:
                continue
            event = domain.event_from_data(first.type, first.schema_version, dict(first.data))
            if isinstance(event, domain.PendingTransferForbidden):
                state.forbidden.setdefault(event.pending_id, event.transfer_id)
                continue
            transfer = transfer_from_event(event)
            if transfer.id not in state.transfers:
                state.add_transfer(transfer)

    # -- snapshots -----------------------------------------------------------------------

    def applied(self, event: domain.Event) -> None:
        """Bookkeeping for an event the node decided: the stream it creates joins the
        filter (before the next batch is decided), and what it changed is remembered for
        the next snapshot."""
        streams = self.streams
        if type(event) is domain.TransferCreated and not event.flags.pending:
            # The hot path, with mark_dirty's first case inlined.
            if streams is not None:
                streams.add_transfer(event.transfer_id)
            self.dirty_accounts.add(event.debit_account_id)
            self.dirty_accounts.add(event.credit_account_id)
            return
        if streams is not None:
            created = created_record(event)
            if created is not None:
                is_account, record_id = created
                if is_account:
                    streams.add_account(record_id)
                else:
                    streams.add_transfer(record_id)
        self.mark_dirty(event)

    def mark_dirty(self, event: domain.Event) -> None:
        """Remember what the event changed, for the next snapshot. Transfers that are
        not holds never change after creation and are never snapshotted, so a plain
        ``TransferCreated`` (the hot path) only marks its two accounts, and a post or
        void marks its accounts and the hold it resolves."""
        if type(event) is domain.TransferCreated and not event.flags.pending:
            self.dirty_accounts.add(event.debit_account_id)
            self.dirty_accounts.add(event.credit_account_id)
            return
        if isinstance(event, domain.PendingTransferPosted | domain.PendingTransferVoided):
            # the post or void itself is a transfer that never changes: only the hold
            self.dirty_accounts.add(event.debit_account_id)
            self.dirty_accounts.add(event.credit_account_id)
            self.dirty_transfers.add(event.pending_id)
            return
        accounts, transfers = event_references(event)
        self.dirty_accounts.update(accounts)
        self.dirty_transfers.update(transfers)

    def capture_snapshots(self) -> Capture:
        """Every record changed since the last capture (holds only for transfers: other
        transfers never change and reload from their event), as its field values now.
        Taking the values is all that happens here, under the state lock: turning them
        into snapshot rows (:meth:`Capture.rows`) is left to the thread that saves them.
        A hold that is no longer pending (posted, voided, expired) never changes again, so
        it is kept by reference, not copied: in a node that posts what it holds, as a TCC
        participant does, those are nearly all of a capture's rows."""
        accounts = self.state.accounts
        transfers = self.state.transfers
        account_values = []
        for account_id in self.dirty_accounts:
            account = accounts.get(account_id)
            if account is not None:
                account_values.append(_ACCOUNT_VALUES(account))
        transfer_values = []
        resolved = []
        pending = domain.PendingStatus.pending
        for transfer_id in self.dirty_transfers:
            transfer = transfers.get(transfer_id)
            if transfer is None or not transfer.flags.pending:
                continue
            if transfer.pending_status is pending:
                transfer_values.append(_TRANSFER_VALUES(transfer))
            else:
                resolved.append(transfer)
        self.dirty_accounts.clear()
        self.dirty_transfers.clear()
        return Capture(account_values, transfer_values, resolved)


_ACCOUNT_VALUES: Final = operator.attrgetter(*(f.name for f in fields(domain.Account)))
_TRANSFER_VALUES: Final = operator.attrgetter(*(f.name for f in fields(domain.Transfer)))
"""Every field of the record, in constructor order (one C call: a capture of tens of
thousands of records holds the decider for milliseconds, not for the hundreds it takes to
build their snapshots). The values are immutable or never changed in place (``metadata``
and ``flags`` are replaced, not edited), so the tuple keeps the state as of the capture."""


class Capture:
    """A snapshot capture: the field values of the records that changed since the last one,
    as of the capture's watermark."""

    __slots__ = ("_accounts", "_resolved", "_transfers")

    def __init__(
        self,
        accounts: list[tuple[Any, ...]],
        transfers: list[tuple[Any, ...]],
        resolved: Sequence[domain.Transfer] = (),
    ) -> None:
        self._accounts = accounts
        self._transfers = transfers
        self._resolved = resolved
        """Holds that were no longer pending at the capture: final, so taken as they are."""

    def __len__(self) -> int:
        return len(self._accounts) + len(self._transfers) + len(self._resolved)

    def rows(
        self, *, every: int = 0, pause: Callable[[], None] = lambda: None
    ) -> list[SnapshotRow]:
        """The snapshot rows, calling ``pause`` after every ``every`` rows (0: never), so
        a thread building a large capture lets the others have the interpreter."""
        out: list[SnapshotRow] = []
        append = out.append
        n = 0
        for prefix, record in self._records():
            append(SnapshotRow(f"{prefix}-{record.id}", 1, record.to_snapshot()))
            n += 1
            if n == every:
                pause()
                n = 0
        return out

    def _records(self) -> Iterator[tuple[str, domain.Account | domain.Transfer]]:
        for values in self._accounts:
            yield "account", domain.Account(*values)
        for values in self._transfers:
            yield "transfer", domain.Transfer(*values)
        for transfer in self._resolved:
            yield "transfer", transfer
