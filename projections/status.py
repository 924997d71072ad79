"""``ledger projections status``: where each projection (and the relay) stands, per book.

For every projection and book: the checkpoint (last applied position), the book's head in
the event store, the lag in events (head - checkpoint) and in seconds. The lag in seconds
is the age of the oldest event not yet applied (``now() - committed_at`` of position
checkpoint + 1), zero when caught up: it grows while a worker is stuck, which a
difference of two timestamps would not show. :func:`collect` returns the same rows for
Prometheus (:class:`StatusCollector`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from projections import PROJECTION_NAMES
from projections.tracking import connect

__all__ = ["ProjectionStatus", "StatusCollector", "collect", "format_status"]

_QUERY = """
WITH RECURSIVE b(id) AS (
    SELECT min(book_id) FROM events
    UNION ALL SELECT (SELECT min(book_id) FROM events WHERE book_id > b.id) FROM b
    WHERE b.id IS NOT NULL
), heads AS (
    SELECT b.id AS book_id, (SELECT max(position) FROM events WHERE book_id = b.id) AS head
    FROM b WHERE b.id IS NOT NULL
), subjects AS (
    SELECT 'projection' AS kind, p.name, c.position, c.updated_at, heads.book_id, heads.head
    FROM heads CROSS JOIN unnest(%(names)s::text[]) AS p(name)
    LEFT JOIN projection_checkpoints c ON c.projection = p.name AND c.book_id = heads.book_id
    UNION ALL
    SELECT 'relay', r.relay, r.position, r.updated_at, heads.book_id, heads.head
    FROM relay_checkpoints r JOIN heads ON heads.book_id = r.book_id
)
SELECT s.kind, s.name, s.book_id, coalesce(s.position, 0), s.head, s.updated_at,
    coalesce((SELECT extract(epoch FROM now() - e.committed_at) FROM events e
              WHERE e.book_id = s.book_id AND e.position = coalesce(s.position, 0) + 1), 0)
FROM subjects s ORDER BY 1 DESC, 2, 3
"""


@dataclass(frozen=True, slots=True)
class ProjectionStatus:
    """One projection (``kind`` "projection") or relay (``kind`` "relay") for one book."""

    kind: str
    name: str
    book_id: str
    position: int
    head: int
    lag_events: int
    lag_seconds: float
    updated_at: Any


def collect(database_url: str, names: Sequence[str] = PROJECTION_NAMES) -> list[ProjectionStatus]:
    """Positions and lag of every projection in ``names`` and every relay, per book."""
    with connect(database_url) as conn:
        return collect_on(conn, names)


def collect_on(
    conn: psycopg.Connection[Any], names: Sequence[str] = PROJECTION_NAMES
) -> list[ProjectionStatus]:
    rows = conn.execute(_QUERY, {"names": list(names)}).fetchall()
    return [
        ProjectionStatus(
            kind=r[0],
            name=r[1],
            book_id=r[2],
            position=int(r[3]),
            head=int(r[4]),
            lag_events=max(int(r[4]) - int(r[3]), 0),
            lag_seconds=round(float(r[6]), 3),
            updated_at=r[5],
        )
        for r in rows
    ]


def format_status(rows: Sequence[ProjectionStatus]) -> str:
    """The status as an aligned text table (what the command prints)."""
    header = ("KIND", "NAME", "BOOK", "POSITION", "HEAD", "LAG_EVENTS", "LAG_S", "UPDATED")
    lines = [header]
    for r in rows:
        updated = "-" if r.updated_at is None else f"{r.updated_at:%Y-%m-%d %H:%M:%S}"
        lines.append(
            (
                r.kind,
                r.name,
                r.book_id,
                str(r.position),
                str(r.head),
                str(r.lag_events),
                f"{r.lag_seconds:.3f}",
                updated,
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


class StatusCollector:
    """A ``prometheus_client`` collector: ``ledger_projection_position``,
    ``ledger_projection_head``, ``ledger_projection_lag_events`` and
    ``ledger_projection_lag_seconds``, labelled by kind, name and book. Register it with
    ``REGISTRY.register(StatusCollector(url))``; each scrape runs one query."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        labels = ["kind", "name", "book"]
        families = {
            "position": GaugeMetricFamily(
                "ledger_projection_position", "Last applied position", labels=labels
            ),
            "head": GaugeMetricFamily(
                "ledger_projection_head", "Head position of the book", labels=labels
            ),
            "lag_events": GaugeMetricFamily(
                "ledger_projection_lag_events", "Events not yet applied", labels=labels
            ),
            "lag_seconds": GaugeMetricFamily(
                "ledger_projection_lag_seconds",
                "Age of the oldest event not yet applied",
                labels=labels,
            ),
        }
        try:
            rows = collect(self.database_url)
        except psycopg.Error:
            rows = []
        for r in rows:
            values = [r.kind, r.name, r.book_id]
            families["position"].add_metric(values, r.position)
            families["head"].add_metric(values, r.head)
            families["lag_events"].add_metric(values, r.lag_events)
            families["lag_seconds"].add_metric(values, r.lag_seconds)
        yield from families.values()
