"""Every ``LEDGER_*`` setting, parsed once.

Names carry their unit last (``batch_wait_ms``, ``wal_segment_size_bytes``). A bad value is
reported as :class:`ConfigError` naming the environment variable, e.g.
``LEDGER_BATCH_SIZE_MAX: Input should be greater than or equal to 1 (got '0')``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["ConfigError", "Settings", "get_settings", "load_settings"]

ENV_PREFIX = "LEDGER_"


class ConfigError(ValueError):
    """One or more ``LEDGER_*`` variables are invalid; the message names each of them."""


class Settings(BaseSettings):
    """Runtime configuration. Unset URLs mean: start the embedded development services."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    database_url: str | None = Field(
        default=None, description="PostgreSQL URL; unset: embedded PostgreSQL (dev only)."
    )
    kafka_bootstrap: str | None = Field(
        default=None, description="Kafka bootstrap servers; unset: local Tansu broker (dev only)."
    )
    kafka_topic: str = Field(default="ledger.events", min_length=1)
    kafka_idempotence: bool = Field(
        default=False, description="Producer idempotence: on for Apache Kafka, off for Tansu."
    )
    kafka_partitions: int = Field(default=6, ge=1, le=1000)
    kafka_isolation_level: str = Field(
        default="read_uncommitted",
        pattern=r"^(read_committed|read_uncommitted)$",
        description="Consumer isolation level; Tansu supports only read_uncommitted.",
    )
    relay_poll_interval_ms: int = Field(default=50, ge=1, le=60_000)
    relay_batch_size_max: int = Field(default=5000, ge=1, le=1_000_000)
    projection_group: str = Field(default="ledger-projections", min_length=1)
    projection_batch_size_max: int = Field(default=5000, ge=1, le=1_000_000)
    projection_catchup_interval_ms: int = Field(default=2000, ge=10)
    projection_session_timeout_ms: int = Field(default=10_000, ge=1000, le=300_000)
    book_id: str = Field(default="main", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    wal_dir: Path = Field(default=Path("var/wal"))
    wal_segment_size_bytes: int = Field(default=64 * 1024 * 1024, ge=4096, le=1 << 34)
    batch_size_max: int = Field(default=8190, ge=1, le=100_000)
    batch_wait_ms: float = Field(default=0.0, ge=0, le=1000)
    queue_size_max: int = Field(default=65_536, ge=1, le=10_000_000)
    snapshot_every_events: int = Field(default=100_000, ge=1)
    snapshot_pace: float = Field(default=4.0, ge=0, le=100)
    pending_expiry_interval_ms: int = Field(default=1000, ge=10)
    postgres_retry_max_ms: int = Field(default=2000, ge=10)
    http_host: str = Field(default="127.0.0.1")
    http_port: int = Field(default=8080, ge=0, le=65535)
    http_body_size_max_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    log_level: str = Field(default="INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")
    log_json: bool | None = Field(default=None, description="JSON logs; unset: JSON unless a TTY.")
    coordinator_book_id: str = Field(
        default="coordinator", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$"
    )
    coordinator_database_url: str | None = Field(
        default=None, description="The coordinator's event store; unset: LEDGER_DATABASE_URL."
    )
    coordinator_wal_dir: Path | None = Field(
        default=None, description="The coordinator's WAL; unset: LEDGER_WAL_DIR/<book id>."
    )
    coordinator_http_port: int = Field(default=8090, ge=0, le=65535)
    coordinator_tcc_timeout_s: float = Field(default=30.0, gt=0, le=86_400)
    coordinator_call_timeout_ms: int = Field(default=10_000, ge=10, le=600_000)
    coordinator_retry_base_ms: int = Field(default=100, ge=1, le=60_000)
    coordinator_retry_max_ms: int = Field(default=30_000, ge=1, le=3_600_000)
    coordinator_alert_after_attempts: int = Field(default=5, ge=1, le=1000)
    coordinator_retries_per_s_max: int = Field(default=1000, ge=1, le=1_000_000)
    coordinator_in_flight_max: int = Field(default=10_000, ge=1, le=1_000_000)
    coordinator_connections_max: int = Field(default=256, ge=1, le=10_000)
    coordinator_batch_calls_max: int = Field(
        default=512, ge=1, le=8190, description="Calls per batch request (batch_url branches)."
    )
    coordinator_batch_in_flight_max: int = Field(
        default=4, ge=1, le=256, description="Batch requests in flight per participant URL."
    )
    coordinator_wait_max_s: float = Field(default=60.0, gt=0, le=3600)


def load_settings(**overrides: object) -> Settings:
    """Parse the environment (plus ``overrides``) or raise :class:`ConfigError`."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"])
            lines.append(f"{ENV_PREFIX}{field.upper()}: {err['msg']} (got {err.get('input')!r})")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, parsed on first use."""
    return load_settings()
