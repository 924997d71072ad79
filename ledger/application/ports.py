"""Ports: what the application needs from storage, as Protocols.

Each port has a real adapter and an in-memory fake (``ledger.adapters.memory``); one
contract suite in ``tests/contract`` runs against both, so they cannot drift apart.
The ports are synchronous: the node runs storage I/O on its single commit thread, so
the event loop keeps deciding the next batch while one is being made durable.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol
from uuid import UUID

from ledger.application.records import EventRecord

__all__ = ["EventLog", "EventStore", "SnapshotLike"]


class EventLog(Protocol):
    """The write-ahead log of one book: append-only, checksummed, hash-chained.

    ``append_batch`` writes every record and makes them durable with one ``fdatasync``
    before it returns; records must continue the chain (position ``last_position + 1``,
    ``prev_hash == last_hash``). An fsync failure is fatal and is never retried.
    """

    @property
    def last_position(self) -> int: ...

    @property
    def last_hash(self) -> bytes: ...

    def append_batch(self, records: Sequence[EventRecord]) -> None: ...

    def read(self, from_position: int = 1, to_position: int | None = None) -> Iterator[EventRecord]:
        """Records in position order, each verified (checksum, continuity, chain)."""
        ...

    def close(self) -> None: ...


class SnapshotLike(Protocol):
    """A snapshot row to save: ``ledger.adapters.postgres.SnapshotRow`` satisfies it."""

    @property
    def stream_id(self) -> str: ...

    @property
    def stream_version(self) -> int: ...

    @property
    def data(self) -> dict[str, Any]: ...


class EventStore(Protocol):
    """The PostgreSQL event store of one book (``book_id``), written by its lease holder."""

    @property
    def book_id(self) -> str: ...

    def acquire_lease(self, holder: str | None = None) -> int:
        """Take the book's writer lease, incrementing its epoch; return the new epoch.

        Raises ``LeaseHeld`` while another live node holds it.
        """
        ...

    def reassert_lease(self, epoch: int) -> None:
        """After a lost connection, confirm the lease is still ours (else ``LeaseLost``)."""
        ...

    def append_batch(
        self,
        records: Sequence[EventRecord],
        epoch: int,
        snapshots: Sequence[SnapshotLike] = (),
        watermark: int | None = None,
        *,
        pace: Callable[[], None] | None = None,
    ) -> None:
        """Insert the records (and snapshots at ``watermark``) in one transaction.

        With no records, the snapshots and the watermark alone (the node saves each
        capture so, beside the batches, after the batch at ``watermark`` committed); such
        a call may run while another thread writes a batch. ``pace``, if given, is called
        between parts of a large snapshot write (still one transaction), so the caller can
        spread the work out; a store may call it any number of times, or never.

        Checks ``epoch`` is current in the same transaction. Raises ``LeaseLost`` if another
        writer took the lease, ``EventStoreUnavailable`` when the database cannot be reached
        (retriable), ``DuplicateEvent`` if a position or event id is already stored.
        """
        ...

    def head(self) -> tuple[int, bytes]:
        """(highest position, its hash); (0, GENESIS_HASH) when empty."""
        ...

    def read_positions(
        self, from_position: int, to_position: int | None = None
    ) -> Iterator[EventRecord]: ...

    def read_stream(self, stream_id: str, after_version: int = 0) -> list[EventRecord]: ...

    def read_streams(self, stream_ids: Sequence[str]) -> dict[str, list[EventRecord]]: ...

    def load_snapshots(self, stream_ids: Sequence[str]) -> dict[str, dict[str, Any]]: ...

    def load_records(
        self, snapshot_streams: Sequence[str], creation_streams: Sequence[str]
    ) -> tuple[dict[str, dict[str, Any]], dict[str, EventRecord]]:
        """Snapshots of ``snapshot_streams`` and the version-1 event of each of
        ``creation_streams``, in one round trip."""
        ...

    def load_snapshots_where(
        self, stream_prefix: str, key: str, value: str
    ) -> list[dict[str, Any]]: ...

    def stream_ids(self, after: str, limit: int) -> list[str]:
        """Up to ``limit`` ids of the book's streams (those with a version-1 event)
        ordered after ``after``, in the store's order: page on with the last one."""
        ...

    def watermark(self) -> int:
        """Position up to which the saved snapshots describe the state (0: none)."""
        ...

    def event_ids_exist(self, event_ids: Sequence[UUID]) -> set[UUID]: ...

    def close(self) -> None: ...
