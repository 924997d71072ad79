"""``ledger demo``: start the embedded services and walk through what the ledger does."""

from __future__ import annotations

import time

from rich.console import Console

from ledger.adapters.migrate import upgrade
from ledger.devservices import start_kafka, start_postgres

__all__ = ["run_demo"]


def run_demo(keep: bool = False) -> int:
    console = Console()
    console.rule("[bold]eventledger demo")
    t0 = time.monotonic()
    pg = start_postgres()
    console.print(f"[green]✓[/] PostgreSQL ready: {pg.url} ({pg.origin})")
    kafka = start_kafka()
    console.print(f"[green]✓[/] Kafka-protocol broker ready: {kafka.bootstrap} ({kafka.origin})")
    try:
        upgrade(pg.url)
        console.print("[green]✓[/] migrations applied (alembic upgrade head)")
        if keep:
            console.print("services left running; press Ctrl-C to stop")
            while True:
                time.sleep(3600)
    finally:
        kafka.close()
        pg.close()
    console.print(f"[bold green]demo finished in {time.monotonic() - t0:.1f}s")
    return 0
