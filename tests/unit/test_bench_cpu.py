"""The lag benchmark's CPU accounting: what each part of the way spent per transfer, and
the rest of the machine as ``other``. (The figures are printed, never asserted.)"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.bench_projections import _cpu_snapshot, cpu_per_transfer


def test_cpu_per_transfer_splits_the_machine_by_part() -> None:
    before = {"machine": 10.0, "node": 1.0, "postgres": 2.0, "relay": 0.5, "workers": 0.5}
    after = {"machine": 12.0, "node": 1.5, "postgres": 2.4, "relay": 0.7, "workers": 1.0}
    per = cpu_per_transfer(before, after, 10_000)
    assert per["machine"] == pytest.approx(200.0)
    assert per["node"] == pytest.approx(50.0)
    assert per["postgres"] == pytest.approx(40.0)
    assert per["relay"] == pytest.approx(20.0)
    assert per["workers"] == pytest.approx(50.0)
    assert per["other"] == pytest.approx(40.0)  # 2.0 s busy, 1.6 s of it named


def test_cpu_per_transfer_is_empty_without_figures() -> None:
    snap = {"machine": 1.0, "node": 1.0, "postgres": 0.0}
    assert cpu_per_transfer(None, snap, 10) == {}
    assert cpu_per_transfer(snap, None, 10) == {}
    assert cpu_per_transfer(snap, snap, 0) == {}


def test_a_part_that_ended_counts_nothing_rather_than_less_than_nothing() -> None:
    before = {"machine": 5.0, "node": 1.0, "postgres": 3.0}
    after = {"machine": 6.0, "node": 1.2, "postgres": 1.0}  # backends gone in between
    per = cpu_per_transfer(before, after, 1_000)
    assert per["postgres"] == 0.0
    assert per["other"] == pytest.approx(800.0)


_SPIN_THEN_SLEEP = (
    "import time\nt = time.process_time()\n"
    "while time.process_time() - t < 0.3:\n    pass\ntime.sleep(30)"
)


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="reads /proc (Linux)")
def test_the_snapshot_counts_this_process_and_a_child() -> None:
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _SPIN_THEN_SLEEP,
        ]
    )
    try:
        before = _cpu_snapshot({"child": child.pid})
        assert before is not None
        spin = time.process_time()
        while time.process_time() - spin < 0.2:
            pass
        deadline = time.monotonic() + 10
        after = _cpu_snapshot({"child": child.pid})
        while after is not None and after["child"] < 0.25 and time.monotonic() < deadline:
            time.sleep(0.05)
            after = _cpu_snapshot({"child": child.pid})
        assert after is not None
        assert after["node"] - before["node"] >= 0.15
        assert after["child"] >= 0.25
        assert after["machine"] - before["machine"] >= 0.15
        assert set(after) == {"machine", "node", "child", "postgres"}
    finally:
        child.kill()
        child.wait()
    gone = _cpu_snapshot({"child": child.pid})
    assert gone is not None and gone["child"] == 0.0
