"""What the README shows must be true: its snippets run, its tables match the code."""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
from pathlib import Path

import pytest

from ledger.config import ENV_PREFIX, Settings
from tests.integration.api.conftest import start_server

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
LISTED_ELSEWHERE = ("relay_", "projection_", "coordinator_", "kafka_partitions", "kafka_isolation")


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, re.S)


def test_configuration_table_lists_every_setting() -> None:
    table = README.split("<!-- settings-table")[1].split("<!-- /settings-table -->")[0]
    documented = set(re.findall(r"`(LEDGER_[A-Z0-9_]+)`", table))
    fields = {
        ENV_PREFIX + name.upper()
        for name in Settings.model_fields
        if not name.startswith(LISTED_ELSEWHERE)
    }
    assert documented == fields


def test_every_operation_in_the_readme_is_a_cli_command() -> None:
    from ledger.cli import build_parser

    ops = re.findall(r"^ledger ([a-z]+(?: [a-z]+)?)", blocks("sh")[2], re.M)
    parser = build_parser()
    for op in ops:
        words = op.split()
        if words[0] in ("keys", "wal", "projections") and len(words) == 2:
            args = [*words, "--help"]
        else:
            args = [words[0], "--help"]
        with contextlib.redirect_stdout(io.StringIO()), pytest.raises(SystemExit) as exit_info:
            parser.parse_args(args)
        assert exit_info.value.code == 0, op


@pytest.fixture
def server_env(database_url: str, tmp_path: Path) -> object:
    for live in start_server(database_url, tmp_path / "wal"):
        env = {**os.environ, "LEDGER_URL": live.base_url, "LEDGER_KEY": live.tokens["admin"]}
        yield env


def test_curl_examples_run(server_env: dict[str, str]) -> None:
    curl = next(b for b in blocks("sh") if "curl" in b)
    out = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", curl], env=server_env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.count('"status":"created"') == 3
    assert '"credits_posted":2500' in out.stdout


def test_python_example_runs(server_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    [code] = blocks("python")
    monkeypatch.setenv("LEDGER_URL", server_env["LEDGER_URL"])
    monkeypatch.setenv("LEDGER_KEY", server_env["LEDGER_KEY"])
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, "README.md", "exec"), {})
    assert printed.getvalue().split() == ["exceeds_credits", "700"]
