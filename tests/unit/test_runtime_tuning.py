"""The interpreter settings the node runs with (ledger.bootstrap)."""

from __future__ import annotations

import gc
import sys

from ledger.bootstrap import GC_THRESHOLDS, SWITCH_INTERVAL_S, tune_runtime


def test_tune_runtime_sets_the_collector_and_the_switch_interval() -> None:
    thresholds, interval = gc.get_threshold(), sys.getswitchinterval()
    try:
        sys.setswitchinterval(0.005)  # CPython's default
        tune_runtime()
        assert gc.get_threshold() == GC_THRESHOLDS
        assert sys.getswitchinterval() == SWITCH_INTERVAL_S < 0.005
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
        sys.setswitchinterval(interval)
