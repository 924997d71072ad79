"""No Docker engine runs here, so check docker-compose.yml against config.py by reading it."""

from __future__ import annotations

import re
from pathlib import Path

from ledger.config import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]


def test_compose_uses_only_known_ledger_variables() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    used = set(re.findall(r"\b(LEDGER_[A-Z0-9_]+)\s*:", text))
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    assert used, "compose file sets no LEDGER_* variables"
    assert used <= known, f"unknown variables in docker-compose.yml: {sorted(used - known)}"


def test_compose_runs_every_ledger_process() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    for service in ("postgres:", "kafka:", "serve:", "relay:", "project:", "coordinator:"):
        assert re.search(rf"^  {service}", text, re.M), service
    assert "KAFKA_PROCESS_ROLES: broker,controller" in text  # KRaft, no ZooKeeper
