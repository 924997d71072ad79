"""One contract, two adapters: the PostgreSQL event store and its in-memory fake."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from ledger.adapters.memory import MemoryDatabase, MemoryEventStore
from ledger.adapters.postgres import (
    SNAPSHOT_COPY_ROWS,
    PostgresEventStore,
    SnapshotRow,
    _text_array,
)
from ledger.application.errors import DuplicateEvent, LeaseHeld, LeaseLost
from ledger.application.ports import EventStore
from ledger.application.records import (
    GENESIS_HASH,
    EventRecord,
    PendingRecord,
    chain_records,
)


def make_records(
    n: int, first: int = 1, prev: bytes = GENESIS_HASH, stream: str | None = None
) -> list[EventRecord]:
    pending = [
        PendingRecord(
            event_id=uuid.uuid4(),
            stream_id=stream or f"transfer-{uuid.uuid4()}",
            stream_version=1 if stream is None else first + i,
            type="TransferCreated",
            schema_version=1,
            recorded_at_us=1_700_000_000_000_000 + i,
            data={"amount_minor": i + 1, "note": "x" * 10},
        )
        for i in range(n)
    ]
    return chain_records(pending, first, prev)


class EventStoreContract:
    """Behaviour every EventStore adapter must have (not collected itself)."""

    def make_store(self) -> EventStore:
        raise NotImplementedError

    def make_peer(self, store: EventStore) -> EventStore:
        """A second store on the same database and book (another node)."""
        raise NotImplementedError

    def release(self, store: EventStore) -> None:
        store.close()

    def test_empty_store_has_genesis_head(self) -> None:
        store = self.make_store()
        assert store.head() == (0, GENESIS_HASH)
        assert list(store.read_positions(1)) == []

    def test_appends_and_reads_back_in_position_order(self) -> None:
        store = self.make_store()
        epoch = store.acquire_lease("a")
        batch1 = make_records(3)
        batch2 = make_records(2, first=4, prev=batch1[-1].hash)
        store.append_batch(batch1, epoch)
        store.append_batch(batch2, epoch)
        assert store.head() == (5, batch2[-1].hash)
        got = list(store.read_positions(1))
        assert [r.position for r in got] == [1, 2, 3, 4, 5]
        assert got == batch1 + batch2
        assert [r.position for r in store.read_positions(2, 4)] == [2, 3, 4]

    def test_reads_a_stream_by_version(self) -> None:
        store = self.make_store()
        epoch = store.acquire_lease("a")
        records = make_records(3, stream="account-1")
        store.append_batch(records, epoch)
        assert [r.stream_version for r in store.read_stream("account-1")] == [1, 2, 3]
        assert [r.stream_version for r in store.read_stream("account-1", after_version=2)] == [3]
        both = store.read_streams(["account-1", "nope"])
        assert list(both) == ["account-1"] and len(both["account-1"]) == 3

    def test_second_writer_is_refused_while_first_lives(self) -> None:
        store = self.make_store()
        store.acquire_lease("first")
        peer = self.make_peer(store)
        with pytest.raises(LeaseHeld, match="already being written"):
            peer.acquire_lease("second")

    def test_deposed_writer_cannot_commit(self) -> None:
        store = self.make_store()
        old_epoch = store.acquire_lease("first")
        self.release(store)
        peer = self.make_peer(store)
        new_epoch = peer.acquire_lease("second")
        assert new_epoch == old_epoch + 1
        with pytest.raises(LeaseLost):
            store.append_batch(make_records(1), old_epoch)
        assert peer.head() == (0, GENESIS_HASH)

    def test_duplicate_event_id_rejects_the_whole_batch(self) -> None:
        store = self.make_store()
        epoch = store.acquire_lease("a")
        first = make_records(2)
        store.append_batch(first, epoch)
        again = make_records(3, first=3, prev=first[-1].hash)
        clash = EventRecord(
            again[1].position,
            first[0].event_id,
            again[1].stream_id,
            1,
            again[1].type,
            1,
            again[1].recorded_at_us,
            again[1].data,
            again[1].prev_hash,
            again[1].hash,
        )
        with pytest.raises(DuplicateEvent):
            store.append_batch([again[0], clash, again[2]], epoch)
        assert store.head() == (2, first[-1].hash)

    def test_duplicate_position_is_refused(self) -> None:
        store = self.make_store()
        epoch = store.acquire_lease("a")
        store.append_batch(make_records(2), epoch)
        with pytest.raises(DuplicateEvent):
            store.append_batch(make_records(1, first=2), epoch)

    def test_snapshots_and_watermark_round_trip(self) -> None:
        store = self.make_store()
        epoch = store.acquire_lease("a")
        records = make_records(4)
        snaps = [
            SnapshotRow("account-a", 1, {"id": "a", "debits_posted": 5}),
            SnapshotRow("transfer-t", 1, {"id": "t", "status": "pending"}),
        ]
        assert store.watermark() == 0
        store.append_batch(records, epoch, snaps, 4)
        assert store.watermark() == 4
        got = store.load_snapshots(["account-a", "account-zzz"])
        assert got == {"account-a": {"id": "a", "debits_posted": 5}}
        pend = store.load_snapshots_where("transfer-", "status", "pending")
        assert pend == [{"id": "t", "status": "pending"}]
        newer = [SnapshotRow("transfer-t", 2, {"id": "t", "status": "posted"})]
        store.append_batch([], epoch, newer, 4)
        assert store.load_snapshots_where("transfer-", "status", "pending") == []

    def test_snapshots_alone_move_the_watermark_and_check_the_epoch(self) -> None:
        store = self.make_store()
        epoch = store.acquire_lease("a")
        store.append_batch(make_records(6), epoch)
        store.append_batch([], epoch, [SnapshotRow("account-a", 1, {"id": "a"})], 6)
        assert store.watermark() == 6
        assert store.load_snapshots(["account-a"]) == {"account-a": {"id": "a"}}
        store.append_batch([], epoch, [], 6)  # a capture with no changed row
        assert store.watermark() == 6
        store.append_batch(make_records(1, first=7), epoch)  # batches go on meanwhile
        assert store.head()[0] == 7
        self.release(store)
        other = self.make_peer(store)
        other.acquire_lease("b")
        with pytest.raises(LeaseLost):
            store.append_batch([], epoch, [SnapshotRow("account-a", 2, {"id": "x"})], 7)
        assert other.load_snapshots(["account-a"]) == {"account-a": {"id": "a"}}
        assert other.watermark() == 6

    @pytest.mark.parametrize("paced", [False, True], ids=["at-once", "paced"])
    def test_a_large_capture_is_saved_whole_with_its_watermark(self, paced: bool) -> None:
        store = self.make_store()
        epoch = store.acquire_lease("a")
        store.append_batch(make_records(3), epoch)
        n = 10_003
        rows = [SnapshotRow(f"account-{i:05d}", 1, {"id": i, "debits_posted": i}) for i in range(n)]
        pauses: list[int] = []
        pace = (lambda: pauses.append(store.watermark())) if paced else None
        store.append_batch([], epoch, rows, 3, pace=pace)
        # while it was spread out, the old watermark stood: the rows move it only whole
        assert all(w == 0 for w in pauses)
        assert store.watermark() == 3
        ids = [f"account-{i:05d}" for i in range(n)]
        got = store.load_snapshots(ids)
        assert len(got) == n
        assert all(got[f"account-{i:05d}"] == {"id": i, "debits_posted": i} for i in range(n))
        # a later capture updates the first row and the last one, and only those
        later = [
            SnapshotRow(f"account-{i:05d}", 2, {"id": i, "debits_posted": -i}) for i in (0, n - 1)
        ]
        store.append_batch(make_records(1, first=4), epoch)
        store.append_batch([], epoch, later, 4)
        assert store.watermark() == 4
        again = store.load_snapshots([ids[0], ids[1], ids[-1]])
        assert again == {
            ids[0]: {"id": 0, "debits_posted": 0},
            ids[1]: {"id": 1, "debits_posted": 1},
            ids[-1]: {"id": n - 1, "debits_posted": -(n - 1)},
        }

    def test_reports_which_event_ids_exist(self) -> None:
        store = self.make_store()
        epoch = store.acquire_lease("a")
        records = make_records(2)
        store.append_batch(records, epoch)
        unknown = uuid.uuid4()
        assert store.event_ids_exist([records[0].event_id, unknown]) == {records[0].event_id}

    def test_stream_ids_page_through_every_created_stream_of_the_book(self) -> None:
        store = self.make_store()
        epoch = store.acquire_lease("a")
        created = make_records(7)
        store.append_batch(created, epoch)
        [second] = chain_records(  # a version-2 event creates no stream
            [
                PendingRecord(
                    uuid.uuid4(), created[0].stream_id, 2, "PendingTransferExpired", 1, 9, {}
                )
            ],
            8,
            created[-1].hash,
        )
        store.append_batch([second], epoch)
        other = self.make_other_book(store)
        other.append_batch(make_records(3), other.acquire_lease("b"))
        pages: list[list[str]] = []
        after = ""
        while True:
            page = store.stream_ids(after, 3)
            pages.append(page)
            if len(page) < 3:
                break
            after = page[-1]
        assert [len(p) for p in pages] == [3, 3, 1]
        assert [s for p in pages for s in p] == sorted(r.stream_id for r in created)
        assert store.stream_ids(max(r.stream_id for r in created), 10) == []

    def make_other_book(self, store: EventStore) -> EventStore:
        """A store of another book on the same database."""
        raise NotImplementedError


class EscapingContract(EventStoreContract):
    def test_data_with_escapes_and_unicode_round_trips(self) -> None:
        store = self.make_store()
        epoch = store.acquire_lease("a")
        tricky = {"memo": 'tab\there\nnew "quote" back\\slash \\N ünï 💶', "n": -(2**63)}
        [record] = chain_records(
            [PendingRecord(uuid.uuid4(), "transfer-esc", 1, "TransferCreated", 1, 5, tricky)],
            1,
            GENESIS_HASH,
        )
        store.append_batch([record], epoch)
        [back] = list(store.read_positions(1))
        assert back.data == tricky
        assert back == record


class TestMemoryEventStore(EscapingContract):
    def make_store(self) -> EventStore:
        return MemoryEventStore(f"book-{uuid.uuid4().hex[:6]}")

    def make_peer(self, store: EventStore) -> EventStore:
        assert isinstance(store, MemoryEventStore)
        return MemoryEventStore(store.book_id, store.db)

    def make_other_book(self, store: EventStore) -> EventStore:
        assert isinstance(store, MemoryEventStore)
        return MemoryEventStore(store.book_id + "-other", store.db)


class TestPostgresEventStore(EscapingContract):
    @pytest.fixture(autouse=True)
    def _database(self, database_url: str) -> Iterator[None]:
        self.url = database_url
        self.opened: list[PostgresEventStore] = []
        yield
        for store in self.opened:
            store.close()

    def make_store(self) -> EventStore:
        store = PostgresEventStore(self.url, f"book-{uuid.uuid4().hex[:6]}")
        self.opened.append(store)
        return store

    def make_peer(self, store: EventStore) -> EventStore:
        peer = PostgresEventStore(self.url, store.book_id)
        self.opened.append(peer)
        return peer

    def make_other_book(self, store: EventStore) -> EventStore:
        other = PostgresEventStore(self.url, store.book_id + "-other")
        self.opened.append(other)
        return other

    def test_a_paced_capture_is_one_transaction(self) -> None:
        """Spread over slices, a capture is still all or nothing: a failure after some
        slices went in leaves neither their rows nor the new watermark, and a reader on
        another connection sees none of them meanwhile."""
        store = self.make_store()
        epoch = store.acquire_lease("a")
        store.append_batch(make_records(2), epoch)
        store.append_batch([], epoch, [SnapshotRow("account-00000", 1, {"v": "old"})], 1)
        n = 3 * SNAPSHOT_COPY_ROWS + 5
        rows = [SnapshotRow(f"account-{i:05d}", 2, {"v": i}) for i in range(n)]
        seen: list[tuple[int, dict[str, Any]]] = []
        reader = self.make_peer(store)

        def pace() -> None:
            seen.append((reader.watermark(), reader.load_snapshots(["account-00000"])))
            if len(seen) == 2:
                raise RuntimeError("stopped between two slices")

        with pytest.raises(RuntimeError, match="between two slices"):
            store.append_batch([], epoch, rows, 2, pace=pace)
        assert seen == [(1, {"account-00000": {"v": "old"}})] * 2
        assert store.watermark() == 1
        assert store.load_snapshots([r.stream_id for r in rows]) == {"account-00000": {"v": "old"}}
        calls: list[None] = []
        store.append_batch([], epoch, rows, 2, pace=lambda: calls.append(None))
        assert len(calls) == 3  # between the four slices, not after the last
        assert store.watermark() == 2
        assert len(store.load_snapshots([r.stream_id for r in rows])) == n


def test_memory_database_is_shared_between_peers() -> None:
    db = MemoryDatabase()
    a = MemoryEventStore("b", db)
    a.append_batch(make_records(1), a.acquire_lease("x"))
    assert MemoryEventStore("b", db).head()[0] == 1


def _load_records_contract(store: EventStore) -> None:
    epoch = store.acquire_lease("a")
    records = make_records(2)
    snap = SnapshotRow("account-q", 1, {"id": "q"})
    store.append_batch(records, epoch, [snap], 2)
    snaps, firsts = store.load_records(
        ["account-q", "account-none"], [records[0].stream_id, "transfer-none"]
    )
    assert snaps == {"account-q": {"id": "q"}}
    assert firsts == {records[0].stream_id: records[0]}
    assert store.load_records([], []) == ({}, {})


def test_memory_store_loads_snapshots_and_creations_together() -> None:
    _load_records_contract(MemoryEventStore("b"))


def test_postgres_store_loads_snapshots_and_creations_together(database_url: str) -> None:
    store = PostgresEventStore(database_url, "b")
    try:
        _load_records_contract(store)
    finally:
        store.close()


@pytest.mark.parametrize(
    "ids",
    [
        [""],
        ["a", ""],
        ["a,b"],
        ["x", "a,b"],
        ["NULL"],
        ["a", "nUll"],
        ["a b"],
        ['a"'],
        ["a{"],
        ["a}"],
        ["a\\b"],
        ["a'"],
        [",", ","],
    ],
)
def test_postgres_store_refuses_ids_unsafe_in_an_array_literal(ids: list[str]) -> None:
    with pytest.raises(ValueError, match="unsafe stream id"):
        _text_array(ids)


def test_postgres_store_array_literal_keeps_safe_ids_as_they_are() -> None:
    ids = [f"transfer-{uuid.uuid4()}" for _ in range(100)] + ["account-null-ish", "nullx"]
    assert _text_array(ids) == "{" + ",".join(ids) + "}"
    assert _text_array([]) == "{}"
