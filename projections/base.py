"""What a projection is, and the errors of the projections package.

A projection turns a book's events, in position order, into rows of its read-model
tables. It never decides anything: every figure it stores is in the events (each transfer
event carries the balances of both accounts after it), so applying the same events always
gives the same rows, and a rebuild from the event store gives exactly what live
consumption gave. :mod:`projections.tracking` calls :meth:`Projection.apply` inside the
transaction that also moves the projection's checkpoint, so rows and checkpoint never
disagree; a projection must therefore do all its writes through the connection it is
given and must not commit.

``names`` maps each of the projection's table names to the physical table to write:
the live table normally, its shadow (``<table>__rebuild``) during a rebuild.

Exceptions::

    ProjectionError
    ├── UnknownProjection          a name that is not in the registry (usage error)
    └── ProjectionInvariantViolated  a check after a batch failed: a bug or corruption;
                                     the worker stops, never catch-and-continue
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
from sqlalchemy import Table

from ledger.application.records import EventRecord
from ledger.domain.events import CURRENT_SCHEMA_VERSIONS, event_from_data, event_to_data

__all__ = [
    "Projection",
    "ProjectionError",
    "ProjectionInvariantViolated",
    "TableNames",
    "UnknownProjection",
    "current_data",
]

TableNames = Mapping[str, str]
"""Logical table name -> physical table name (live or shadow)."""


class ProjectionError(Exception):
    """Base of the errors this package raises on purpose."""


class UnknownProjection(ProjectionError, KeyError):
    """No projection of that name is registered; the message lists the known ones."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown projection"


class ProjectionInvariantViolated(ProjectionError, AssertionError):
    """A read model broke a rule that holds for every correct ledger (for example the
    trial balance: Σ debits = Σ credits per book and ledger code). It means a bug or a
    corrupted row; the transaction is rolled back and the worker stops."""


def current_data(record: EventRecord) -> Mapping[str, Any]:
    """The record's ``data`` at the current schema version (upcast when it is older)."""
    if CURRENT_SCHEMA_VERSIONS.get(record.type) == record.schema_version:
        return record.data
    return event_to_data(event_from_data(record.type, record.schema_version, record.data))


class Projection(ABC):
    """A read model: a name, its tables, and how a batch of events changes their rows."""

    name: str
    tables: tuple[Table, ...]

    def live_names(self) -> dict[str, str]:
        return {t.name: t.name for t in self.tables}

    @abstractmethod
    def apply(
        self,
        conn: psycopg.Connection[Any],
        book_id: str,
        records: Sequence[EventRecord],
        names: TableNames,
    ) -> None:
        """Apply ``records`` (consecutive positions of ``book_id``) in the caller's
        transaction."""

    def check(self, conn: psycopg.Connection[Any], book_id: str, names: TableNames) -> None:
        """Raise :class:`ProjectionInvariantViolated` if the tables break a rule; called
        after every applied batch, in the same transaction."""
        return None
