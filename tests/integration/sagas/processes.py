"""``ledger coordinator`` (and ``ledger serve``) as real child processes, to be SIGKILLed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from ledger.devservices import free_port

__all__ = ["CoordinatorProcess", "wait_ready"]


def wait_ready(base_url: str, proc: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before it was ready")
        try:
            if httpx.get(f"{base_url}/ready", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{base_url} not ready after {timeout_s} s")


@dataclass
class CoordinatorProcess:
    """One coordinator book (database + WAL directory) run by successive processes."""

    database_url: str
    wal_dir: Path
    token: str
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    base_url: str = ""
    log_path: Path | None = None

    def start(self, crash_point: str | None = None, *, wait: bool = True) -> None:
        port = free_port()
        env = {
            **os.environ,
            "LEDGER_DATABASE_URL": self.database_url,
            "LEDGER_WAL_DIR": str(self.wal_dir),
            "LEDGER_LOG_LEVEL": "WARNING",
            "LEDGER_LOG_JSON": "true",
            "LEDGER_COORDINATOR_RETRY_BASE_MS": "10",
            "LEDGER_COORDINATOR_RETRY_MAX_MS": "200",
            "LEDGER_COORDINATOR_CALL_TIMEOUT_MS": "3000",
            **self.env,
        }
        env.pop("LEDGER_COORDINATOR_CRASH_POINT", None)
        if crash_point:
            env["LEDGER_COORDINATOR_CRASH_POINT"] = crash_point
        self.log_path = self.wal_dir.parent / f"coordinator-{port}.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ledger.cli", "coordinator", "--port", str(port)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.base_url = f"http://127.0.0.1:{port}"
        if wait:
            wait_ready(self.base_url, self.proc)

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=30,
        )

    def post(self, path: str, body: Any) -> httpx.Response | None:
        """POST, or None when the process died before answering (a crash point)."""
        try:
            with self.client() as c:
                return c.post(path, json=body)
        except httpx.HTTPError:
            return None

    def kill(self) -> None:
        """SIGKILL, as a crash."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def wait_dead(self, timeout_s: float = 30) -> int:
        """Wait for the process to kill itself at its crash point; its exit code."""
        assert self.proc is not None
        return self.proc.wait(timeout_s)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(15)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def get(self, gid: str) -> dict[str, Any]:
        with self.client() as c:
            body: dict[str, Any] = c.get(f"/v1/transactions/{gid}").json()
            return body

    def wait_finished(self, gid: str, timeout_s: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            state = self.get(gid)
            if state.get("finished"):
                return state
            if time.monotonic() > deadline:
                raise AssertionError(f"{gid} not finished: {state}\n{self.log()[-3000:]}")
            time.sleep(0.02)
