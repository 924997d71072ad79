"""The collector's pauses are timed and exported by generation."""

from __future__ import annotations

import gc

from prometheus_client import CollectorRegistry, generate_latest

from ledger import gcpauses


def _sample(text: str, name: str, generation: int) -> float:
    for line in text.splitlines():
        if line.startswith(f'{name}{{generation="{generation}"}}'):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name} for generation {generation} in:\n{text}")


def test_every_collection_is_timed_by_generation() -> None:
    registry = CollectorRegistry()
    registry.register(gcpauses.GcPauseCollector())
    figures = gcpauses.install()
    assert gcpauses.install() is figures  # one hook per process
    assert gc.callbacks.count(figures) == 1
    before = generate_latest(registry).decode()
    full = _sample(before, "python_gc_pause_seconds_count", 2)
    young = _sample(before, "python_gc_pause_seconds_count", 0)
    gc.collect()
    gc.collect(0)
    after = generate_latest(registry).decode()
    assert _sample(after, "python_gc_pause_seconds_count", 2) >= full + 1
    assert _sample(after, "python_gc_pause_seconds_count", 0) >= young + 1
    assert _sample(after, "python_gc_pause_seconds_sum", 2) > 0.0
    inf = 'python_gc_pause_seconds_bucket{generation="2",le="+Inf"}'
    assert any(line.startswith(inf) for line in after.splitlines())
    assert figures.longest[2] > 0.0
