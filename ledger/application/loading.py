"""How the node rebuilds records it does not hold in memory.

Accounts and pending transfers come from their snapshots (saved with the batch that
reached the snapshot watermark). Transfers that are not holds (single-phase transfers,
posts and voids) never change after they are created, so their creating event is their
whole history: :func:`transfer_from_event` rebuilds the record exactly as ``evolve``
created it (a unit test checks that equality for every kind).
"""

from __future__ import annotations

from uuid import UUID

from ledger.domain.errors import InvariantViolated
from ledger.domain.events import (
    AccountClosed,
    AccountOpened,
    Event,
    PendingTransferExpired,
    PendingTransferForbidden,
    PendingTransferPosted,
    PendingTransferVoided,
    TransferCreated,
)
from ledger.domain.state import PendingStatus, Transfer

__all__ = ["event_references", "transfer_from_event"]


def event_references(event: Event) -> tuple[tuple[UUID, ...], tuple[UUID, ...]]:
    """(accounts, transfers) whose state the event changes or creates."""
    if isinstance(event, TransferCreated):
        return (event.debit_account_id, event.credit_account_id), (event.transfer_id,)
    if isinstance(event, PendingTransferPosted | PendingTransferVoided):
        return (
            (event.debit_account_id, event.credit_account_id),
            (event.transfer_id, event.pending_id),
        )
    if isinstance(event, PendingTransferExpired):
        return (event.debit_account_id, event.credit_account_id), (event.pending_id,)
    if isinstance(event, AccountOpened | AccountClosed):
        return (event.account_id,), ()
    if isinstance(event, PendingTransferForbidden):
        return (), (event.pending_id,)
    raise InvariantViolated(f"unknown event type {event.type!r}")


def transfer_from_event(event: Event) -> Transfer:
    """The record of a transfer that is not a hold, from the event that created it."""
    if isinstance(event, TransferCreated):
        if event.flags.pending:
            raise InvariantViolated(
                f"transfer {event.transfer_id} is a hold: it must come from its snapshot"
            )
        return Transfer(
            id=event.transfer_id,
            debit_account_id=event.debit_account_id,
            credit_account_id=event.credit_account_id,
            amount_minor=event.amount_minor,
            ledger=event.ledger,
            code=event.code,
            flags=event.flags,
            pending_id=None,
            timeout_s=event.timeout_s,
            metadata=dict(event.metadata),
            timestamp_us=event.timestamp_us,
            expires_at_us=None,
            pending_status=PendingStatus.none,
        )
    if isinstance(event, PendingTransferPosted | PendingTransferVoided):
        return Transfer(
            id=event.transfer_id,
            debit_account_id=event.debit_account_id,
            credit_account_id=event.credit_account_id,
            amount_minor=event.amount_minor,
            ledger=event.ledger,
            code=event.code,
            flags=event.flags,
            pending_id=event.pending_id,
            timeout_s=0,
            metadata=dict(event.metadata),
            timestamp_us=event.timestamp_us,
            expires_at_us=None,
            pending_status=PendingStatus.none,
        )
    raise InvariantViolated(f"{event.type} does not create a transfer record")
