"""Prometheus metrics of one API process (a registry per app, so tests stay independent)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["ApiMetrics"]

_LATENCY_BUCKETS_S = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
)  # fmt: skip
_BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 8190)


class ApiMetrics:
    """Every metric the API exports at ``/metrics``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "ledger_http_requests", "HTTP requests", ["method", "route", "status"], registry=r
        )
        self.request_seconds = Histogram(
            "ledger_http_request_seconds",
            "HTTP request latency",
            ["method", "route"],
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.batch_commands = Histogram(
            "ledger_batch_commands", "Commands per node batch", buckets=_BATCH_BUCKETS, registry=r
        )
        self.queue_depth = Gauge("ledger_queue_depth", "Commands waiting in the node", registry=r)
        self.wal_fsync_seconds = Histogram(
            "ledger_wal_append_seconds",
            "WAL append + fdatasync per batch",
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.store_commit_seconds = Histogram(
            "ledger_store_commit_seconds",
            "PostgreSQL batch transaction",
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.position = Gauge("ledger_position", "Highest position decided", registry=r)
        self.outcomes = Counter(
            "ledger_command_outcomes", "Command outcomes", ["status", "code"], registry=r
        )
