"""A ledger node under load, to be killed with SIGKILL by ``test_crash_recovery``.

Prints one JSON line per acknowledged transfer (``{"id": ..., "status": ...}``) only after
``LedgerNode.submit`` returned, so the parent knows exactly what was acknowledged.
Usage: python -m tests.integration.crash_child DATABASE_URL WAL_DIR SEED
"""

from __future__ import annotations

import asyncio
import random
import sys
import uuid
from pathlib import Path

import orjson

from ledger import domain
from ledger.adapters.postgres import PostgresEventStore
from ledger.adapters.wal import open_wal
from ledger.application.node import LedgerNode, NodeConfig
from ledger.application.recorder import Recorder

BOOK = "crash"
ACCOUNTS = 20
SUBMITTERS = 16
ACCOUNT_NS = uuid.UUID("0b7b3f2e-5a8e-4d7c-9f0e-6f6c1b3b2a10")


def account_ids() -> list[uuid.UUID]:
    return [uuid.uuid5(ACCOUNT_NS, str(i)) for i in range(ACCOUNTS)]


async def main(url: str, wal_dir: Path, seed: int) -> None:
    wal, _ = open_wal(wal_dir, 256 * 1024)
    store = PostgresEventStore(url, BOOK)
    node = await LedgerNode.open(
        Recorder(wal, store, retry_max_ms=200),
        NodeConfig(snapshot_every_events=97, batch_size_max=64),
    )
    ids = account_ids()
    opening = [
        domain.OpenAccount(
            id=a,
            ledger="USD",
            code=1,
            flags=domain.AccountFlags(debits_must_not_exceed_credits=i > 0),
        )
        for i, a in enumerate(ids)
    ]
    await node.submit(opening)
    funding = [
        domain.CreateTransfer(
            id=uuid.uuid5(ACCOUNT_NS, f"fund-{i}"),
            debit_account_id=ids[0],
            credit_account_id=a,
            amount_minor=1_000_000,
            ledger="USD",
            code=1,
        )
        for i, a in enumerate(ids[1:])
    ]
    await node.submit(funding)
    print(orjson.dumps({"ready": True}).decode(), flush=True)

    async def submitter(k: int) -> None:
        local = random.Random(seed * 1000 + k)
        while True:
            size = local.randint(1, 8)
            batch = []
            for j in range(size):
                debit, credit = local.sample(ids[1:], 2)
                pending = local.random() < 0.1
                batch.append(
                    domain.CreateTransfer(
                        id=uuid.uuid4(),
                        debit_account_id=debit,
                        credit_account_id=credit,
                        amount_minor=local.randint(1, 5000),
                        ledger="USD",
                        code=1,
                        flags=domain.TransferFlags(
                            linked=j < size - 1 and local.random() < 0.3, pending=pending
                        ),
                        timeout_s=local.choice([0, 1, 3600]) if pending else 0,
                    )
                )
            outcomes = await node.submit(batch)
            lines = [
                orjson.dumps({"id": str(c.id), "status": str(o.status)}).decode()
                for c, o in zip(batch, outcomes, strict=True)
            ]
            sys.stdout.write("\n".join(lines) + "\n")
            sys.stdout.flush()

    await asyncio.gather(*(submitter(k) for k in range(SUBMITTERS)))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])))
