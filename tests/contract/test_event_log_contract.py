"""One contract, two event logs: the file WAL and its in-memory fake.

Goal: the fake the unit tests use behaves like the real WAL for everything the node relies
on. Method: every test below runs against both (``TestFileWal`` on real files with real
fsync in ``tmp_path``; ``TestMemoryEventLog``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ledger.adapters.memory import MemoryEventLog
from ledger.adapters.wal import FileWal, open_wal
from ledger.application.ports import EventLog
from ledger.application.records import (
    GENESIS_HASH,
    ChainBroken,
    EventRecord,
    PendingRecord,
    chain_records,
    compute_hash,
    verify_chain,
)


def make_records(log: EventLog, n: int) -> list[EventRecord]:
    """``n`` records that continue ``log``'s chain."""
    pending = [
        PendingRecord(
            event_id=uuid.uuid4(),
            stream_id=f"account-{i % 3}",
            stream_version=log.last_position + i + 1,
            type="AccountOpened",
            schema_version=1,
            recorded_at_us=1_700_000_000_000_000 + log.last_position + i,
            data={"ledger": "USD", "n": i, "flags": ["a", "b"], "nested": {"z": 1, "a": None}},
        )
        for i in range(n)
    ]
    return chain_records(pending, log.last_position + 1, log.last_hash)


class EventLogContract:
    """Behaviour every EventLog adapter must have (not collected itself)."""

    def make_log(self) -> EventLog:
        raise NotImplementedError

    def test_a_new_log_is_empty_and_starts_at_genesis(self) -> None:
        log = self.make_log()
        assert log.last_position == 0
        assert log.last_hash == GENESIS_HASH
        assert list(log.read()) == []

    def test_reads_back_exactly_what_was_appended(self) -> None:
        log = self.make_log()
        records = make_records(log, 5)
        log.append_batch(records)
        assert list(log.read()) == records
        assert log.last_position == 5
        assert log.last_hash == records[-1].hash

    def test_batches_continue_one_chain(self) -> None:
        log = self.make_log()
        appended: list[EventRecord] = []
        for size in (1, 3, 7, 2):
            batch = make_records(log, size)
            log.append_batch(batch)
            appended += batch
        read = list(log.read())
        assert read == appended
        assert list(verify_chain(read, 1, GENESIS_HASH)) == appended

    def test_read_records_hash_to_their_stored_hash(self) -> None:
        log = self.make_log()
        log.append_batch(make_records(log, 4))
        for record in log.read():
            assert compute_hash(record.prev_hash, record.canonical()) == record.hash

    def test_reads_an_inclusive_range(self) -> None:
        log = self.make_log()
        records = make_records(log, 10)
        log.append_batch(records)
        assert list(log.read(3, 6)) == records[2:6]
        assert list(log.read(10)) == records[9:]
        assert list(log.read(4, 4)) == [records[3]]

    def test_reading_beyond_the_end_yields_what_exists(self) -> None:
        log = self.make_log()
        records = make_records(log, 3)
        log.append_batch(records)
        assert list(log.read(2, 99)) == records[1:]
        assert list(log.read(4)) == []
        assert list(log.read(3, 2)) == []

    def test_rejects_a_from_position_below_one(self) -> None:
        log = self.make_log()
        with pytest.raises(ValueError):
            list(log.read(0))

    def test_an_empty_batch_changes_nothing(self) -> None:
        log = self.make_log()
        log.append_batch([])
        assert log.last_position == 0
        assert list(log.read()) == []

    def test_rejects_a_batch_that_skips_a_position(self) -> None:
        log = self.make_log()
        log.append_batch(make_records(log, 2))
        pending = make_records(log, 1)[0]
        gap = chain_records([_pending(pending)], log.last_position + 2, log.last_hash)
        self.assert_rejected_and_unchanged(log, gap)

    def test_rejects_a_batch_that_does_not_link_to_the_last_hash(self) -> None:
        log = self.make_log()
        log.append_batch(make_records(log, 2))
        other = chain_records([_pending(make_records(log, 1)[0])], 3, bytes(range(32)))
        self.assert_rejected_and_unchanged(log, other)

    def test_rejects_a_record_whose_hash_does_not_match_its_content(self) -> None:
        log = self.make_log()
        records = make_records(log, 3)
        original = records[1]
        records[1] = EventRecord(  # built afresh: no cached serialisation of the original
            original.position,
            original.event_id,
            original.stream_id,
            original.stream_version,
            original.type,
            original.schema_version,
            original.recorded_at_us,
            {"edited": True},
            original.prev_hash,
            original.hash,
        )
        self.assert_rejected_and_unchanged(log, records)

    def test_rejects_positions_out_of_order_within_a_batch(self) -> None:
        log = self.make_log()
        records = make_records(log, 3)
        self.assert_rejected_and_unchanged(log, [records[0], records[2], records[1]])

    def test_a_rejected_batch_leaves_the_log_usable(self) -> None:
        log = self.make_log()
        records = make_records(log, 2)
        with pytest.raises(ChainBroken):
            log.append_batch(records[1:])
        log.append_batch(records)
        assert list(log.read()) == records

    def test_close_is_idempotent_and_later_appends_fail(self) -> None:
        log = self.make_log()
        records = make_records(log, 1)
        log.close()
        log.close()
        with pytest.raises(ValueError):
            log.append_batch(records)

    def assert_rejected_and_unchanged(self, log: EventLog, batch: list[EventRecord]) -> None:
        before = (log.last_position, log.last_hash, list(log.read()))
        with pytest.raises(ChainBroken):
            log.append_batch(batch)
        assert (log.last_position, log.last_hash, list(log.read())) == before


def _pending(record: EventRecord) -> PendingRecord:
    return PendingRecord(
        record.event_id,
        record.stream_id,
        record.stream_version,
        record.type,
        record.schema_version,
        record.recorded_at_us,
        record.data,
    )


class TestFileWal(EventLogContract):
    @pytest.fixture(autouse=True)
    def _directory(self, tmp_path: Path) -> Iterator[None]:
        self.directory = tmp_path / "wal"
        self.opened: list[FileWal] = []
        yield
        for wal in self.opened:
            wal.close()

    def make_log(self) -> EventLog:
        wal, report = open_wal(self.directory, segment_size_bytes=4096)
        assert report is None
        self.opened.append(wal)
        return wal

    def test_small_segments_do_not_change_what_is_read(self) -> None:
        log = self.make_log()
        appended: list[EventRecord] = []
        for _ in range(12):
            batch = make_records(log, 3)
            log.append_batch(batch)
            appended += batch
        assert isinstance(log, FileWal)
        assert len(log.segments()) > 3
        assert list(log.read()) == appended
        assert list(log.read(17, 23)) == appended[16:23]


class TestMemoryEventLog(EventLogContract):
    def make_log(self) -> EventLog:
        return MemoryEventLog()
