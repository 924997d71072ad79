"""Peer benchmark: bank-account transfers with the ``eventsourcing`` library (PyPI).

Issue 5 asks for the ledger node to be compared, in the same run and on the same
PostgreSQL, with the ``eventsourcing`` library doing the same bank-account transfers the way
its documentation recommends. This module is that peer side:

* ``Account`` is an ``Aggregate`` whose commands are ``@event``-decorated methods (the
  documented declarative style; the bank-accounts example in the library's repository has
  the same shape), with balances in integer minor units and an overdraft rule;
* ``Bank`` is an ``Application`` whose ``transfer`` loads both accounts, debits one,
  credits the other and records both in ONE ``self.save(debit, credit)`` call: one
  PostgreSQL transaction, optimistic concurrency on (originator_id, originator_version);
* persistence is the library's own PostgreSQL module, configured through the documented
  environment keys passed with ``Application(env=...)``; everything else is the library's
  default (no snapshotting, no aggregate cache, no compression, no cipher).

One ``Bank`` instance is shared by all client threads, as an application object is shared
by the request threads of a web process; the library's connection pool is sized to the
number of clients so that the pool is not the bottleneck (its default is 5 connections plus
10 overflow). A transfer that hits an optimistic-concurrency conflict (two clients touched
the same account at once) is reloaded and retried, up to ``max_attempts`` times.

Run ``python -m benchmarks.peer_eventsourcing --help``.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import version as package_version
from uuid import UUID

import psycopg
from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event
from eventsourcing.persistence import RecordConflictError
from psycopg import sql
from sqlalchemy.engine import make_url

__all__ = [
    "DEFAULT_MAX_ATTEMPTS",
    "MAX_AMOUNT",
    "OPENING_BALANCE",
    "Account",
    "Bank",
    "InsufficientFundsError",
    "PeerResult",
    "bank_env",
    "fresh_database",
    "main",
    "median_result",
    "open_bank",
    "run_peer",
]

OPENING_BALANCE = 1_000_000
"""Opening credit of every benchmark account, in minor units (10,000.00)."""

MAX_AMOUNT = 1_000
"""Transfer amounts are uniform in 1..MAX_AMOUNT minor units."""

DEFAULT_MAX_ATTEMPTS = 10
"""Attempts per transfer before it is counted as failed (first try plus retries)."""

_OPEN_BATCH = 100


# --------------------------------------------------------------------------- domain model


class InsufficientFundsError(Exception):
    """A debit would take the balance below the account's overdraft limit."""


class Account(Aggregate):
    """A bank account; balance and overdraft limit in integer minor units."""

    @event("Opened")
    def __init__(self, owner: str, overdraft_limit: int = 0) -> None:
        if overdraft_limit < 0:
            raise ValueError("overdraft limit must not be negative")
        self.owner = owner
        self.overdraft_limit = overdraft_limit
        self.balance = 0

    @event("Credited")
    def credit(self, amount: int) -> None:
        if amount <= 0:
            raise ValueError("amount must be positive")
        self.balance += amount

    @event("Debited")
    def debit(self, amount: int) -> None:
        if amount <= 0:
            raise ValueError("amount must be positive")
        if self.balance - amount < -self.overdraft_limit:
            raise InsufficientFundsError(
                f"account {self.id}: balance {self.balance}, debit {amount}, "
                f"overdraft limit {self.overdraft_limit}"
            )
        self.balance -= amount


class Bank(Application[UUID]):
    """Bank accounts application: opening accounts and atomic two-account transfers."""

    def open_account(self, owner: str, opening_credit: int = 0, overdraft_limit: int = 0) -> UUID:
        return self.open_accounts([owner], opening_credit, overdraft_limit)[0]

    def open_accounts(
        self, owners: Sequence[str], opening_credit: int = 0, overdraft_limit: int = 0
    ) -> list[UUID]:
        """Open several accounts, recorded together in one ``save`` (one transaction)."""
        accounts = []
        for owner in owners:
            account = Account(owner=owner, overdraft_limit=overdraft_limit)
            if opening_credit:
                account.credit(opening_credit)
            accounts.append(account)
        self.save(*accounts)
        return [account.id for account in accounts]

    def get_account(self, account_id: UUID) -> Account:
        account: Account = self.repository.get(account_id)
        return account

    def get_balance(self, account_id: UUID) -> int:
        return self.get_account(account_id).balance

    def transfer(self, debit_id: UUID, credit_id: UUID, amount: int) -> None:
        """Move ``amount`` from one account to another; both events in one transaction.

        Raises ``InsufficientFundsError`` (nothing recorded) when the debit is refused, and
        the library's ``RecordConflictError`` (nothing recorded) when another writer
        changed either account since it was loaded.
        """
        if debit_id == credit_id:
            raise ValueError("debit and credit accounts must differ")
        debit_account = self.get_account(debit_id)
        credit_account = self.get_account(credit_id)
        debit_account.debit(amount)
        credit_account.credit(amount)
        self.save(debit_account, credit_account)


# --------------------------------------------------------------------------- configuration

# Keys the library reads from its environment that change what is measured. They are pinned
# to the library's defaults ("" means "unset") because ``Application`` merges the process
# environment under ``env=``: a stray variable must not silently turn on a cache, snapshots,
# compression or encryption in one run and not in another.
_PINNED_DEFAULTS = {
    "IS_SNAPSHOTTING_ENABLED": "n",
    "AGGREGATE_CACHE_MAXSIZE": "",
    "COMPRESSOR_TOPIC": "",
    "CIPHER_TOPIC": "",
    "CIPHER_KEY": "",
    "POSTGRES_SCHEMA": "",
    "POSTGRES_ENABLE_DB_FUNCTIONS": "",
}


def bank_env(database_url: str, *, pool_size: int = 5, create_table: bool = True) -> dict[str, str]:
    """The ``env=`` mapping that points a ``Bank`` at the database of ``database_url``.

    Each key is also given with the application-name prefix (``BANK_...``): the library
    looks that spelling up first, so it would otherwise win over ``env=`` when it happens
    to be set in the process environment.
    """
    url = make_url(database_url)
    if not url.database:
        raise ValueError(f"database URL names no database: {database_url!r}")
    env = {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": url.database,
        "POSTGRES_HOST": url.host or "127.0.0.1",
        "POSTGRES_PORT": str(url.port or 5432),
        "POSTGRES_USER": url.username or "postgres",
        "POSTGRES_PASSWORD": url.password or "",
        "POSTGRES_POOL_SIZE": str(pool_size),
        "CREATE_TABLE": "y" if create_table else "n",
        **_PINNED_DEFAULTS,
    }
    prefix = Bank.name.upper() + "_"
    return {**env, **{prefix + key: value for key, value in env.items()}}


def open_bank(database_url: str, *, pool_size: int = 5, create_table: bool = True) -> Bank:
    """A ``Bank`` on the PostgreSQL database of ``database_url`` (close it when done)."""
    return Bank(env=bank_env(database_url, pool_size=pool_size, create_table=create_table))


# --------------------------------------------------------------------------- the workload


@dataclass(frozen=True)
class PeerResult:
    """Outcome of one ``run_peer``; times cover the transfers only, not account opening.

    ``failed`` counts every transfer that was not applied: conflicts on all attempts plus
    overdraft refusals (``rejected``, a subset of ``failed``; zero with the default
    amounts). ``transfers_ok + failed`` always equals the number of transfers asked for.
    ``conflicts_retried`` counts optimistic-concurrency conflicts that were retried.
    """

    clients: int
    accounts: int
    transfers_ok: int
    conflicts_retried: int
    failed: int
    rejected: int
    elapsed_s: float
    transfers_per_s: float
    p50_ms: float
    p99_ms: float
    opening_total: int = 0
    account_ids: tuple[UUID, ...] = field(default=(), repr=False, compare=False)


@dataclass
class _ClientStats:
    ok: int = 0
    conflicts_retried: int = 0
    failed: int = 0
    rejected: int = 0
    latencies_s: list[float] = field(default_factory=list)


_Transfer = tuple[UUID, UUID, int]


def _plan(account_ids: Sequence[UUID], transfers: int, seed: int) -> list[_Transfer]:
    rng = random.Random(seed)
    plan = []
    for _ in range(transfers):
        debit_id, credit_id = rng.sample(account_ids, 2)
        plan.append((debit_id, credit_id, rng.randint(1, MAX_AMOUNT)))
    return plan


def _client(
    bank: Bank, plan: Sequence[_Transfer], start: threading.Barrier, max_attempts: int
) -> _ClientStats:
    stats = _ClientStats()
    start.wait()
    for debit_id, credit_id, amount in plan:
        began = time.perf_counter()
        for attempt in range(1, max_attempts + 1):
            try:
                bank.transfer(debit_id, credit_id, amount)
            except RecordConflictError:
                if attempt == max_attempts:
                    stats.failed += 1
                else:
                    stats.conflicts_retried += 1
                continue
            except InsufficientFundsError:
                stats.failed += 1
                stats.rejected += 1
            else:
                stats.ok += 1
            break
        stats.latencies_s.append(time.perf_counter() - began)
    return stats


def _percentile_ms(sorted_s: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of sorted seconds, in milliseconds."""
    if not sorted_s:
        return 0.0
    rank = max(1, min(len(sorted_s), round(q / 100 * len(sorted_s) + 0.5)))
    return sorted_s[rank - 1] * 1000.0


def run_peer(
    database_url: str,
    accounts: int,
    transfers: int,
    clients: int,
    seed: int = 1,
    *,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    opening_balance: int = OPENING_BALANCE,
) -> PeerResult:
    """Open ``accounts`` funded accounts, then time ``transfers`` random transfers.

    ``database_url`` is a SQLAlchemy-style URL (``postgresql+psycopg://user@host:port/db``)
    of an existing database; the library creates its table there if missing. Debit and
    credit accounts are distinct and uniform at random (seeded, so every run with the same
    seed does the same transfers); the plan is dealt round-robin to ``clients`` threads
    sharing one ``Bank``, released together; latency is per transfer, retries included.
    """
    if accounts < 2:
        raise ValueError("need at least two accounts")
    if clients < 1 or transfers < 0 or max_attempts < 1:
        raise ValueError("clients and max_attempts must be >= 1, transfers >= 0")
    bank = open_bank(database_url, pool_size=clients)
    try:
        account_ids: list[UUID] = []
        for first in range(0, accounts, _OPEN_BATCH):
            owners = [f"owner-{i}" for i in range(first, min(accounts, first + _OPEN_BATCH))]
            account_ids.extend(bank.open_accounts(owners, opening_credit=opening_balance))
        plan = _plan(account_ids, transfers, seed)
        start = threading.Barrier(clients + 1)
        with ThreadPoolExecutor(max_workers=clients, thread_name_prefix="peer-client") as pool:
            futures = [
                pool.submit(_client, bank, plan[i::clients], start, max_attempts)
                for i in range(clients)
            ]
            start.wait()
            began = time.perf_counter()
            per_client = [future.result() for future in futures]
            elapsed = time.perf_counter() - began
    finally:
        bank.close()
    latencies = sorted(s for stats in per_client for s in stats.latencies_s)
    ok = sum(stats.ok for stats in per_client)
    return PeerResult(
        clients=clients,
        accounts=accounts,
        transfers_ok=ok,
        conflicts_retried=sum(stats.conflicts_retried for stats in per_client),
        failed=sum(stats.failed for stats in per_client),
        rejected=sum(stats.rejected for stats in per_client),
        elapsed_s=elapsed,
        transfers_per_s=ok / elapsed if elapsed > 0 else 0.0,
        p50_ms=_percentile_ms(latencies, 50),
        p99_ms=_percentile_ms(latencies, 99),
        opening_total=opening_balance * accounts,
        account_ids=tuple(account_ids),
    )


def median_result(results: Sequence[PeerResult]) -> PeerResult:
    """Per-field median of several runs of the same configuration."""
    if not results:
        raise ValueError("no results")

    def med(values: Iterator[float]) -> float:
        return float(statistics.median(values))

    first = results[0]
    return PeerResult(
        clients=first.clients,
        accounts=first.accounts,
        transfers_ok=round(med(r.transfers_ok for r in results)),
        conflicts_retried=round(med(r.conflicts_retried for r in results)),
        failed=round(med(r.failed for r in results)),
        rejected=round(med(r.rejected for r in results)),
        elapsed_s=med(r.elapsed_s for r in results),
        transfers_per_s=med(r.transfers_per_s for r in results),
        p50_ms=med(r.p50_ms for r in results),
        p99_ms=med(r.p99_ms for r in results),
        opening_total=first.opening_total,
    )


# --------------------------------------------------------------------------- databases


def _libpq_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@contextmanager
def fresh_database(server_url: str, prefix: str = "peer_es") -> Iterator[str]:
    """Create an empty database on the server of ``server_url``; drop it afterwards.

    Yields the new database's URL (psycopg driver). ``server_url`` names any database the
    user may connect to for CREATE/DROP DATABASE (usually ``postgres``).
    """
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = _libpq_dsn(server_url)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield (
            make_url(server_url)
            .set(drivername="postgresql+psycopg", database=name)
            .render_as_string(hide_password=False)
        )
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def _server_version(server_url: str) -> str:
    with psycopg.connect(_libpq_dsn(server_url), autocommit=True) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return str(row[0]) if row else "?"


# --------------------------------------------------------------------------- command line


def _parse_clients(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a comma-separated list of integers: {text!r}"
        ) from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"client counts must be >= 1: {text!r}")
    return values


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1: {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.peer_eventsourcing",
        description=(
            "Bank-account transfers with the eventsourcing library on PostgreSQL "
            "(debit + credit saved together). Each run uses a fresh database."
        ),
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get("LEDGER_BENCH_DATABASE_URL"),
        help=(
            "PostgreSQL server URL used to create/drop the run databases "
            "(default: $LEDGER_BENCH_DATABASE_URL, else a server started for the run)"
        ),
    )
    parser.add_argument("--accounts", type=_positive, default=1000)
    parser.add_argument("--transfers", type=_positive, default=5000)
    parser.add_argument(
        "--clients", type=_parse_clients, default=[1, 16], help="comma-separated, e.g. 1,16"
    )
    parser.add_argument("--runs", type=_positive, default=3, help="median of this many runs")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-attempts", type=_positive, default=DEFAULT_MAX_ATTEMPTS)
    return parser


def _normalise(url: str) -> str:
    u = make_url(url)
    if u.get_backend_name() != "postgresql":
        raise SystemExit(f"not a PostgreSQL URL: {url!r}")
    return u.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    server = None
    if args.database_url:
        server_url = _normalise(args.database_url)
        origin = "--database-url / $LEDGER_BENCH_DATABASE_URL"
    else:
        from ledger.devservices import start_postgres

        server = start_postgres("LEDGER_BENCH_DATABASE_URL")
        server_url, origin = server.url, server.origin
    try:
        shown = make_url(server_url).render_as_string(hide_password=True)
        print(
            f"eventsourcing {package_version('eventsourcing')} peer on PostgreSQL "
            f"{_server_version(server_url)} at {shown} ({origin})"
        )
        print(
            f"accounts={args.accounts} transfers={args.transfers} runs={args.runs} "
            f"seed={args.seed}; one Bank shared by the clients, pool size = clients, "
            f"snapshotting off, no aggregate cache; debit + credit in one save()"
        )
        header = (
            f"{'clients':>7} {'transfers/s':>12} {'p50 ms':>8} {'p99 ms':>8} "
            f"{'conflicts retried':>17} {'failed':>6}  runs (transfers/s)"
        )
        print(header)
        summaries: dict[int, PeerResult] = {}
        for clients in args.clients:
            results = []
            for _ in range(args.runs):
                with fresh_database(server_url) as db_url:
                    results.append(
                        run_peer(
                            db_url,
                            args.accounts,
                            args.transfers,
                            clients,
                            args.seed,
                            max_attempts=args.max_attempts,
                        )
                    )
            m = summaries[clients] = median_result(results)
            runs = " ".join(f"{r.transfers_per_s:.0f}" for r in results)
            print(
                f"{clients:>7} {m.transfers_per_s:>12.1f} {m.p50_ms:>8.2f} {m.p99_ms:>8.2f} "
                f"{m.conflicts_retried:>17} {m.failed:>6}  {runs}",
                flush=True,
            )
        if len(summaries) > 1:
            low, high = min(summaries), max(summaries)
            ratio = summaries[high].transfers_per_s / max(summaries[low].transfers_per_s, 1e-9)
            print(f"scaling {high} vs {low} clients: {ratio:.2f}x")
    finally:
        if server is not None:
            server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
