"""Domain throughput: ``decide_batch`` (decide + evolve) on one core, in one process.

What is measured: transfers/s through ``ledger.domain.decide_batch`` on batches of 1 000
single-phase transfers, against books of 1 000 and 1 000 000 accounts, with the two
accounts of each transfer chosen uniformly or with Zipf (s = 1.1) weights (hot accounts).
Nothing else runs in the timed loop: no I/O, no serialisation. Half the accounts carry
``debits_must_not_exceed_credits`` (so the limit check does real work) and are loaded as
records with a large opening credit, the way the node loads snapshots. Commands are built
before the clock starts, with account ids that are *equal but not identical* to the
state's keys, as after JSON parsing. The transfers of earlier runs are dropped before each
run (balances stay), so every run starts from the same state size.

Garbage collection decides the figure as much as the code does: every transfer leaves a
record in the state, and CPython's default thresholds (700, 10, 10) run full collections
over the whole growing heap. Setup objects (state and pre-built commands) are moved out of
the collector's way with ``gc.freeze()`` (what a node does after loading; commands really
arrive a batch at a time), then each configuration runs twice: with the default
thresholds, and with thresholds raised to (100 000, 50, 100), a common setting for
allocation-heavy services.

Also measured, per event: ``evolve`` (replay, as recovery and audits do), and
``event_to_data`` / ``event_from_data`` (the converters the node runs for every event), next
to pydantic's own ``model_dump(mode="json")`` and validation.

Run: ``python -m benchmarks.bench_domain [--quick] [--runs N]``. Figures are medians of
``--runs`` runs; they are printed, never asserted.
"""

from __future__ import annotations

import argparse
import bisect
import gc
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from uuid import UUID

from ledger.domain import (
    Account,
    AccountFlags,
    BookState,
    CreateTransfer,
    Event,
    decide_batch,
    event_from_data,
    event_to_data,
    evolve,
)
from ledger.domain.events import LEDGER_EVENT_ADAPTER

__all__ = ["DomainResult", "main", "measure"]

BATCH_SIZE = 1_000
NOW_US = 1_700_000_000_000_000
OPENING_CREDIT_MINOR = 10**15
CAPPED = AccountFlags(debits_must_not_exceed_credits=True)
UNCAPPED = AccountFlags()


@dataclass(frozen=True)
class DomainResult:
    """The median figures of one configuration (transfers per CPU and per wall second)."""

    accounts: int
    distribution: str
    transfers_per_s: float
    wall_transfers_per_s: float
    runs: list[float]


def build_state(accounts: int) -> tuple[BookState, list[UUID]]:
    state = BookState()
    ids = [UUID(int=(1 << 100) + n) for n in range(accounts)]
    for n, account_id in enumerate(ids):
        capped = n % 2 == 0
        state.add_account(
            Account(
                account_id,
                "USD",
                1,
                CAPPED if capped else UNCAPPED,
                {},
                NOW_US,
                credits_posted=OPENING_CREDIT_MINOR if capped else 0,
            )
        )
    return state, ids


class Chooser:
    """Picks distinct account pairs uniformly or with Zipf(s) weights."""

    def __init__(self, ids: Sequence[UUID], distribution: str, seed: int, s: float = 1.1):
        self.ids = ids
        self.rng = random.Random(seed)
        self.cumulative: list[float] | None = None
        if distribution == "zipf":
            total = 0.0
            self.cumulative = []
            for k in range(1, len(ids) + 1):
                total += 1.0 / k**s
                self.cumulative.append(total)

    def one(self) -> UUID:
        if self.cumulative is None:
            return self.ids[self.rng.randrange(len(self.ids))]
        x = self.rng.random() * self.cumulative[-1]
        return self.ids[min(bisect.bisect_left(self.cumulative, x), len(self.ids) - 1)]

    def pair(self) -> tuple[UUID, UUID]:
        debit = self.one()
        credit = self.one()
        while credit == debit:
            credit = self.one()
        # Equal but not identical to the state's keys, as after parsing a request.
        return UUID(int=debit.int), UUID(int=credit.int)


def make_batches(chooser: Chooser, transfers: int, first_id: int) -> list[list[CreateTransfer]]:
    batches = []
    for start in range(0, transfers, BATCH_SIZE):
        batch = []
        for n in range(start, min(start + BATCH_SIZE, transfers)):
            debit, credit = chooser.pair()
            batch.append(
                CreateTransfer(UUID(int=first_id + n), debit, credit, 1 + n % 997, "USD", 1)
            )
        batches.append(batch)
    return batches


def timed_run(
    state: BookState, batches: list[list[CreateTransfer]], now_us: int
) -> tuple[float, float]:
    """(transfers per CPU second, transfers per wall-clock second) of deciding every
    batch; checks that every transfer was created. CPU time is the figure for "one core"
    on a shared machine: it does not count the time the process waited for a core."""
    wall_started = time.perf_counter()
    cpu_started = time.process_time()
    for batch in batches:
        outcomes = decide_batch(state, batch, now_us)
    cpu = time.process_time() - cpu_started
    wall = time.perf_counter() - wall_started
    assert all(o.status == "created" for o in outcomes), outcomes[0]
    transfers = sum(len(b) for b in batches)
    return transfers / cpu, transfers / wall


RAISED_GC_THRESHOLDS = (100_000, 50, 100)


def measure(
    accounts: int, distribution: str, transfers: int, runs: int
) -> tuple[DomainResult, DomainResult]:
    """(default GC thresholds, raised GC thresholds) for one configuration."""
    state, ids = build_state(accounts)
    chooser = Chooser(ids, distribution, seed=accounts)
    rates: dict[bool, list[float]] = {False: [], True: []}
    walls: dict[bool, list[float]] = {False: [], True: []}
    default_thresholds = gc.get_threshold()
    for run in range(runs):
        for raised in (False, True):
            batches = make_batches(chooser, transfers, first_id=(2 * run + raised + 1) << 64)
            state.transfers.clear()  # every run starts from the same state size
            gc.collect()
            gc.freeze()
            if raised:
                gc.set_threshold(*RAISED_GC_THRESHOLDS)
            try:
                cpu_rate, wall_rate = timed_run(state, batches, NOW_US + run)
                rates[raised].append(cpu_rate)
                walls[raised].append(wall_rate)
            finally:
                gc.set_threshold(*default_thresholds)
                del batches
    gc.unfreeze()
    return tuple(  # type: ignore[return-value]
        DomainResult(
            accounts,
            distribution,
            statistics.median(rates[raised]),
            statistics.median(walls[raised]),
            rates[raised],
        )
        for raised in (False, True)
    )


def per_event_us(events: Sequence[Event], fn: Callable[[Event], object], runs: int) -> float:
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        for event in events:
            fn(event)
        best = min(best, time.perf_counter() - started)
    return best / len(events) * 1e6


def replay_us(events: Sequence[Event], runs: int) -> float:
    """Microseconds per event to rebuild the book from its events, as recovery and an
    auditor's replay do."""
    best = float("inf")
    for _ in range(runs):
        state, _ = build_state(1_000)
        started = time.perf_counter()
        for event in events:
            evolve(state, event)
        best = min(best, time.perf_counter() - started)
    return best / len(events) * 1e6


def measure_conversions(runs: int) -> list[tuple[str, float]]:
    state, ids = build_state(1_000)
    batches = make_batches(Chooser(ids, "uniform", seed=7), 20_000, first_id=1 << 64)
    events: list[Event] = []
    for batch in batches:
        for outcome in decide_batch(state, batch, NOW_US):
            events.extend(outcome.events)
    stored = [(e.type, e.schema_version, event_to_data(e)) for e in events]
    dumped = [e.model_dump() for e in events]
    by_event = dict(zip(map(id, events), stored, strict=True))
    dump_by_event = dict(zip(map(id, events), dumped, strict=True))

    def read(e: Event) -> object:
        t, v, d = by_event[id(e)]
        return event_from_data(t, v, d)

    def read_validated(e: Event) -> object:
        t, v, d = by_event[id(e)]
        return event_from_data(t, v, d, validate=True)

    return [
        ("evolve (replay into a fresh state)", replay_us(events, runs)),
        ("event_to_data", per_event_us(events, event_to_data, runs)),
        ("model_dump(mode='json') (pydantic, for comparison)",
         per_event_us(events, lambda e: e.model_dump(mode="json"), runs)),
        ("event_from_data (trusted)", per_event_us(events, read, runs)),
        ("event_from_data(validate=True)", per_event_us(events, read_validated, runs)),
        ("TypeAdapter(LedgerEvent).validate_python (pydantic, for comparison)",
         per_event_us(events, lambda e: LEDGER_EVENT_ADAPTER.validate_python(
             dump_by_event[id(e)]), runs)),
    ]  # fmt: skip


def _figure(result: DomainResult) -> str:
    return f"{result.transfers_per_s:,.0f} [{result.wall_transfers_per_s:,.0f}]"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_domain", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small run (smoke test)")
    parser.add_argument("--runs", type=int, default=3, help="runs per figure (median)")
    args = parser.parse_args(argv)
    transfers = 20_000 if args.quick else 200_000
    account_counts = (1_000, 100_000) if args.quick else (1_000, 1_000_000)
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(
        f"decide_batch, batches of {BATCH_SIZE}, {transfers:,} transfers per run, median of "
        f"{args.runs} runs; Python {platform.python_version()} on {platform.machine()}, "
        f"{os.cpu_count()} CPUs, load average {load[0]:.2f} at start",
        flush=True,
    )
    print(
        "transfers per CPU second (wall-clock figure in brackets), gc thresholds default "
        "and raised",
        flush=True,
    )
    print(
        f"{'accounts':>10}  {'choice':<8}  {'gc default':>20}  {'gc raised':>20}   "
        "runs (CPU): default | raised",
        flush=True,
    )
    for accounts in account_counts:
        for distribution in ("uniform", "zipf"):
            default, raised = measure(accounts, distribution, transfers, args.runs)
            runs = " | ".join(
                ", ".join(f"{r:,.0f}" for r in result.runs) for result in (default, raised)
            )
            print(
                f"{accounts:>10,}  {distribution:<8}  {_figure(default):>20}  "
                f"{_figure(raised):>20}   {runs}",
                flush=True,
            )
    print("\nper event (TransferCreated, 20 000 events), best of runs:", flush=True)
    for name, us in measure_conversions(args.runs):
        print(f"  {us:6.2f} us  {name}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
