"""How the node rebuilds records it does not hold in memory, and which ones it need not ask
PostgreSQL for.

Accounts and pending transfers come from their snapshots (saved with the batch that
reached the snapshot watermark). Transfers that are not holds (single-phase transfers,
posts and voids) never change after they are created, so their creating event is their
whole history: :func:`transfer_from_event` rebuilds the record exactly as ``evolve``
created it (a unit test checks that equality for every kind).

Most ids a batch names that are not in memory are brand new (a client creating a transfer
picks a fresh id), and asking PostgreSQL about them costs more than deciding them.
:class:`StreamFilter` answers "certainly never stored" for those without a round trip.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import repeat
from uuid import UUID

from ledger.bloom import ScalableBloomFilter
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

__all__ = ["StreamFilter", "created_record", "event_references", "transfer_from_event"]


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


def created_record(event: Event) -> tuple[bool, UUID] | None:
    """(is an account, id) of the stream the event creates (its version-1 event), else None."""
    if isinstance(event, TransferCreated | PendingTransferPosted | PendingTransferVoided):
        return False, event.transfer_id
    if isinstance(event, AccountOpened):
        return True, event.account_id
    if isinstance(event, PendingTransferForbidden):
        return False, event.pending_id
    return None


_ACCOUNT_TAG = b"a"
_TRANSFER_PREFIX = "transfer-"
_ACCOUNT_PREFIX = "account-"


class StreamFilter:
    """The account and transfer streams of a book, as a Bloom filter: answers "certainly
    not stored" or "maybe stored".

    Exact on the negative side, as long as every stream that is ever stored was added:
    a wrong "not stored" would let an id that is already used through idempotency, so the
    node adds every stream it creates, in the batch that creates it, and fills the filter
    from the event store at start (after recovery, so re-inserted WAL records are in).
    A wrong "maybe stored" only costs a look-up in PostgreSQL, which then finds nothing.

    Keys: an id's 16 bytes (an account's behind a tag byte, so an account and a transfer
    with the same UUID are two keys), hashed with Python's ``hash`` of bytes: SipHash
    with a key drawn per process, so sequential client ids spread evenly, and the filter
    is rebuilt at every start anyway. The hashes go into a
    :class:`~ledger.bloom.ScalableBloomFilter` (blocked: one 64-bit word per id; slices
    that double when full; its module docstring has the layout and the figures).

    Memory: ``bits_per_id`` bits per id of capacity (24 by default: 3 bytes). Measured
    false positive rate with 24 bits per id: about 1e-3 when full, 1.3e-4 when half full;
    the node pays the add and the test for every new id, while a false positive only
    adds one id to its batch's look-up. Each slice the filter grows by adds one word test
    to asking about a new id, and its own false positive rate.
    """

    BITS_PER_ID = 24

    def __init__(self, capacity: int, bits_per_id: int = BITS_PER_ID) -> None:
        self._bloom = ScalableBloomFilter(capacity, bits_per_id)

    # -- adding ------------------------------------------------------------------------

    def add_transfer(self, transfer_id: UUID) -> None:
        self._bloom.add_hash(hash(transfer_id.int.to_bytes(16)))

    def add_account(self, account_id: UUID) -> None:
        self._bloom.add_hash(hash(_ACCOUNT_TAG + account_id.int.to_bytes(16)))

    def add_stream_ids(self, stream_ids: Sequence[str]) -> int:
        """Add each ``account-<uuid>`` and ``transfer-<uuid>`` stream; return how many.
        Other streams are skipped: no command can refer to them.

        Commands only ever ask for streams named by a UUID in its canonical form, whose
        key is its hex digits without the dashes: converting every id that way, in C
        (``map``, one id at a time, so one odd id cannot shift the others), gives exactly
        those keys, and at worst a useless extra key for an id in another form. Only if
        some id is not hex at all does the page go through ``UUID``, one id at a time."""
        transfers = [t[9:] for t in stream_ids if t.startswith(_TRANSFER_PREFIX)]
        accounts = [a[8:] for a in stream_ids if a.startswith(_ACCOUNT_PREFIX)]
        dash, nothing = repeat("-"), repeat("")
        try:
            keys = list(map(bytes.fromhex, map(str.replace, transfers, dash, nothing)))
            keys += [
                _ACCOUNT_TAG + k
                for k in map(bytes.fromhex, map(str.replace, accounts, dash, nothing))
            ]
        except ValueError:
            keys = [k for k in map(_uuid_bytes, transfers) if k is not None]
            keys += [_ACCOUNT_TAG + k for k in map(_uuid_bytes, accounts) if k is not None]
        self._bloom.add_hashes(map(hash, keys))
        return len(keys)

    # -- asking ------------------------------------------------------------------------

    def may_contain_transfer(self, transfer_id: UUID) -> bool:
        return self._bloom.may_contain_hash(hash(transfer_id.int.to_bytes(16)))

    def may_contain_account(self, account_id: UUID) -> bool:
        return self._bloom.may_contain_hash(hash(_ACCOUNT_TAG + account_id.int.to_bytes(16)))

    def transfers_maybe_stored(self, transfer_ids: Iterable[UUID]) -> set[UUID]:
        """The ids among ``transfer_ids`` that may be stored (the others certainly are not)."""
        may = self._bloom.may_contain_hash
        return {t for t in transfer_ids if may(hash(t.int.to_bytes(16)))}

    def accounts_maybe_stored(self, account_ids: Iterable[UUID]) -> set[UUID]:
        may = self._bloom.may_contain_hash
        return {a for a in account_ids if may(hash(_ACCOUNT_TAG + a.int.to_bytes(16)))}

    # -- figures -----------------------------------------------------------------------

    @property
    def count(self) -> int:
        """Ids added (an id added twice counts twice)."""
        return self._bloom.count

    @property
    def capacity(self) -> int:
        return self._bloom.capacity

    @property
    def size_bytes(self) -> int:
        return self._bloom.size_bytes

    @property
    def slices(self) -> int:
        return self._bloom.slices


def _uuid_bytes(text: str) -> bytes | None:
    """The 16 bytes of a UUID in its canonical form (or any form ``UUID`` reads); None if
    ``text`` is not a UUID."""
    if len(text) == 36 and text.count("-") == 4:
        try:
            key = bytes.fromhex(text.replace("-", ""))
        except ValueError:
            key = b""
        if len(key) == 16:
            return key
    try:
        return UUID(text).bytes
    except ValueError:
        return None
