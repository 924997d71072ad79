"""Prometheus metrics of one API process (a registry per app, so tests stay independent)."""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Sequence
from operator import attrgetter
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ledger.gcpauses import GcPauseCollector

__all__ = ["ApiMetrics"]

_STATUS_AND_CODE = attrgetter("status", "code")

_LATENCY_BUCKETS_S = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
)  # fmt: skip
_BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 8190)


class ApiMetrics:
    """Every metric the API exports at ``/metrics``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        r.register(GcPauseCollector())
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
        # Label children by label values: ``labels()`` costs a lock, a tuple of
        # str() and a dict probe per call, which shows per request and per outcome.
        self._requests_by: dict[tuple[str, str, int], Any] = {}
        self._seconds_by: dict[tuple[str, str], Any] = {}
        self._outcomes_by: dict[tuple[str, Any], Any] = {}

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one answered request and its latency."""
        counter = self._requests_by.get((method, route, status))
        if counter is None:
            counter = self.requests.labels(method, route, str(status))
            self._requests_by[(method, route, status)] = counter
        counter.inc()
        histogram = self._seconds_by.get((method, route))
        if histogram is None:
            histogram = self.request_seconds.labels(method, route)
            self._seconds_by[(method, route)] = histogram
        histogram.observe(seconds)

    def count_outcomes(self, outcomes: Sequence[Any]) -> None:
        """Count command outcomes by status and rejection code (once per distinct pair)."""
        if len(outcomes) == 1:
            self._outcome_counter(outcomes[0].status, outcomes[0].code).inc()
            return
        for (status, code), n in Tally(map(_STATUS_AND_CODE, outcomes)).items():
            self._outcome_counter(status, code).inc(n)

    def _outcome_counter(self, status: str, code: Any) -> Any:
        counter = self._outcomes_by.get((status, code))
        if counter is None:
            counter = self.outcomes.labels(status, str(code or ""))
            self._outcomes_by[(status, code)] = counter
        return counter
