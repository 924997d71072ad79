"""Errors of the application layer (storage, node, recovery).

The tree, by what the caller should do about it::

    LedgerError
    ├── Retriable                    expected; try again later with the same ids
    │   ├── Overloaded               the node's command queue is full (HTTP 503 + Retry-After)
    │   └── EventStoreUnavailable    PostgreSQL cannot be reached or timed out
    ├── NodeStopped                  the node is shutting down or has failed; nothing was acked
    ├── LeaseLost                    another writer took this book's lease (this node must stop)
    ├── LeaseHeld                    at start: another live node holds the lease
    ├── RecoveryFailed               the WAL and the event store disagree in a way that needs
    │                                an operator (message says where)
    └── DuplicateEvent               a position or event id is already stored with other content

Domain rejections (``ledger.domain.errors.CommandRejected``) are not errors of this layer:
they are outcomes, returned to the caller with a stable code. Bugs raise
``InvariantViolated`` (an ``AssertionError``) and are never caught and continued.
"""

from __future__ import annotations

__all__ = [
    "DuplicateEvent",
    "EventStoreUnavailable",
    "LeaseHeld",
    "LeaseLost",
    "LedgerError",
    "NodeStopped",
    "Overloaded",
    "RecoveryFailed",
    "Retriable",
]


class LedgerError(Exception):
    """Base of every application-layer error."""


class Retriable(LedgerError):
    """The request was not carried out and may be retried with the same ids."""

    retry_after_s: float = 1.0


class Overloaded(Retriable):
    """The node's bounded command queue is full; nothing of this request was accepted."""


class EventStoreUnavailable(Retriable):
    """PostgreSQL could not be reached (connection refused, reset, or timed out)."""


class NodeStopped(LedgerError):
    """The node stopped (shutdown or a fatal error) before this request was acknowledged."""


class LeaseLost(LedgerError):
    """Another writer took the book's lease: this node was deposed and must not write."""


class LeaseHeld(LedgerError):
    """The book's writer lease is held by another live node."""


class RecoveryFailed(LedgerError):
    """The WAL and the event store disagree in a way recovery must not guess about."""


class DuplicateEvent(LedgerError):
    """A record's position or event id is already stored with different content."""
