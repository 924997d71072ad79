"""The domain benchmark still runs: every transfer it times is created, and it leaves the
garbage collector as it found it. (Timing is printed by the benchmark, never asserted.)"""

from __future__ import annotations

import gc

from benchmarks.bench_domain import measure


def test_the_domain_benchmark_creates_every_transfer_and_restores_the_gc() -> None:
    thresholds = gc.get_threshold()
    default, raised = measure(accounts=200, distribution="zipf", transfers=2_000, runs=1)
    assert default.transfers_per_s > 0 and raised.transfers_per_s > 0
    assert gc.get_threshold() == thresholds
    assert gc.get_freeze_count() == 0
