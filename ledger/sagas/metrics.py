"""Prometheus metrics of the coordinator (a registry per coordinator, so tests stay apart)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ledger.gcpauses import GcPauseCollector

__all__ = ["CoordinatorMetrics"]

_LATENCY_BUCKETS_S = (
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0,
)  # fmt: skip


class CoordinatorMetrics:
    """Every metric ``ledger coordinator`` exports at ``/metrics``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        r.register(GcPauseCollector())
        self.transactions = Gauge(
            "coordinator_transactions",
            "Unfinished transactions by kind and status",
            ["kind", "status"],
            registry=r,
        )
        self.finished = Counter(
            "coordinator_transactions_finished",
            "Transactions that reached a final state, by kind and outcome",
            ["kind", "outcome"],
            registry=r,
        )
        self.calls = Counter(
            "coordinator_calls",
            "Participant calls by operation and classified result",
            ["op", "result"],
            registry=r,
        )
        self.alerts = Counter(
            "coordinator_alerts",
            "Alerts raised: a call still not succeeding after many attempts, or a "
            "participant answering failure where the protocol forbids it",
            ["op", "reason"],
            registry=r,
        )
        self.call_seconds = Histogram(
            "coordinator_call_seconds",
            "Participant call latency",
            ["op"],
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.batch_items = Histogram(
            "coordinator_call_batch_items",
            "Calls per batch request (branches with a batch_url)",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 8190),
            registry=r,
        )
        self.commit_seconds = Histogram(
            "coordinator_journal_commit_seconds",
            "Journal batch: WAL append + fdatasync + PostgreSQL insert",
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.transaction_seconds = Histogram(
            "coordinator_transaction_seconds",
            "Start to final state",
            ["kind"],
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
