"""A synthetic book for tests and benchmarks: real domain events, no node needed.

Commands (accounts in two ledger codes, plain transfers, holds that are posted in part,
voided or left to expire, and some that are rejected) go through the domain's own
``decide_batch`` against a ``BookState``, and the events are chained into records exactly
as the node does. The result is a history the projections, the relay and the WAL replay
must handle the same as one written by a node, at a fraction of the cost of running one.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ledger import domain
from ledger.application.records import GENESIS_HASH, EventRecord, PendingRecord, chain_records

__all__ = ["SyntheticBook", "store_records"]

_LEDGERS = ("EUR", "USD")
_START_US = 1_760_000_000_000_000


@dataclass
class SyntheticBook:
    """Generates batches of records for one book; ``state`` is the book after them."""

    seed: int = 1
    accounts_per_ledger: int = 8
    state: domain.BookState = field(default_factory=domain.BookState)
    position: int = 0
    last_hash: bytes = GENESIS_HASH
    now_us: int = _START_US
    _rng: random.Random = field(init=False)
    _accounts: dict[str, list[uuid.UUID]] = field(default_factory=dict)
    _pending: list[tuple[uuid.UUID, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def _uuid(self) -> uuid.UUID:
        return uuid.UUID(int=self._rng.getrandbits(128), version=4)

    def open_accounts(self) -> list[EventRecord]:
        commands: list[domain.Command] = []
        for ledger in _LEDGERS:
            ids = [self._uuid() for _ in range(self.accounts_per_ledger)]
            self._accounts[ledger] = ids
            commands.extend(domain.OpenAccount(id=i, ledger=ledger, code=1) for i in ids)
        return self.decide(commands)

    def batch(self, size: int) -> list[EventRecord]:
        """About ``size`` commands of every kind (opens the accounts on first use)."""
        if not self._accounts:
            return self.open_accounts() + self.batch(size)
        return self.decide([self._command() for _ in range(size)])

    def batches(self, count: int, size: int) -> Iterator[list[EventRecord]]:
        for _ in range(count):
            yield self.batch(size)

    def expire_all(self, after_s: int = 3600) -> list[EventRecord]:
        """Move the clock ``after_s`` ahead and expire every hold with a deadline."""
        self.now_us += after_s * 1_000_000
        return self.decide([domain.ExpirePendingTransfers(now_us=self.now_us)])

    def _command(self) -> domain.Command:
        rng = self._rng
        roll = rng.random()
        if self._pending and roll < 0.15:
            pending_id, held_minor = self._pending.pop(rng.randrange(len(self._pending)))
            if roll < 0.09:
                return domain.CreateTransfer(
                    id=self._uuid(),
                    pending_id=pending_id,
                    amount_minor=rng.randint(1, held_minor),
                    flags=domain.TransferFlags(post_pending_transfer=True),
                    metadata={"posted": "partly"} if roll < 0.03 else {},
                )
            return domain.CreateTransfer(
                id=self._uuid(),
                pending_id=pending_id,
                flags=domain.TransferFlags(void_pending_transfer=True),
            )
        ledger = rng.choice(_LEDGERS)
        debit, credit = rng.sample(self._accounts[ledger], 2)
        pending = roll > 0.8
        transfer_id = self._uuid()
        amount_minor = rng.randint(1, 10_000)
        if pending:
            self._pending.append((transfer_id, amount_minor))
        return domain.CreateTransfer(
            id=transfer_id,
            debit_account_id=debit,
            credit_account_id=credit,
            amount_minor=amount_minor,
            ledger=ledger,
            code=rng.randint(1, 3),
            flags=domain.TransferFlags(pending=pending),
            timeout_s=rng.choice((0, 60)) if pending else 0,
            metadata={"n": str(rng.randint(0, 99))} if 0.7 < roll <= 0.8 else {},
        )

    def decide(self, commands: list[domain.Command]) -> list[EventRecord]:
        self.now_us += 1000
        outcomes = domain.decide_batch(self.state, commands, self.now_us)
        pending = [
            PendingRecord(
                event_id=self._uuid(),
                stream_id=event.stream_id,
                stream_version=event.stream_version,
                type=event.type,
                schema_version=event.schema_version,
                recorded_at_us=self.now_us,
                data=domain.event_to_data(event),
            )
            for outcome in outcomes
            for event in outcome.events
        ]
        if not pending:
            return []
        records = chain_records(pending, self.position + 1, self.last_hash)
        self.position = records[-1].position
        self.last_hash = records[-1].hash
        return records


def store_records(
    database_url: str,
    book_id: str,
    batches: list[list[EventRecord]],
    wal_dir: Path | None = None,
) -> int:
    """Write ``batches`` to the event store of ``book_id`` (and to a WAL in ``wal_dir``)
    as the node would: WAL first, then PostgreSQL, one transaction per batch."""
    from ledger.adapters.postgres import PostgresEventStore
    from ledger.adapters.wal import open_wal

    store = PostgresEventStore(database_url, book_id)
    wal: Any = None
    try:
        epoch = store.acquire_lease("workload")
        if wal_dir is not None:
            wal, _ = open_wal(wal_dir, 1 << 22)
        written = 0
        for batch in batches:
            if not batch:
                continue
            if wal is not None:
                wal.append_batch(batch)
            store.append_batch(batch, epoch)
            written += len(batch)
        return written
    finally:
        if wal is not None:
            wal.close()
        store.close()
