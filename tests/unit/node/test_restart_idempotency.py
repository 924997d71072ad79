"""Idempotency across restarts, with the stream filter between the node and its store.

After a restart the node holds nothing in memory: it answers a resubmitted id correctly
only if its stream filter knows every id the book has used. Each test here would fail
if the filter answered "never stored" for a stored id: a resubmission would be decided
as new (``created`` again, or a different outcome), instead of ``exists`` or
``id_already_used_with_different_fields``.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from ledger import domain
from ledger.adapters.memory import MemoryDatabase, MemoryEventStore
from ledger.adapters.wal import open_wal
from ledger.application.node import LedgerNode, NodeConfig
from ledger.application.recorder import Recorder
from ledger.application.records import EventRecord

BOOK = "test"
NOW_US = 1_700_000_000_000_000
Rejection = domain.RejectionCode


class CountingStore(MemoryEventStore):
    """Remembers every stream the node asked for."""

    def __init__(self, book_id: str, db: MemoryDatabase) -> None:
        super().__init__(book_id, db)
        self.asked: list[str] = []

    def load_records(
        self, snapshot_streams: Sequence[str], creation_streams: Sequence[str]
    ) -> tuple[dict[str, dict[str, Any]], dict[str, EventRecord]]:
        self.asked.extend(snapshot_streams)
        return super().load_records(snapshot_streams, creation_streams)


async def start(wal_dir: Path, db: MemoryDatabase, every: int = 100_000) -> LedgerNode:
    wal, _ = open_wal(wal_dir, 64 * 1024)
    recorder = Recorder(wal, CountingStore(BOOK, db), retry_max_ms=20)
    return await LedgerNode.open(
        recorder,
        NodeConfig(snapshot_every_events=every),
        clock_us=lambda: NOW_US,
        expire_pending=False,
    )


def asked(node: LedgerNode) -> list[str]:
    assert isinstance(node.store, CountingStore)
    return node.store.asked


def open_account() -> domain.OpenAccount:
    return domain.OpenAccount(id=uuid.uuid4(), ledger="USD", code=1)


def transfer(debit: uuid.UUID, credit: uuid.UUID, amount: int, **kw: Any) -> domain.CreateTransfer:
    return domain.CreateTransfer(
        id=uuid.uuid4(),
        debit_account_id=debit,
        credit_account_id=credit,
        amount_minor=amount,
        ledger="USD",
        code=1,
        **kw,
    )


def unlinked(command: domain.Command) -> domain.Command:
    if isinstance(command, domain.CreateTransfer):
        return replace(command, flags=replace(command.flags, linked=False))
    return command


@pytest.mark.parametrize("every", [1, 100_000], ids=["snapshots", "no-snapshots"])
def test_every_used_id_is_known_after_a_restart(tmp_path: Path, every: int) -> None:
    db = MemoryDatabase()

    async def scenario() -> None:
        node = await start(tmp_path / "wal", db, every)
        a, b, c = open_account(), open_account(), open_account()
        accepted: list[domain.Command] = [a, b, c]
        assert {o.status for o in await node.submit(accepted)} == {"created"}
        plain = [transfer(a.id, b.id, 10 + i) for i in range(5)]
        hold, doomed = (
            transfer(b.id, c.id, 7, flags=domain.TransferFlags(pending=True)) for _ in range(2)
        )
        late = transfer(a.id, c.id, 3, flags=domain.TransferFlags(pending=True))
        await node.submit(plain[:3])
        await node.submit([*plain[3:], hold, doomed])
        post = domain.CreateTransfer(
            id=uuid.uuid4(),
            pending_id=hold.id,
            flags=domain.TransferFlags(post_pending_transfer=True),
        )
        void = domain.CreateTransfer(
            id=uuid.uuid4(),
            pending_id=doomed.id,
            flags=domain.TransferFlags(void_pending_transfer=True),
        )
        cancel = domain.CancelPendingTransfer(id=uuid.uuid4(), pending_id=late.id)
        outcomes = await node.submit([post, void, cancel])
        assert [o.status for o in outcomes] == ["created"] * 3, outcomes
        accepted += [*plain, hold, doomed, post, void]
        await node.close()

        again = await start(tmp_path / "wal", db, every)
        fresh = [transfer(a.id, b.id, 1) for _ in range(20)]
        assert {o.status for o in await again.submit(fresh)} == {"created"}
        # The new ids were ruled out by the filter: only the two accounts were looked up.
        assert not {f"transfer-{t.id}" for t in fresh} & set(asked(again))
        assert again.cache.skipped >= len(fresh)

        for command in accepted:
            [outcome] = await again.submit([unlinked(command)])
            assert outcome.status == "exists", (command, outcome)
        # A cancel that forbade its hold changes nothing when resent, and the hold stays
        # forbidden: both need the forbidding event, found through the filter.
        [again_cancel] = await again.submit([cancel])
        assert again_cancel.status == "created" and again_cancel.events == ()
        [refused] = await again.submit([late])
        assert refused.code == Rejection.id_already_cancelled
        reused: list[domain.OpenAccount | domain.CreateTransfer] = [a, *plain, hold, post]
        for original in reused:
            changed = replace(original, code=2)
            [outcome] = await again.submit([changed])
            assert outcome.code == Rejection.id_already_used_with_different_fields, outcome
        await again.close()

        # And once more, now that the filter was built from a store that the previous
        # run added to: the ids it created are known too.
        third = await start(tmp_path / "wal", db, every)
        for command in (*fresh, plain[0]):
            [outcome] = await third.submit([command])
            assert outcome.status == "exists", (command, outcome)
        await third.close()

    asyncio.run(scenario())


def test_ids_this_run_created_are_known_once_memory_lets_them_go(tmp_path: Path) -> None:
    """The node adds what it creates to the filter in the same batch. Today it also keeps
    every record it created in memory, so take some out, as an eviction would: they must
    be looked up and found, not decided as new."""
    db = MemoryDatabase()

    async def scenario() -> None:
        node = await start(tmp_path / "wal", db)
        a, b = open_account(), open_account()
        await node.submit([a, b])
        made = [transfer(a.id, b.id, 1 + i) for i in range(10)]
        await node.submit(made)
        for t in made:
            del node.state.transfers[t.id]
        outcomes = await node.submit([*made, replace(made[0], amount_minor=99)])
        assert [o.status for o in outcomes] == ["exists"] * 10 + ["rejected"]
        assert outcomes[-1].code == Rejection.id_already_used_with_different_fields
        assert {f"transfer-{t.id}" for t in made} <= set(asked(node))
        await node.close()

    asyncio.run(scenario())


def test_an_id_created_then_resent_in_the_same_batch(tmp_path: Path) -> None:
    db = MemoryDatabase()

    async def scenario() -> None:
        node = await start(tmp_path / "wal", db)
        a, b = open_account(), open_account()
        await node.submit([a, b])
        t = transfer(a.id, b.id, 5)
        outcomes = await node.submit([t, t, replace(t, amount_minor=6), replace(a, code=2)])
        assert [o.status for o in outcomes] == ["created", "exists", "rejected", "rejected"]
        assert outcomes[2].code == Rejection.id_already_used_with_different_fields
        assert outcomes[3].code == Rejection.id_already_used_with_different_fields
        await node.close()

        again = await start(tmp_path / "wal", db)
        outcomes = await again.submit([t, replace(t, amount_minor=6)])
        assert [o.status for o in outcomes] == ["exists", "rejected"]
        await again.close()

    asyncio.run(scenario())


def test_ids_of_a_batch_postgres_lost_are_known_after_recovery(tmp_path: Path) -> None:
    """A crash after the WAL fsync and before the PostgreSQL commit: recovery re-inserts
    the batch from the WAL before the filter is read, so its ids are known."""
    db = MemoryDatabase()

    async def scenario() -> None:
        node = await start(tmp_path / "wal", db)
        a, b = open_account(), open_account()
        await node.submit([a, b])
        kept = transfer(a.id, b.id, 3)
        await node.submit([kept])
        lost_transfer = transfer(a.id, b.id, 4)
        lost: list[domain.Command] = [lost_transfer, open_account()]
        await node.submit(lost)
        await node.close()
        # Take the last batch out of the store, as if its transaction never committed.
        log = db.events[BOOK]
        for record in log[-2:]:
            del db.event_ids[record.event_id]
            del db.streams[(BOOK, record.stream_id, record.stream_version)]
        del log[-2:]

        again = await start(tmp_path / "wal", db)
        assert again.recovery is not None and again.recovery.reinserted == 2
        for command in (*lost, kept):
            [outcome] = await again.submit([command])
            assert outcome.status == "exists", (command, outcome)
        [changed] = await again.submit([replace(lost_transfer, amount_minor=5)])
        assert changed.code == Rejection.id_already_used_with_different_fields
        await again.close()

    asyncio.run(scenario())


class Workload:
    """Batches over small pools of ids, so that ids are reused often: resubmissions,
    reuse with other fields, posts and voids of holds, cancels before tries."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.accounts = [uuid.UUID(int=(seed << 64) + i) for i in range(6)]
        # Sequential ids on purpose: clients may number them.
        self.transfers = [uuid.UUID(int=(seed << 64) + 1000 + i) for i in range(40)]

    def command(self) -> domain.Command:
        rng = self.rng
        roll = rng.random()
        if roll < 0.15:
            return domain.OpenAccount(
                id=rng.choice(self.accounts), ledger="USD", code=rng.choice([1, 2])
            )
        if roll < 0.25:
            return domain.CancelPendingTransfer(
                id=rng.choice(self.transfers), pending_id=rng.choice(self.transfers)
            )
        if roll < 0.4:
            post = rng.random() < 0.5
            return domain.CreateTransfer(
                id=rng.choice(self.transfers),
                pending_id=rng.choice(self.transfers),
                flags=domain.TransferFlags(
                    post_pending_transfer=post, void_pending_transfer=not post
                ),
            )
        debit, credit = rng.sample(self.accounts, 2)
        return domain.CreateTransfer(
            id=rng.choice(self.transfers),
            debit_account_id=debit,
            credit_account_id=credit,
            amount_minor=rng.choice([1, 2, 3]),
            ledger="USD",
            code=rng.choice([1, 1, 2]),
            flags=domain.TransferFlags(pending=rng.random() < 0.4),
        )

    def batch(self) -> list[domain.Command]:
        return [self.command() for _ in range(self.rng.choice([1, 1, 3, 8]))]


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_restarts_anywhere_change_no_outcome(tmp_path: Path, seed: int) -> None:
    """The node, restarted at random moments, answers every command as one ledger that
    never restarts (``decide_batch`` on one in-memory state) does."""
    db = MemoryDatabase()
    work = Workload(seed)
    every = work.rng.choice([1, 7, 100_000])
    reference = domain.BookState()

    async def scenario() -> None:
        node = await start(tmp_path / "wal", db, every)
        restarts = 0
        for step in range(60):
            batch = work.batch()
            expected = domain.decide_batch(reference, batch, NOW_US)
            got = await node.submit(batch)
            assert [(o.status, o.code) for o in got] == [(o.status, o.code) for o in expected], (
                step,
                batch,
            )
            if work.rng.random() < 0.2:
                await node.close()
                node = await start(tmp_path / "wal", db, every)
                restarts += 1
        for account_id in reference.accounts:
            mine = await node.read_account(account_id)
            assert mine is not None
            assert tuple(mine.balances()) == tuple(reference.accounts[account_id].balances())
        await node.close()
        assert restarts > 3

    asyncio.run(scenario())


def test_a_cancel_reusing_a_forbidden_id_is_refused(tmp_path: Path) -> None:
    """Id ``x`` is forbidden by a cancel that arrived before its try; a second cancel whose
    own id is ``x`` must be refused, not turned into a void on the stream ``x`` holds
    already (the store refuses that batch, the node stops, and its WAL tail can then
    never be re-inserted)."""
    db = MemoryDatabase()

    async def scenario() -> None:
        node = await start(tmp_path / "wal", db)
        a, b = open_account(), open_account()
        hold = transfer(a.id, b.id, 5, flags=domain.TransferFlags(pending=True))
        await node.submit([a, b, hold])
        x = uuid.uuid4()
        await node.submit([domain.CancelPendingTransfer(id=uuid.uuid4(), pending_id=x)])
        try:
            [outcome] = await node.submit([domain.CancelPendingTransfer(id=x, pending_id=hold.id)])
        finally:
            await node.close()
        assert outcome.code == Rejection.id_already_cancelled

    asyncio.run(scenario())
