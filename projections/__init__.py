"""Projections: the read models built from the ledger's events, and the tools around them.

``ledger relay`` publishes the event store to Kafka; ``ledger project`` runs
:class:`~projections.worker.ProjectionWorker` (a consumer group) that applies the events
to the read models with exactly-once checkpoints (:mod:`projections.tracking`);
``ledger projections rebuild`` replays a read model from the event store into a shadow
table and swaps it in (:mod:`projections.rebuild`); ``ledger projections status``
reports positions and lag (:mod:`projections.status`); :class:`projections.read.ReadModels`
serves the API's reads.
"""

from __future__ import annotations

from ledger.pgconn import PROJECTION_NAMES
from projections.base import (
    Projection,
    ProjectionError,
    ProjectionInvariantViolated,
    UnknownProjection,
)
from projections.models import (
    AccountBalancesProjection,
    AccountEntriesProjection,
    TransfersProjection,
    TrialBalanceProjection,
)

__all__ = [
    "PROJECTION_NAMES",
    "AccountBalancesProjection",
    "AccountEntriesProjection",
    "Projection",
    "ProjectionError",
    "ProjectionInvariantViolated",
    "TransfersProjection",
    "TrialBalanceProjection",
    "UnknownProjection",
    "all_projections",
    "get_projections",
]


def all_projections() -> list[Projection]:
    """One instance of every read model, in a fixed order."""
    return [
        AccountBalancesProjection(),
        AccountEntriesProjection(),
        TransfersProjection(),
        TrialBalanceProjection(),
    ]


def get_projections(names: list[str] | tuple[str, ...] | None = None) -> list[Projection]:
    """The projections called ``names`` (all of them when empty or None)."""
    every = all_projections()
    if not names:
        return every
    by_name = {p.name: p for p in every}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise UnknownProjection(
            f"unknown projection {', '.join(map(repr, unknown))}; known: {', '.join(by_name)}"
        )
    return [by_name[n] for n in dict.fromkeys(names)]
