"""How long this process stops for the cyclic garbage collector, by generation.

A long collection stops every thread of the process (the event loop and every pipeline
stage), so it shows directly in the latency of whatever was in flight. :func:`install`
adds a ``gc.callbacks`` hook once per process; each metrics registry that wants the
figures registers :class:`GcPauseCollector`, which reads them when scraped as
``python_gc_pause_seconds`` (a histogram labelled by generation).
"""

from __future__ import annotations

import bisect
import gc
import threading
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

__all__ = ["BUCKETS_S", "GcPauseCollector", "GcPauses", "install"]

BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)


class GcPauses:
    """Counts per bucket, sum and count of the pauses of each generation."""

    def __init__(self) -> None:
        # Re-entrant: copying the figures allocates, and a collection that starts then
        # calls back into this object on the same thread.
        self._lock = threading.RLock()
        self._started = 0.0
        self.counts = [[0] * (len(BUCKETS_S) + 1) for _ in range(3)]
        self.sums = [0.0, 0.0, 0.0]
        self.longest = [0.0, 0.0, 0.0]

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        # The collector runs with the GIL held, one collection at a time.
        if phase == "start":
            self._started = time.perf_counter()
            return
        seconds = time.perf_counter() - self._started
        generation = min(max(int(info.get("generation", 0)), 0), 2)
        with self._lock:
            self.counts[generation][bisect.bisect_left(BUCKETS_S, seconds)] += 1
            self.sums[generation] += seconds
            self.longest[generation] = max(self.longest[generation], seconds)

    def snapshot(self) -> list[tuple[list[int], float]]:
        with self._lock:
            return [(list(c), s) for c, s in zip(self.counts, self.sums, strict=True)]


_pauses: GcPauses | None = None
_install_lock = threading.Lock()


def install() -> GcPauses:
    """Start timing this process's collections (once; later calls return the same)."""
    global _pauses
    with _install_lock:
        if _pauses is None:
            _pauses = GcPauses()
            gc.callbacks.append(_pauses)
        return _pauses


class GcPauseCollector(Collector):
    """Exports the process's pauses (nothing until :func:`install` is called)."""

    def collect(self) -> Iterator[HistogramMetricFamily]:
        figures = _pauses
        if figures is None:
            return
        family = HistogramMetricFamily(
            "python_gc_pause_seconds",
            "Time the process stopped for each cyclic garbage collection",
            labels=["generation"],
        )
        for generation, (counts, total) in enumerate(figures.snapshot()):
            cumulative, buckets = 0, []
            for bound, n in zip((*BUCKETS_S, float("inf")), counts, strict=True):
                cumulative += n
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
            family.add_metric([str(generation)], buckets, total)
        yield family
