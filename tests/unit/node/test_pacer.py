"""The snapshot stage's pacer: a pause in proportion to the work since the last one."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from ledger.application import node


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def perf_counter(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeTime:
    fake = FakeTime()
    monkeypatch.setattr(
        node, "time", SimpleNamespace(perf_counter=fake.perf_counter, sleep=fake.sleep)
    )
    return fake


def test_pauses_idle_times_the_work_up_to_the_cap(clock: FakeTime) -> None:
    pacer = node._Pacer(4.0)
    clock.now += 0.002  # 2 ms of work
    pacer()
    clock.now += 0.005
    pacer()
    clock.now += 1.0  # a long part: the pause is capped
    pacer()
    assert clock.sleeps == pytest.approx([0.008, 0.020, node.SNAPSHOT_PAUSE_MAX_S])
    assert pacer.slept_s == pytest.approx(0.028 + node.SNAPSHOT_PAUSE_MAX_S)


def test_the_pause_counts_from_the_end_of_the_last_pause(clock: FakeTime) -> None:
    pacer = node._Pacer(1.0)
    clock.now += 0.010
    pacer()  # sleeps 10 ms: that time is not work
    clock.now += 0.003
    pacer()
    assert clock.sleeps == pytest.approx([0.010, 0.003])


def test_no_idle_or_a_closing_node_only_yields(clock: FakeTime) -> None:
    closing = False
    pacer = node._Pacer(4.0, hurry=lambda: closing)
    clock.now += 0.010
    pacer()
    closing = True
    clock.now += 0.010
    pacer()
    idle = node._Pacer(0.0)
    clock.now += 0.010
    idle()
    assert clock.sleeps == pytest.approx([0.040, 0.0005, 0.0005])
