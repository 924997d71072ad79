"""``ledger demo``: start everything on this machine and walk through what the ledger does.

Every step checks what it shows (a failed check stops the demo with exit code 1), so the
demo doubles as a smoke test of a fresh install. Services come from
``ledger.devservices`` (embedded PostgreSQL and the Tansu broker unless URLs are set);
the ledger node runs as a real ``ledger serve`` process so that it can be killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ledger.adapters.migrate import upgrade
from ledger.api.auth import KeyStore
from ledger.client import AsyncLedgerClient, CommandRejectedError, LedgerClient, transfer_body
from ledger.devservices import KafkaService, PostgresService, free_port, start_kafka, start_postgres

__all__ = ["DemoFailed", "run_demo"]

BOOK = "demo"
BOOK_B = "demo-b"
BURST_TRANSFERS = 100_000
BURST_BATCH = 1000


def wait_ready(url: str, procs: list[subprocess.Popen[bytes]], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            raise DemoFailed(f"a process exited before {url} was ready (see the demo logs)")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise DemoFailed(f"{url} not ready within {timeout_s:.0f} s")


class DemoFailed(AssertionError):
    """A demo step's check did not hold."""


def check(condition: bool, what: str) -> None:
    if not condition:
        raise DemoFailed(what)


@dataclass
class Demo:
    """Shared state of the story."""

    console: Console
    pg: PostgresService
    kafka: KafkaService
    workdir: Path
    token: str = ""
    port: int = 0
    server: subprocess.Popen[bytes] | None = None
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    port_b: int = 0
    port_coordinator: int = 0
    results: list[tuple[str, str, float]] = field(default_factory=list)
    accounts: dict[str, UUID] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self) -> LedgerClient:
        return LedgerClient(self.base_url, self.token)

    def step(self, title: str, explain: str, run: Callable[[], str]) -> None:
        self.console.rule(f"[bold]{title}")
        self.console.print(f"[dim]{explain}")
        t0 = time.monotonic()
        checked = run()
        took = time.monotonic() - t0
        self.console.print(f"[green]✓[/] {checked}  [dim]({took:.1f}s)")
        self.results.append((title, checked, took))

    # -- the server process -----------------------------------------------------------

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "LEDGER_DATABASE_URL": self.pg.url,
            "LEDGER_KAFKA_BOOTSTRAP": self.kafka.bootstrap,
            "LEDGER_WAL_DIR": str(self.workdir / "wal"),
            "LEDGER_BOOK_ID": BOOK,
            "LEDGER_LOG_LEVEL": "WARNING",
            "LEDGER_PENDING_EXPIRY_INTERVAL_MS": "100",
        }

    def spawn(
        self, name: str, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        with open(self.workdir / f"{name}.log", "ab") as log:  # the child keeps its copy
            return subprocess.Popen(
                [sys.executable, "-m", "ledger.cli", *args],
                env={**self.env(), **(env or {})},
                stdout=log,
                stderr=log,
            )

    def start_second_book_and_coordinator(self) -> None:
        """Book B on its own ledger node (same database, own WAL), and the coordinator."""
        self.port_b, self.port_coordinator = free_port(), free_port()
        self.workers.append(
            self.spawn(
                "serve-b", "serve", "--port", str(self.port_b), env={"LEDGER_BOOK_ID": BOOK_B}
            )
        )
        self.workers.append(
            self.spawn("coordinator", "coordinator", "--port", str(self.port_coordinator))
        )
        for port in (self.port_b, self.port_coordinator):
            wait_ready(f"http://127.0.0.1:{port}/ready", self.workers)

    @property
    def base_url_b(self) -> str:
        return f"http://127.0.0.1:{self.port_b}"

    def start_workers(self) -> None:
        self.workers.append(self.spawn("relay", "relay"))
        self.workers.append(self.spawn("project", "project"))

    def stop_workers(self) -> None:
        for proc in self.workers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.workers:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.workers.clear()

    def start_server(self) -> None:
        self.server = self.spawn("serve", "serve", "--port", str(self.port))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.server.poll() is not None:
                raise DemoFailed(f"ledger serve exited: see {self.workdir / 'serve.log'}")
            try:
                if httpx.get(self.base_url + "/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise DemoFailed("ledger serve did not become ready within 60 s")

    def stop_server(self, sig: int = signal.SIGTERM) -> None:
        if self.server is not None and self.server.poll() is None:
            self.server.send_signal(sig)
            try:
                self.server.wait(30)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait()
        self.server = None


# -- the story ---------------------------------------------------------------------------


def open_accounts(d: Demo) -> str:
    with d.client() as c:
        for name, ledger, limited in (
            ("bank_usd", "USD", False),
            ("alice_usd", "USD", True),
            ("bob_usd", "USD", True),
            ("fx_usd", "USD", False),
            ("fx_eur", "EUR", False),
            ("alice_eur", "EUR", True),
            ("bank_eur", "EUR", False),
        ):
            result = c.open_account(ledger, 1, debits_must_not_exceed_credits=limited)
            assert result.id is not None
            d.accounts[name] = result.id
        again = c.open_accounts([{"id": str(d.accounts["bank_usd"]), "ledger": "USD", "code": 1}])
        check(again[0].status == "exists", "re-opening an account must answer exists")
    return "7 accounts in USD and EUR; re-sending one answered 'exists' (idempotent ids)"


def move_money(d: Demo) -> str:
    a = d.accounts
    with d.client() as c:
        c.transfer(a["bank_usd"], a["alice_usd"], 100_00, "USD")
        c.transfer(a["alice_usd"], a["bob_usd"], 25_00, "USD")
        c.transfer(a["bank_eur"], a["fx_eur"], 1_000_00, "EUR")
        alice = c.get_account(a["alice_usd"]).balances
        bob = c.get_account(a["bob_usd"]).balances
    check(alice.available == 75_00 and bob.available == 25_00, "balances after transfers")
    return "bank → alice 100.00 USD, alice → bob 25.00 USD; alice has 75.00, bob 25.00"


def refuse_overdraft(d: Demo) -> str:
    a = d.accounts
    with d.client() as c:
        try:
            c.transfer(a["bob_usd"], a["alice_usd"], 1_000_00, "USD")
        except CommandRejectedError as exc:
            check(exc.code == "exceeds_credits", f"unexpected code {exc.code}")
            check(c.get_account(a["bob_usd"]).balances.available == 25_00, "bob unchanged")
            return f"bob → alice 1000.00 refused: {exc.code} ({exc.detail})"
    raise DemoFailed("an overdraft was accepted")


def pending_transfers(d: Demo) -> str:
    a = d.accounts
    with d.client() as c:
        hold = c.transfer(a["alice_usd"], a["bob_usd"], 10_00, "USD", pending=True, timeout_s=60)
        assert hold.id is not None
        check(c.get_account(a["alice_usd"]).balances.available == 65_00, "hold reserves")
        c.post_pending(hold.id, 6_00)
        posted = c.get_transfer(hold.id)
        check(posted.pending_status == "posted" and posted.amount_posted_minor == 6_00, "post")
        short = c.transfer(a["alice_usd"], a["bob_usd"], 5_00, "USD", pending=True, timeout_s=1)
        assert short.id is not None
        deadline = time.monotonic() + 10
        while c.get_transfer(short.id).pending_status != "expired":
            check(time.monotonic() < deadline, "the 1 s hold did not expire within 10 s")
            time.sleep(0.2)
        alice = c.get_account(a["alice_usd"]).balances
    check(alice.available == 69_00 and alice.debits_pending == 0, "expiry released the hold")
    return "10.00 held, 6.00 posted (4.00 released); a 1 s hold expired by the node's clock"


def linked_chain(d: Demo) -> str:
    a = d.accounts
    with d.client() as c:
        chain = [
            transfer_body(a["alice_usd"], a["fx_usd"], 50_00, "USD", linked=True),
            transfer_body(a["fx_eur"], a["alice_eur"], 46_00, "EUR", linked=True),
            transfer_body(a["alice_usd"], a["fx_usd"], 500_00, "USD"),  # exceeds alice's funds
        ]
        results = c.create_transfers(chain)
        codes = [r.code for r in results]
        check(codes[:2] == ["linked_event_failed"] * 2, f"chain codes {codes}")
        check(c.get_account(a["alice_eur"]).balances.credits_posted == 0, "no EUR moved")
        fx = c.create_transfers(
            [
                transfer_body(a["alice_usd"], a["fx_usd"], 50_00, "USD", linked=True),
                transfer_body(a["fx_eur"], a["alice_eur"], 46_00, "EUR"),
            ]
        )
        check([r.status for r in fx] == ["created", "created"], "FX pair")
        check(c.get_account(a["alice_eur"]).balances.available == 46_00, "alice got EUR")
    return (
        f"3-step chain refused as a whole ({codes[2]} on the last, linked_event_failed on "
        "the others); then 50.00 USD → 46.00 EUR exchanged atomically via liquidity accounts"
    )


def tcc_branch(
    branch_id: str, side: tuple[str, UUID, UUID], amount: int, token: str
) -> dict[str, Any]:
    """A TCC branch on a ledger node: a hold debit → credit placed by try (the ledger's
    participant URLs; see examples/cross_book.py for the worked example in the tests)."""
    base_url, debit, credit = side
    url = f"{base_url}/v1/tcc/{{gid}}/{{branch_id}}"
    return {
        "branch_id": branch_id,
        "try_url": f"{url}/try",
        "confirm_url": f"{url}/confirm",
        "cancel_url": f"{url}/cancel",
        "payload": {
            "debit_account_id": str(debit),
            "credit_account_id": str(credit),
            "amount_minor": amount,
            "ledger": "USD",
            "timeout_s": 300,
        },
        "headers": {"Authorization": f"Bearer {token}"},
    }


def cross_book_tcc(d: Demo) -> str:
    d.start_second_book_and_coordinator()
    a = d.accounts
    with d.client() as c, LedgerClient(d.base_url_b, d.token) as cb:
        settlement_a = c.open_account("USD").id
        settlement_b = cb.open_account("USD").id
        carol_b = cb.open_account("USD", debits_must_not_exceed_credits=True).id
        assert settlement_a and settlement_b and carol_b
        d.accounts["settlement_usd"] = settlement_a
        before = c.get_account(a["alice_usd"]).balances.available
        source = (d.base_url, a["alice_usd"], settlement_a)
        target = (d.base_url_b, settlement_b, carol_b)
        outcomes = []
        with httpx.Client(
            base_url=f"http://127.0.0.1:{d.port_coordinator}",
            headers={"Authorization": f"Bearer {d.token}"},
            timeout=60,
        ) as coordinator:
            for amount in (12_00, 1_000_000_00):  # the second exceeds alice's funds
                body = {
                    "gid": f"demo-{uuid.uuid4().hex[:8]}",
                    "timeout_s": 30,
                    "branches": [
                        tcc_branch("debit", source, amount, d.token),
                        tcc_branch("credit", target, amount, d.token),
                    ],
                }
                r = coordinator.post("/v1/tcc", json=body, params={"wait": "true"})
                check(r.status_code in (200, 201), f"coordinator answered {r.status_code}")
                outcomes.append(r.json()["status"])
        alice = c.get_account(a["alice_usd"]).balances
        carol = cb.get_account(carol_b).balances
    check(outcomes == ["committed", "cancelled"], f"TCC outcomes {outcomes}")
    check(alice.available == before - 12_00 and alice.debits_pending == 0, "book A side")
    check(carol.credits_posted == 12_00 and carol.credits_pending == 0, "book B side")
    return (
        "12.00 USD from alice (book demo) to carol (book demo-b) through settlement accounts: "
        "committed; a 1 000 000.00 transfer failed its try and was cancelled on both books"
    )


def burst(d: Demo) -> str:
    a = d.accounts
    payers = [a["bank_usd"], a["fx_usd"]]
    payees = [a["alice_usd"], a["bob_usd"]]

    async def run(progress: Progress, task: Any) -> float:
        async with AsyncLedgerClient(d.base_url, d.token, timeout_s=60) as c:
            queue = list(range(BURST_TRANSFERS // BURST_BATCH))

            async def worker() -> None:
                while queue:
                    i = queue.pop()
                    items = [
                        transfer_body(payers[(i + k) % 2], payees[k % 2], 1, "USD")
                        for k in range(BURST_BATCH)
                    ]
                    results = await c.create_transfers(items)
                    if any(r.status != "created" for r in results):
                        raise DemoFailed("a burst transfer was not created")
                    progress.advance(task, BURST_BATCH)

            t0 = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(4)))
            return time.perf_counter() - t0

    with Progress(
        TextColumn("burst"),
        BarColumn(),
        TextColumn("{task.completed:,}/{task.total:,} transfers"),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        console=d.console,
    ) as progress:
        task = progress.add_task("burst", total=BURST_TRANSFERS, rate="")
        elapsed = asyncio.run(run(progress, task))
        progress.update(task, rate=f"{BURST_TRANSFERS / elapsed:,.0f}/s")
    check(trial_balance_ok(d), "Σ debits must equal Σ credits after the burst")
    return (
        f"{BURST_TRANSFERS:,} transfers in {elapsed:.1f}s = {BURST_TRANSFERS / elapsed:,.0f}/s "
        "over HTTP (1000 per request); Σ debits = Σ credits"
    )


def trial_balance_ok(d: Demo) -> bool:
    with d.client() as c:
        for ledger in ("USD", "EUR"):
            names = [n for n in d.accounts if n.endswith(ledger.lower())]
            balances = [c.get_account(d.accounts[n]).balances for n in names]
            if sum(b.debits_posted for b in balances) != sum(b.credits_posted for b in balances):
                return False
    return True


def kill_and_recover(d: Demo) -> str:
    a = d.accounts
    acked: list[UUID] = []
    with d.client() as c:
        before = c.get_account(a["bob_usd"]).balances.credits_posted
        for _ in range(200):
            t = c.transfer(a["bank_usd"], a["bob_usd"], 1, "USD")
            assert t.id is not None
            acked.append(t.id)
    assert d.server is not None
    d.console.print(f"[dim]sending SIGKILL to ledger serve (pid {d.server.pid})")
    d.stop_server(signal.SIGKILL)
    t0 = time.monotonic()
    d.start_server()
    took = time.monotonic() - t0
    with d.client() as c:
        after = c.get_account(a["bob_usd"]).balances.credits_posted
        missing = [t for t in acked if c.get_transfer(t).amount_minor != 1]
    check(after == before + 200 and not missing, "acknowledged transfers after restart")
    check(trial_balance_ok(d), "Σ debits = Σ credits after recovery")
    return (
        f"killed with SIGKILL, restarted and recovered in {took:.1f}s; "
        "all 200 acknowledged transfers present"
    )


def wal_audit(d: Demo) -> str:
    from ledger.adapters.wal import verify_wal

    summary = verify_wal(d.workdir / "wal" / BOOK)
    check(summary.torn_tail is None, "the WAL has a torn tail")
    check(summary.record_count > BURST_TRANSFERS, f"WAL holds {summary.record_count} records")
    return (
        f"WAL verified: {len(summary.segments)} segment(s), {summary.record_count:,} records, "
        f"positions 1..{summary.last_position}, hash-chain head {summary.last_hash.hex()[:16]}…"
    )


def projections_caught_up(d: Demo) -> str:
    from projections.status import collect

    deadline = time.monotonic() + 90
    while True:
        rows = [r for r in collect(d.pg.url) if r.book_id == BOOK]
        lagging = [
            f"{r.kind} {r.name} at {r.position}/{r.head}"
            for r in rows
            if r.lag_events > 0 or r.position == 0
        ]
        if rows and not lagging:
            break
        check(time.monotonic() < deadline, f"projections still behind: {lagging}")
        time.sleep(0.5)
    a = d.accounts
    with d.client() as c:
        node_view = c.get_account(a["alice_usd"]).balances
        now_us = time.time_ns() // 1000
        projected = c.get_balance(a["alice_usd"], as_of_us=now_us)
        entries = c.get_entries(a["alice_eur"])
    check(projected == node_view, f"read model {projected} != node {node_view}")
    check(bool(entries) and entries[-1]["credits_posted"] == 46_00, "alice's EUR entries")
    head = max(r.head for r in rows)
    return (
        f"relay → Kafka → {len({r.name for r in rows if r.kind == 'projection'})} projections "
        f"at position {head}, lag 0; balance as of now and entries equal the node's"
    )


def rebuild_projection(d: Demo) -> str:
    from projections.rebuild import rebuild

    report = rebuild(d.pg.url, "balances")
    with d.client() as c:
        node_view = c.get_account(d.accounts["bob_usd"]).balances
        projected = c.get_balance(d.accounts["bob_usd"], as_of_us=time.time_ns() // 1000)
    check(projected == node_view, "balances after the rebuild")
    return (
        f"balances rebuilt from the event store into a shadow table: {report.events:,} events "
        f"in {report.duration_s:.2f}s, swapped in {report.swap_ms:.0f} ms; reads unchanged"
    )


def wal_replay(d: Demo) -> str:
    from ledger.audit import replay_wal

    report = replay_wal(d.workdir / "wal" / BOOK, d.pg.url, BOOK)
    check(report.events == report.store_events, "WAL and event store hold the same events")
    return (
        f"re-derived {report.accounts} accounts from {report.events:,} WAL events; event store "
        f"and read models match; hash-chain head {report.head_hash.hex()[:16]}…"
    )


def summary_table(d: Demo) -> Table:
    table = Table(title="eventledger demo")
    table.add_column("step")
    table.add_column("checked")
    table.add_column("s", justify="right")
    for title, checked, took in d.results:
        table.add_row(title, checked, f"{took:.1f}")
    return table


def explore_hints(d: Demo) -> str:
    return (
        f"API: {d.base_url}  (OpenAPI at {d.base_url}/docs, metrics at {d.base_url}/metrics)\n"
        f"key: {d.token}\n"
        f"curl -H 'Authorization: Bearer {d.token}' {d.base_url}/v1/accounts/"
        f"{d.accounts.get('alice_usd')}\n"
        "python: from ledger.client import LedgerClient; "
        f"c = LedgerClient('{d.base_url}', '<key>'); c.get_account(...)"
    )


STEPS: list[tuple[str, str, Callable[[Demo], str]]] = [
    ("Open accounts", "Accounts carry a currency (ledger) code; ids are chosen by the client.",
     open_accounts),
    ("Move money", "Each transfer debits one account and credits another in the same currency.",
     move_money),
    ("Refuse an overdraft", "Accounts flagged debits_must_not_exceed_credits cannot go below 0.",
     refuse_overdraft),
    ("Pending transfers", "A hold reserves funds; it is posted (in part), voided, or expires.",
     pending_transfers),
    ("Linked chain", "Linked transfers succeed or fail together: a currency exchange is two.",
     linked_chain),
    ("Cross-book TCC", "A coordinator moves money between two books on two ledger nodes.",
     cross_book_tcc),
    ("Burst", "100 000 transfers through the HTTP API, batched by the node (WAL + PostgreSQL).",
     burst),
    ("Crash and recovery", "SIGKILL the node; at restart the WAL and PostgreSQL are reconciled.",
     kill_and_recover),
    ("WAL audit", "Every record is checksummed (CRC32C) and hash-chained (SHA-256).", wal_audit),
    ("Projections", "A relay publishes events to Kafka; workers build read models.",
     projections_caught_up),
    ("Projection rebuild", "Any read model can be rebuilt from the event store, no downtime.",
     rebuild_projection),
    ("Audit replay", "Balances re-derived from the WAL alone, compared with every copy.",
     wal_replay),
]  # fmt: skip


def run_demo(keep: bool = False) -> int:
    console = Console()
    console.rule("[bold]eventledger demo")
    t0 = time.monotonic()
    pg = start_postgres()
    console.print(f"[green]✓[/] PostgreSQL ready: {pg.url} ({pg.origin})")
    kafka = start_kafka()
    console.print(f"[green]✓[/] Kafka-protocol broker ready: {kafka.bootstrap} ({kafka.origin})")
    workdir = Path(tempfile.mkdtemp(prefix="eventledger-demo-"))
    d = Demo(console, pg, kafka, workdir)
    try:
        upgrade(pg.url)
        console.print("[green]✓[/] migrations applied (alembic upgrade head)")
        keys = KeyStore(pg.url)
        _, d.token = keys.create(f"demo-{uuid.uuid4().hex[:6]}", "admin")
        keys.close()
        d.port = free_port()
        d.start_server()
        console.print(f"[green]✓[/] ledger serve ready at {d.base_url} (book {BOOK!r})")
        d.start_workers()
        console.print("[green]✓[/] ledger relay and ledger project started")
        for title, explain, run in STEPS:
            d.step(title, explain, lambda run=run: run(d))  # type: ignore[misc]
        console.print(summary_table(d))
        if keep:
            console.print(explore_hints(d))
            console.print("[bold]--keep: services left running; press Ctrl-C to stop")
            with contextlib.suppress(KeyboardInterrupt):
                while True:
                    time.sleep(3600)
        else:
            console.print(
                "Run [bold]ledger demo --keep[/] to leave the services running and explore."
            )
    except DemoFailed as exc:
        console.print(f"[red]✗ demo check failed: {exc}")
        keep_logs = Path(tempfile.mkdtemp(prefix="eventledger-demo-logs-"))
        for log in workdir.glob("*.log"):
            shutil.copy(log, keep_logs)
        console.print(f"process logs kept in {keep_logs}")
        return 1
    finally:
        d.stop_workers()
        d.stop_server()
        kafka.close()
        pg.close()
        shutil.rmtree(workdir, ignore_errors=True)
    console.print(f"[bold green]demo finished in {time.monotonic() - t0:.1f}s")
    return 0
