"""`make demo` runs `ledger demo`: every step checks what it shows, so it must pass here."""

from __future__ import annotations

import pytest

from ledger.demo import run_demo


def test_demo_story_passes_every_check(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_demo() == 0
    out = capsys.readouterr().out
    for step in ("Open accounts", "Burst", "Crash and recovery", "Audit replay"):
        assert step in out
    assert "demo finished" in out
