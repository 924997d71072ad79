"""``ledger wal replay DIR``: the audit. Re-derive every balance from the WAL alone and
check the event store and the read models against it.

What is checked, in this order (the first finding is reported with its location):

1. **The WAL**, in one pass over the segment files (read-only): each segment header and
   its link to the previous segment, every record's CRC32C, gap-free positions and the
   hash chain (``hash = sha256(prev_hash || canonical bytes)``). A damaged record is then
   located by :func:`ledger.adapters.wal.verify_wal` (segment file and byte offset); a
   torn tail, which recovery would remove, is reported as such.
2. **The balances**, re-derived from the events' amounts: every transfer, hold, post,
   void, expiry and closing is applied to the accounts, and the result must equal the
   balances after that each event carries. This is a second, independent implementation
   of the ledger's arithmetic (the node uses :func:`ledger.domain.evolve`; ``--domain``
   runs that too and compares the two).
3. **The event store**: each ``events`` row is checked against its own hash (its
   canonical bytes are put together again from the row's columns, so an edited column is
   caught even if the stored hash was left alone) and the chain, a chunk of positions at
   a time, while the WAL is read: a binary COPY of each chunk's rows is checked here by
   the native extension without the interpreter lock (or, without the extension,
   PostgreSQL puts the bytes together, hashes them and sends only the hashes); the main
   process compares the stored hashes with the WAL's, position by position. Equal hashes
   on a verified chain mean equal ids and contents. The native check also walks the
   WAL's segments beside the rows: a row whose canonical bytes, hash and prev_hash are
   the bytes of its WAL record is not hashed a second time, as step 1 checks that
   record's hash (a row that differs is hashed, to tell an edit from another event). A
   row whose columns, put together as they are, do not give the bytes it was hashed from
   (written before ``data`` became ``json``) is hashed again in Python before it is
   reported.
4. **The read models** of the book, when their checkpoints are at the WAL's last
   position: every account's balances, every entry, every transfer and the trial
   balance. Entries are compared as one sha256 per account over all its rows in position
   order, every column included; transfers as two sha256 in position order, one of the
   columns an event sets once (position, code, timestamp, timeout, expiry, hold id,
   metadata) and one of the state (status, amounts, accounts, kind, ledger, resolving
   position). The stored rows come as a binary COPY of their columns, from the start,
   while the WAL is read, and are hashed here by the native extension without the
   interpreter lock (``_replay.copy_digests``; without the extension, PostgreSQL hashes
   them). The entries come in slices of heap pages, each row hashed as it comes, so that
   memory holds one slice and the accounts' states; the transfers, whose rows move in
   the heap as their state changes, are read whole and sorted. The WAL pass hashes the
   rows its events give, and where digests differ the rows are read one by one to name
   the first differing row and column. A transfer's ``metadata``
   is hashed as its pairs in the byte order of their keys, each key and string value with
   its length (:func:`_metadata_bytes`).

Why a scanner of its own: the WAL module's ``read_wal`` verifies and then decodes in two
passes and the domain's ``evolve`` builds full objects; together they reach about 45k
events/s. The audit needs one pass with one CRC, one sha256 and one JSON parse per
record. The stored rows are read with ``COPY ... TO STDOUT`` through
:func:`ledger.pgcopy.copy_out`, which gathers a whole COPY without the interpreter lock
(psycopg hands Python each row as its own message, which cost more than the hashing);
their sha256 is done here, as OpenSSL's is several times faster than that of a PostgreSQL
built without it, and PostgreSQL only reads the rows out. Steps 3 and 4 run on threads
(and in PostgreSQL) beside the pass, at a lower priority (:data:`_BESIDE_NICE`): the pass
is one thread, and the audit ends when it does.
"""

from __future__ import annotations

import bisect
import contextlib
import gc
import hashlib
import mmap
import os
import queue
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar
from uuid import UUID

import google_crc32c
import msgspec
import orjson

from ledger.adapters.wal import (
    HEADER_BYTES,
    SEGMENT_MAGIC,
    WalCorruption,
    segment_paths,
    verify_wal,
)
from ledger.application.records import GENESIS_HASH

try:
    from ledger.adapters import _walcodec as _native
except ImportError:  # pragma: no cover - the package build compiles it (setup.py)
    _native = None  # type: ignore[assignment]
try:
    from ledger import _replay as _native_books
except ImportError:  # pragma: no cover - the package build compiles it (setup.py)
    _native_books = None  # type: ignore[assignment]

__all__ = ["AuditReport", "Finding", "replay_command", "replay_wal"]

CHUNK_POSITIONS: Final = 8192
_HEADER_BODY = struct.Struct("<8sIIQQ32s")
_RECORD_HEAD = struct.Struct("<IIQQII")
_LENGTHS = struct.Struct("<I24xI")  # payload length and canonical length of a record
_SPAN_RECORDS: Final = 4096  # records per native check, done one span ahead
_FIRST_SPAN_RECORDS: Final = 256
_HASH_BYTES: Final = 32
_SORT = orjson.OPT_SORT_KEYS
_crc32c: Callable[[bytes], int] = google_crc32c.value
_TRANSFER_TYPES: Final = frozenset(
    ("TransferCreated", "PendingTransferPosted", "PendingTransferVoided", "PendingTransferExpired")
)

Advance = Callable[[int], None]
OnRecord = Callable[[int, "_Envelope"], None]


class Finding(Exception):
    """A mismatch or damage, with where it is (``where``) and what is wrong."""

    def __init__(self, where: str, what: str) -> None:
        super().__init__(f"{where}: {what}")
        self.where = where
        self.what = what


@dataclass
class AuditReport:
    """The clean bill (or the counts up to the first finding)."""

    segments: int = 0
    events: int = 0
    last_position: int = 0
    head_hash: bytes = GENESIS_HASH
    accounts: int = 0
    ledgers: int = 0
    transfers: int = 0
    store_events: int = 0
    read_models: dict[str, str] = field(default_factory=dict)
    duration_s: float = 0.0
    replay_s: float = 0.0

    def lines(self) -> list[str]:
        rate = self.events / self.replay_s if self.replay_s > 0 else 0.0
        out = [
            f"wal: {self.segments} segments, {self.events} events, last position "
            f"{self.last_position}, hash-chain head {self.head_hash.hex()}",
            f"balances: re-derived {self.accounts} accounts in {self.ledgers} ledgers, "
            f"{self.transfers} transfers; every event's balances after agree",
            f"event store: {self.store_events} events, ids and hashes identical to the WAL, "
            "every row matches its hash",
        ]
        for name, summary in self.read_models.items():
            out.append(f"read model {name}: {summary}")
        out.append(f"replayed {self.events} events in {self.replay_s:.2f} s ({rate:,.0f} events/s)")
        return out


# --- 1 and 2: the WAL, and the balances it implies -------------------------------------


class _Balances(msgspec.Struct, frozen=True):
    debits_pending: int
    debits_posted: int
    credits_pending: int
    credits_posted: int


class _Flags(msgspec.Struct, frozen=True):
    pending: bool = False


class _Data(msgspec.Struct, frozen=True):
    """The fields of an event's ``data`` that the audit reads; the rest is skipped by the
    decoder without building objects for it (``metadata`` is kept as its raw JSON)."""

    amount_minor: int = 0
    account_id: str | None = None
    debit_account_id: str | None = None
    credit_account_id: str | None = None
    transfer_id: str | None = None
    pending_id: str | None = None
    ledger: str | None = None
    code: int | None = None
    timeout_s: int | None = None
    expires_at_us: int | None = None
    timestamp_us: int | None = None
    flags: _Flags | None = None
    metadata: msgspec.Raw = msgspec.Raw()
    account_after: _Balances | None = None
    debit_account_after: _Balances | None = None
    credit_account_after: _Balances | None = None


class _Envelope(msgspec.Struct, frozen=True):
    type: str
    event_id: str
    data: _Data


_decode_envelope = msgspec.json.Decoder(_Envelope).decode


def _envelope(position: int, canonical: bytes | memoryview) -> _Envelope:
    try:
        return _decode_envelope(canonical)
    except msgspec.DecodeError as exc:
        raise Finding(f"position {position}", f"event does not decode: {exc}") from None


class _Books:
    """Accounts, transfers and entry aggregates re-derived from the events."""

    def __init__(self) -> None:
        # account id -> [debits_pending, debits_posted, credits_pending, credits_posted,
        #                ledger, closed, entries, entries amount sum, last entry position,
        #                sha256 of the entries in position order (see _entry_bytes)]
        self.accounts: dict[str, list[Any]] = {}
        # transfer id -> [status, amount, amount posted, debit id, credit id, kind, ledger]
        # (a tuple; for a hold, whose status changes, a list with its resolving position,
        # or None, at the end)
        self.transfers: dict[str, list[Any] | tuple[Any, ...]] = {}
        # sha256 of the transfers' other columns, in position order (see _transfer_bytes)
        self.rows: Any = _entry_hash()
        self.forbidden: set[str] = set()  # ids spent by a TCC cancel before their try

    def apply(self, position: int, env: _Envelope) -> None:
        t = env.type
        try:
            if t in _TRANSFER_TYPES:
                self._movement(position, t, env.data)
            else:
                self._other(position, t, env)
        except (
            KeyError,
            TypeError,
            AttributeError,
            ValueError,
            OverflowError,
            struct.error,
        ) as exc:
            # A field the event's type requires is missing, names an account or a hold
            # that does not exist at this point of the log, or is not an id or a 64-bit
            # number as the read models store it.
            raise self._finding(position, env, f"{t} cannot be applied: {exc!r}") from None

    def _other(self, position: int, t: str, env: _Envelope) -> None:
        d = env.data
        if t == "AccountOpened":
            account_id = _required(d.account_id)
            if account_id in self.accounts:
                raise self._finding(position, env, f"account {account_id} opened twice")
            self.accounts[account_id] = [0, 0, 0, 0, d.ledger, False, 0, 0, 0, _entry_hash()]
        elif t == "AccountClosed":
            account_id = _required(d.account_id)
            account = self.accounts[account_id]
            self._check(position, env, account_id, account, _required(d.account_after))
            account[5] = True
        elif t == "PendingTransferForbidden":
            # A TCC cancel that arrived before its try: no money moved; the id is spent.
            pending_id = _required(d.pending_id)
            if pending_id in self.transfers:
                raise self._finding(position, env, f"{pending_id} forbidden after it was created")
            self.forbidden.add(pending_id)
        else:
            raise self._finding(position, env, f"unknown event type {t!r}")

    def _movement(self, position: int, t: str, d: _Data) -> None:
        accounts = self.accounts
        amount = d.amount_minor
        # Any: a missing id is None, and the KeyError it raises becomes a finding in apply.
        debit_id: Any = d.debit_account_id
        credit_id: Any = d.credit_account_id
        debit, credit = accounts[debit_id], accounts[credit_id]
        if t == "TransferCreated":
            transfer_id = _required(d.transfer_id)
            if transfer_id in self.forbidden:
                raise Finding(
                    f"position {position}", f"transfer {transfer_id} was forbidden by a cancel"
                )
            if _required(d.flags).pending:
                debit[0] += amount
                credit[2] += amount
                self.transfers[transfer_id] = [
                    "pending",
                    amount,
                    0,
                    debit_id,
                    credit_id,
                    "pending",
                    d.ledger,
                    None,
                ]
                self.rows.update(
                    _transfer_bytes(
                        position, transfer_id, d, _required(d.timeout_s), d.expires_at_us, None
                    )
                )
            else:
                self.rows.update(_transfer_bytes(position, transfer_id, d, 0, None, None))
                debit[1] += amount
                credit[3] += amount
                # A tuple: a transfer that is not a hold never changes.
                self.transfers[transfer_id] = (
                    "none",
                    amount,
                    0,
                    debit_id,
                    credit_id,
                    "single",
                    d.ledger,
                )
        else:
            self._resolution(position, t, d, debit, credit)
        after: Any = d.debit_account_after
        if (
            debit[0] != after.debits_pending
            or debit[1] != after.debits_posted
            or debit[2] != after.credits_pending
            or debit[3] != after.credits_posted
        ):
            raise self._disagrees(position, t, debit_id, debit, after)
        after = d.credit_account_after
        if (
            credit[0] != after.debits_pending
            or credit[1] != after.debits_posted
            or credit[2] != after.credits_pending
            or credit[3] != after.credits_posted
        ):
            raise self._disagrees(position, t, credit_id, credit, after)
        entry_of = d.pending_id if t == "PendingTransferExpired" else d.transfer_id
        tail = (t, amount, _required(d.ledger), _required(d.timestamp_us))
        debit_entry = _entry_bytes(position, debit_id, entry_of, d.pending_id, "debit", tail, debit)
        credit_entry = _entry_bytes(
            position, credit_id, entry_of, d.pending_id, "credit", tail, credit
        )
        debit[9].update(debit_entry)
        credit[9].update(credit_entry)
        debit[6] += 1
        debit[7] += amount
        debit[8] = position
        credit[6] += 1
        credit[7] += amount
        credit[8] = position

    def _resolution(
        self, position: int, t: str, d: _Data, debit: list[Any], credit: list[Any]
    ) -> None:
        """A post, void or expiry of a hold: release what it held, post what it posts."""
        amount = d.amount_minor
        hold: Any = self.transfers[d.pending_id]  # type: ignore[index]
        if hold[0] != "pending" or hold[3] != d.debit_account_id or hold[4] != d.credit_account_id:
            raise Finding(f"position {position}", f"{t}: {d.pending_id} is not pending")
        held = hold[1]
        hold[7] = position
        debit[0] -= held
        credit[2] -= held
        if t == "PendingTransferPosted":
            debit[1] += amount
            credit[3] += amount
            hold[0], hold[2] = "posted", amount
        else:
            hold[0] = "voided" if t == "PendingTransferVoided" else "expired"
        if t != "PendingTransferExpired":
            kind = "post" if t == "PendingTransferPosted" else "void"
            transfer_id = _required(d.transfer_id)
            self.rows.update(_transfer_bytes(position, transfer_id, d, 0, None, d.pending_id))
            self.transfers[transfer_id] = (
                "none",
                amount,
                0,
                d.debit_account_id,
                d.credit_account_id,
                kind,
                d.ledger,
            )

    @staticmethod
    def _disagrees(
        position: int, t: str, account_id: str, account: list[Any], after: _Balances
    ) -> Finding:
        return Finding(
            f"position {position}",
            f"{t}: account {account_id} re-derives to {_four(account)} but the event "
            f"says {_four_of(after)}",
        )

    def _check(
        self,
        position: int,
        env: _Envelope,
        account_id: str,
        account: list[Any],
        after: _Balances,
    ) -> None:
        if _four(account) != _four_of(after):
            raise self._finding(
                position,
                env,
                f"account {account_id} re-derives to {_four(account)} but the event says "
                f"{_four_of(after)}",
            )

    @staticmethod
    def _finding(position: int, env: _Envelope, what: str) -> Finding:
        return Finding(f"position {position} (event {env.event_id})", what)


_T = TypeVar("_T")


def _required(value: _T | None) -> _T:
    """``value``, or a TypeError (turned into a finding) when the event lacks the field."""
    if value is None:
        raise TypeError("a required field is missing")
    return value


_ENTRY_FIXED: Final = struct.Struct(">q16s16sqqqqqq")


_TRANSFER_FIXED: Final = struct.Struct(">q16siqq")


def _transfer_bytes(
    position: int,
    transfer_id: str,
    d: _Data,
    timeout_s: int,
    expires_at_us: int | None,
    pending_id: str | None,
) -> bytes:
    """The columns of a ``transfers`` row that its event sets once, as PostgreSQL builds
    them (:data:`_TRANSFERS_DIGEST_SQL`): position, id, code, timestamp, timeout, then the
    expiry and the hold's id, each a 1 and the value or a 0 for none, then the metadata.
    The row's state, which later events change, is hashed at the end of the pass
    (:func:`_transfer_state_bytes`)."""
    return b"".join(
        (
            _TRANSFER_FIXED.pack(
                position,
                UUID(transfer_id).bytes,
                _required(d.code),
                _required(d.timestamp_us),
                timeout_s,
            ),
            b"\0"
            if expires_at_us is None
            else b"\1" + expires_at_us.to_bytes(8, "big", signed=True),
            b"\0" if pending_id is None else b"\1" + UUID(pending_id).bytes,
            _metadata_bytes(d.metadata),
        )
    )


_LENGTH: Final = struct.Struct(">I")


def _metadata_bytes(raw: bytes | msgspec.Raw) -> bytes:
    """A transfer's metadata as :data:`_TRANSFERS_DIGEST_SQL` hashes it: a 0 for none or
    ``{}``; else a 1 and each pair in the byte order of its key, as the key's UTF-8 length
    and bytes, then the value's (or a 255 for a value that is not a string). Anything but
    an object is a 254. The native pass calls this for every metadata that is not ``{}``."""
    text = bytes(raw)
    if text in (b"", b"{}"):  # b"": no metadata in the event (the decoder's default)
        return b"\0"
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return b"\xfe"
    if not isinstance(value, dict):
        return b"\xfe"
    if not value:
        return b"\0"
    parts = [b"\1"]
    for key, item in sorted((k.encode(), v) for k, v in value.items()):
        parts += (_LENGTH.pack(len(key)), key)
        if isinstance(item, str):
            encoded = item.encode()
            parts += (_LENGTH.pack(len(encoded)), encoded)
        else:
            parts.append(b"\xff")
    return b"".join(parts)


if _native_books is not None:
    _native_books.set_metadata_bytes(_metadata_bytes)


def _entry_hash() -> Any:
    """A sha256 for an account's entries: the native one (whose update the native pass
    calls directly) when the extension is there, else hashlib's; the digests are equal."""
    return _native_books.EntryHash() if _native_books is not None else hashlib.sha256()


def _entry_bytes(
    position: int,
    account_id: str,
    transfer_id: str | None,
    pending_id: str | None,
    side: str,
    tail: tuple[str, int, str, int],
    balances: list[Any],
) -> bytes:
    """One ``account_entries`` row as the audit hashes it, in the form PostgreSQL builds
    from the stored row with its binary send functions (:data:`_ENTRIES_DIGEST_SQL`):
    position, account id, transfer id, amount, timestamp and the four balances after, as
    64-bit big-endian numbers and 16-byte ids; then type, side and ledger, each ended by a
    NUL (which no PostgreSQL text holds); then the hold's id after a 1, or a 0 for none.
    Fixed widths, terminated texts and a tagged optional make the form unambiguous, so
    two different rows never give the same bytes."""
    t, amount, ledger, timestamp_us = tail
    return b"".join(
        (
            _ENTRY_FIXED.pack(
                position,
                UUID(account_id).bytes,
                UUID(_required(transfer_id)).bytes,
                amount,
                timestamp_us,
                balances[0],
                balances[1],
                balances[2],
                balances[3],
            ),
            t.encode(),
            b"\0",
            side.encode(),
            b"\0",
            ledger.encode(),
            b"\0",
            b"\0" if pending_id is None else b"\1" + UUID(pending_id).bytes,
        )
    )


def _four(account: list[Any]) -> tuple[int, int, int, int]:
    return (account[0], account[1], account[2], account[3])


def _four_of(after: _Balances) -> tuple[int, int, int, int]:
    return (after.debits_pending, after.debits_posted, after.credits_pending, after.credits_posted)


class _WalScan:
    """One pass over the segments: checks, then hands each envelope to ``on_record``.

    With the native codec, a helper thread checks the next span of records (CRC32C,
    positions, hash chain; C code without the interpreter lock) while this thread
    decodes and applies the span already checked: no event is applied before it has
    been verified, and the two halves of the work run on two cores. Where the native
    check stops at a bad record, the reference loop takes over from that record and
    says what is wrong with it.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.paths = segment_paths(directory)
        self.position = 0
        self.prev = GENESIS_HASH
        self.chunk_hashes: dict[int, bytes] = {}
        self._hashes: list[bytes] = []
        self._chunk_end = CHUNK_POSITIONS
        self._done = 0
        self.on_chunk: Callable[[], None] | None = None
        """Called after every ``CHUNK_POSITIONS`` records (the store check's pace)."""
        self.books: _Books | None = None
        """Where ``on_record`` is ``books.apply``: the state the native arithmetic
        (``ledger/_replay.c``) applies verified transfer events to directly."""

    def run(self, on_record: OnRecord, advance: Advance | None) -> None:
        with contextlib.ExitStack() as stack:
            pool = None
            if _native is not None:
                pool = stack.enter_context(ThreadPoolExecutor(1, "wal-verify"))
            for number, path in enumerate(self.paths, start=1):
                with open(path, "rb") as fh:
                    size = os.fstat(fh.fileno()).st_size
                    if size == 0:
                        raise _Damage(path, 0, "empty segment file")
                    with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                        self._header(path, buf, number)
                        self._done = 0
                        off = HEADER_BYTES
                        if pool is not None:
                            off = self._verified_records(pool, path, buf, size, on_record, advance)
                        if off < size:
                            self._records(path, buf, off, size, on_record, advance)
                        if advance is not None:
                            advance(size - self._done)
        if self._hashes:
            self.chunk_hashes[self._chunk_of(self.position)] = b"".join(self._hashes)

    def _header(self, path: Path, buf: mmap.mmap, number: int) -> None:
        if len(buf) < HEADER_BYTES:
            raise _Damage(path, 0, "segment header incomplete")
        magic, _, _, seg_number, first, link = _HEADER_BODY.unpack_from(buf, 0)
        if magic != SEGMENT_MAGIC or _crc32c(buf[:64]) != struct.unpack_from("<I", buf, 64)[0]:
            raise _Damage(path, 0, "bad segment header")
        if seg_number != number or first != self.position + 1 or link != self.prev:
            raise _Damage(path, 0, f"segment does not continue the log at {self.position + 1}")

    def _verified_records(
        self,
        pool: ThreadPoolExecutor,
        path: Path,
        buf: mmap.mmap,
        size: int,
        on_record: OnRecord,
        advance: Advance | None,
    ) -> int:
        """Apply the records the native check accepts; return the offset where it stopped
        (the end of the data, or a record the reference loop must look at)."""
        assert _native is not None
        verify = _native.verify_span
        more = _native.SPAN_MORE
        unpack = _LENGTHS.unpack_from
        hashes = self._hashes
        off = HEADER_BYTES
        position = self.position
        prev = self.prev
        books = self.books if _native_books is not None else None

        def check(start: int, at: int, before: bytes, n: int) -> tuple[Any, ...]:
            """On the helper thread: verify a span, then (for the native arithmetic)
            read the envelopes of the records it verified, both without the lock."""
            result = verify(buf, start, size, at, before, n)
            parsed = None
            if books is not None and result[3]:
                parsed = _native_books.parse_records(buf, start, result[3])
            return (*result, parsed)

        # A short first span, so that applying starts soon after the segment opens.
        job = pool.submit(check, off, position, prev, _FIRST_SPAN_RECORDS)
        while True:
            span_end, span_position, span_prev, count, status, parsed = job.result()
            if status == more:
                job = pool.submit(check, span_end, span_position, span_prev, _SPAN_RECORDS)
            try:
                done = 0
                native_next = books is not None
                while done < count:
                    if native_next:
                        assert books is not None
                        # As many records as the native arithmetic takes: it stops at a
                        # chunk's end, and before a record it leaves to _Books.
                        off, position, applied = _native_books.apply_records(
                            buf,
                            off,
                            count - done,
                            position,
                            books.accounts,
                            books.transfers,
                            books.forbidden,
                            hashes,
                            books.rows,
                            self._chunk_end,
                            parsed,
                            done,
                        )
                        if applied:
                            done += applied
                            prev = hashes[-1]
                            if position == self._chunk_end:
                                self._close_chunk(position, prev, off, advance)
                                continue
                        native_next = False
                        continue
                    native_next = books is not None
                    length, clen = unpack(buf, off)
                    end = off + 8 + length
                    position += 1
                    on_record(position, _envelope(position, buf[off + 32 : off + 32 + clen]))
                    prev = buf[end - 32 : end]
                    hashes.append(prev)
                    off = end
                    done += 1
                    if position == self._chunk_end:
                        self._close_chunk(position, prev, off, advance)
            except BaseException:
                job.cancel()
                raise
            assert off == span_end and prev == span_prev, "native span and walk disagree"
            if status != more:
                break
        self.position, self.prev = position, prev
        return off

    def _records(
        self,
        path: Path,
        buf: mmap.mmap,
        off: int,
        size: int,
        on_record: OnRecord,
        advance: Advance | None,
    ) -> None:
        """The reference loop: every check in Python, from ``off`` to the end of data."""
        unpack = _RECORD_HEAD.unpack_from
        sha256 = hashlib.sha256
        crc32c = _crc32c
        position = self.position
        prev = self.prev
        hashes = self._hashes
        while off + 32 <= size:
            length, crc, pos, _, _, clen = unpack(buf, off)
            if length == 0:
                break
            end = off + 8 + length
            if end > size or crc32c(buf[off + 8 : end]) != crc:
                raise _Damage(path, off, f"bad record (record position {position + 1})")
            position += 1
            if pos != position:
                raise _Damage(path, off, f"record position {pos} where {position} expected")
            canonical = buf[off + 32 : off + 32 + clen]
            digest = buf[end - 32 : end]
            if sha256(prev + canonical).digest() != digest:
                raise _Damage(path, off, f"hash chain broken (record position {position})")
            on_record(position, _envelope(position, canonical))
            hashes.append(digest)
            prev = digest
            off = end
            if position == self._chunk_end:
                self._close_chunk(position, prev, off, advance)
        self.position, self.prev = position, prev

    def _close_chunk(self, position: int, prev: bytes, off: int, advance: Advance | None) -> None:
        self.chunk_hashes[self._chunk_of(position)] = b"".join(self._hashes)
        self._hashes.clear()
        self._chunk_end += CHUNK_POSITIONS
        self.position, self.prev = position, prev
        if advance is not None:
            advance(off - self._done)
            self._done = off
        if self.on_chunk is not None:
            self.on_chunk()

    @staticmethod
    def _chunk_of(position: int) -> int:
        return (position - 1) // CHUNK_POSITIONS


class _Damage(Exception):
    def __init__(self, path: Path, offset: int, reason: str) -> None:
        super().__init__(reason)
        self.path = path
        self.offset = offset
        self.reason = reason


def _locate_damage(directory: Path, damage: _Damage, position: int) -> Finding | None:
    """Ask the WAL module where the damage is; None if it is a torn tail ending at
    ``position`` (recovery would remove it; the log is intact up to there)."""
    try:
        summary = verify_wal(directory)
    except WalCorruption as exc:
        return Finding(f"{directory / exc.segment.name} at byte {exc.offset}", exc.reason)
    torn = summary.torn_tail
    if torn is not None and torn.last_position == position:
        return None
    return Finding(f"{damage.path} at byte {damage.offset}", damage.reason)


# --- 3: the event store (its rows' hashes checked chunk by chunk) ---------------------


_ROW_TEXT: Final = (
    'concat(\'{"data":\', data, \',"event_id":"\', event_id, \'","position":\', position, '
    "',\"prev_hash\":\"', encode(prev_hash, 'hex'), '\",\"recorded_at_us\":', recorded_at_us, "
    '\',"schema_version":\', schema_version, \',"stream_id":"\', stream_id, '
    '\'","stream_version":\', stream_version, \',"type":"\', type, \'"}\')'
)
"""A row's canonical bytes (:data:`CANONICAL_FORM`) put together by PostgreSQL from the
row as stored: ``data`` is kept as the text that was hashed (``json``, migration 0004) and
ids that need no JSON escapes are written as they are. A row for which this does not give
its hash (one written before 0004, whose text the database normalised; ids that JSON
escapes; a database not in UTF-8) is checked again in Python (:func:`_row_canonical`)."""

_ROW_SAME: Final = f"sha256(prev_hash || textsend({_ROW_TEXT})) = hash"

_STORE_CHUNK_SQL: Final = (
    "SELECT min(position) FILTER (WHERE position <> before_position + 1), "
    "min(before_position + 1) FILTER (WHERE position <> before_position + 1), "
    "min(position) FILTER (WHERE prev_hash <> before_hash), "
    "count(*) FILTER (WHERE NOT same), "
    "string_agg(hash, ''::bytea ORDER BY position), max(position) "
    "FROM (SELECT position, hash, prev_hash, "
    "lag(position, 1, %(last_position)s::bigint) OVER w AS before_position, "
    "lag(hash, 1, %(last_hash)s::bytea) OVER w AS before_hash, "
    f"{_ROW_SAME} AS same "
    "FROM events WHERE book_id = %(book)s AND position BETWEEN %(lo)s AND %(hi)s "
    "WINDOW w AS (ORDER BY position)) r"
)
"""One chunk of positions ``lo..hi``, checked by PostgreSQL: the first row that does not
follow the position before it (and the position missing there), the first whose
``prev_hash`` is not the hash of the row before it, how many do not hash as stored, the
stored hashes in position order (for the comparison with the WAL's) and the last
position."""

_STORE_RECHECK_SQL: Final = (
    "SELECT position, event_id::text, stream_id, stream_version, type, schema_version, "
    "recorded_at_us, data::text, prev_hash, hash FROM events "
    f"WHERE book_id = %(book)s AND position BETWEEN %(lo)s AND %(hi)s AND NOT {_ROW_SAME} "
    "ORDER BY position"
)


def _row_canonical(row: tuple[Any, ...]) -> bytes:
    """The canonical bytes of a row, re-serialised from its parsed fields (any row)."""
    return orjson.dumps(
        {
            "data": orjson.loads(row[7]),
            "event_id": row[1],
            "position": row[0],
            "prev_hash": bytes(row[8]).hex(),
            "recorded_at_us": row[6],
            "schema_version": row[5],
            "stream_id": row[2],
            "stream_version": row[3],
            "type": row[4],
        },
        option=_SORT,
    )


_WAL_MAPPED_MAX: Final = 64
"""Segments the store check maps at a time; a chunk that needs more has its other rows
hashed (with the default 64 MB segments a chunk spans one or two)."""


class _WalBeside:
    """The native store check's view of the WAL (``_replay.store_chunk``): a row that is a
    byte-for-byte copy of its WAL record is not hashed again, as the WAL pass checks that
    record's hash. For each chunk this maps the segments its positions are in (found by
    their file names; the cursor checks every record's position itself), at most
    :data:`_WAL_MAPPED_MAX`, unmaps those behind, and carries the cursor on from the chunk
    before. Anything it cannot follow only means that rows are hashed."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = list(paths)
        self.firsts = [int(p.name.split(".", 1)[0]) for p in self.paths]
        self.maps: dict[int, mmap.mmap] = {}
        self.at: tuple[int, int, int, bytes] | None = None  # segment, offset, position, prev
        self.window = 0  # the first segment of the last cursor handed out
        self.cursor: list[Any] | None = None

    def _map(self, index: int) -> mmap.mmap | None:
        if index not in self.maps:
            with open(self.paths[index], "rb") as fh:  # the map holds the file open itself
                if os.fstat(fh.fileno()).st_size < HEADER_BYTES:
                    return None  # the pass reports the segment; these rows are hashed
                self.maps[index] = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        return self.maps[index]

    def cursor_for(self, lo: int, hi: int) -> list[Any] | None:
        """The cursor for the chunk of positions ``lo..hi``, after :meth:`moved` has taken
        in where the last one ended."""
        start = max(bisect.bisect_right(self.firsts, lo) - 1, 0)
        if self.at is not None and self.at[0] <= start:
            start = self.at[0]
        else:
            self.at = None
        last = min(bisect.bisect_right(self.firsts, hi) - 1, start + _WAL_MAPPED_MAX - 1)
        for index in [i for i in self.maps if i < start]:
            self.maps.pop(index).close()
        segments = []
        for index in range(start, last + 1):
            buf = self._map(index)
            if buf is None:
                break
            segments.append(buf)
        if not segments:
            self.cursor = None
            return None
        if self.at is None:  # from the start of the segment, as its header says
            *_, first, link = _HEADER_BODY.unpack_from(segments[0], 0)
            self.at = (start, HEADER_BYTES, first - 1, link)
        self.window = start
        segment, offset, position, prev = self.at
        self.cursor = [segments, segment - start, offset, position, prev]
        return self.cursor

    def moved(self) -> None:
        """Take in where the cursor ended (a lost one is found again at the next chunk)."""
        if self.cursor is None:
            return
        segments, segment, offset, position, prev = self.cursor
        lost = segment >= len(segments)
        self.at = None if lost else (self.window + segment, offset, position, prev)
        self.cursor = None

    def close(self) -> None:
        for buf in self.maps.values():
            buf.close()
        self.maps.clear()


_BESIDE_NICE: Final = 5
"""How much lower the checks beside the WAL pass run than the pass (a nice increment):
the pass applies the events one by one on one thread, which nothing can share, while the
checks are many threads and PostgreSQL's processes that can use whatever core is idle.
At an even share the pass fell behind and ran alone at the end, one core idle; at nice 5
(a third of the scheduler's weight) it keeps up and the checks fill the other core."""


def _beside_the_pass() -> None:
    """Lower the calling thread's priority by :data:`_BESIDE_NICE` (Linux, where each
    thread has its own; elsewhere nothing). Run first on each check's own thread."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            me = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, me, os.getpriority(os.PRIO_PROCESS, me) + _BESIDE_NICE)


def _verify_store_beside(*args: Any) -> None:
    _beside_the_pass()
    _verify_store(*args)


def _verify_store(
    database_url: str,
    book_id: str,
    out: Any,
    stop: Any = None,
    wal_paths: Sequence[Path] = (),
) -> None:
    """Runs on a thread: each ``events`` row is checked against its hash and the chain,
    one chunk of ``CHUNK_POSITIONS`` positions per statement (:func:`_store_chunk`), in
    one snapshot; this sends ``("chunk", index, hashes)`` per chunk, then
    ``("done", count, None)`` or ``("finding", where, what)``. Rows that do not hash as
    their columns put together as they are give them are hashed again here from their
    parsed fields, and only reported if that fails too. With ``wal_paths`` (the WAL's
    segments), the native check compares each row with its WAL record instead of hashing
    it when the two are the same bytes (:class:`_WalBeside`)."""
    import psycopg

    from ledger.pgconn import dsn

    try:
        chunk_size = CHUNK_POSITIONS
        with (
            contextlib.ExitStack() as stack,
            psycopg.connect(dsn(database_url)) as conn,
        ):
            wal = _WalBeside(wal_paths) if wal_paths and _native_books else None
            if wal is not None:
                stack.callback(wal.close)
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            row = conn.execute(
                "SELECT max(position) FROM events WHERE book_id = %s", (book_id,)
            ).fetchone()
            last = int(row[0]) if row and row[0] is not None else 0
            last_position, last_hash = 0, GENESIS_HASH
            size = 0  # the bytes of the chunk before (the native way's buffer starts so)
            for index in range((last + chunk_size - 1) // chunk_size):
                if stop is not None and stop.is_set():
                    return
                lo, hi = index * chunk_size + 1, (index + 1) * chunk_size
                params: dict[str, Any] = {
                    "book": book_id,
                    "lo": lo,
                    "hi": hi,
                    "last_position": last_position,
                    "last_hash": last_hash,
                    "size": size,
                    "wal": wal.cursor_for(lo, hi) if wal is not None else None,
                }
                gap, missing, unchained, unsame, hashes, top = _store_chunk(conn, params)
                size = params["size"]
                if wal is not None:
                    wal.moved()
                if gap is None and (top or 0) < hi < last:
                    # The chunk's last positions are missing: found at the next row.
                    after = conn.execute(
                        "SELECT min(position) FROM events WHERE book_id = %s AND position > %s",
                        (book_id, hi),
                    ).fetchone()
                    gap, missing = (after[0] if after else None), (top or last_position) + 1
                edited = _first_edited(conn, params) if unsame else None
                found = [
                    (p, rank, what)
                    for p, rank, what in (
                        (gap, 0, f"position {missing} is missing"),
                        (unchained, 1, "prev_hash is not the hash of the row before it"),
                        (edited, 2, "the row's content does not match its hash (edited?)"),
                    )
                    if p is not None
                ]
                if found:
                    position, _, what = min(found)
                    event = conn.execute(
                        "SELECT event_id::text FROM events WHERE book_id = %s AND position = %s",
                        (book_id, position),
                    ).fetchone()
                    where = f"events row book {book_id!r} position {position}"
                    if event:
                        where += f" (event {event[0]})"
                    out.put(("finding", where, what))
                    return
                digests = bytes(hashes)
                out.put(("chunk", index, digests))
                last_position, last_hash = top, digests[-_HASH_BYTES:]
        out.put(("done", last, None))
    except BaseException as exc:  # report anything to the parent, never hang it
        out.put(("error", f"{type(exc).__name__}: {exc}", None))


_STORE_COPY_SQL: Final = (
    "COPY (SELECT position, prev_hash, hash, data, event_id, recorded_at_us, schema_version, "
    "stream_id, stream_version, type FROM events "
    "WHERE book_id = %(book)s AND position BETWEEN %(lo)s AND %(hi)s ORDER BY position) "
    "TO STDOUT (FORMAT binary)"
)
"""One chunk's rows as they are stored, for the native check (``_replay.store_chunk``):
the same findings as :data:`_STORE_CHUNK_SQL`. The extension puts each row's canonical
bytes together from its columns as :data:`_ROW_TEXT` has PostgreSQL do it (for
PostgreSQL, sending the columns costs about a third of putting that text together) and
hashes them with OpenSSL, which is several times faster than the sha256 of a PostgreSQL
built without it (about 270 MB/s)."""


def _store_chunk_sql(conn: Any, params: dict[str, Any]) -> tuple[Any, ...]:
    """(gap, missing, unchained, unsame, hashes, top) of one chunk, found by PostgreSQL."""
    return tuple(conn.execute(_STORE_CHUNK_SQL, params).fetchone())


def _store_chunk_native(conn: Any, params: dict[str, Any]) -> tuple[Any, ...]:
    """The same, from a binary COPY of the chunk's rows checked here without the
    interpreter lock: PostgreSQL only reads the rows out."""
    from ledger.pgcopy import copy_out

    # Sized as the chunk before it (params["size"]), so that the buffer seldom grows.
    buf = copy_out(conn, _STORE_COPY_SQL, params, size_hint=params["size"] + (1 << 16))
    params["size"] = len(memoryview(buf))
    return tuple(
        _native_books.store_chunk(
            buf, params["last_position"], params["last_hash"], params.get("wal")
        )
    )


def _store_chunk(conn: Any, params: dict[str, Any]) -> tuple[Any, ...]:
    """One chunk's findings: natively when the extension is there."""
    if _native_books is None:
        return _store_chunk_sql(conn, params)
    return _store_chunk_native(conn, params)


def _first_edited(conn: Any, params: dict[str, Any]) -> int | None:
    """The first row of the chunk whose content does not give its hash, parsed and
    serialised again; None when every row PostgreSQL could not match checks out so."""
    for row in conn.execute(_STORE_RECHECK_SQL, params):
        if hashlib.sha256(bytes(row[8]) + _row_canonical(row)).digest() != bytes(row[9]):
            return int(row[0])
    return None


class _StoreCheck:
    """The parent's side of step 3: compares the store's chunks with the WAL's."""

    def __init__(self, database_url: str, book_id: str, wal_paths: Sequence[Path] = ()) -> None:
        self.book_id = book_id
        self.database_url = database_url
        self.queue: queue.Queue[tuple[str, Any, Any]] = queue.Queue(maxsize=64)
        self.stop = threading.Event()
        self.thread = threading.Thread(
            target=_verify_store_beside,
            args=(database_url, book_id, self.queue, self.stop, wal_paths),
            name="audit-event-store",
            daemon=True,
        )
        self.thread.start()
        self.store_chunks: dict[int, bytes] = {}
        self.count: int | None = None

    def poll(self, wal: _WalScan, block: bool) -> None:
        while self.count is None:
            try:
                kind, a, b = self.queue.get(block=block, timeout=1.0 if block else None)
            except queue.Empty:
                if block and self.thread.is_alive():
                    continue
                if block:
                    raise RuntimeError("the event store check ended before it finished") from None
                return
            if kind == "chunk":
                self.store_chunks[a] = b
                self._compare(wal, a)
            elif kind == "done":
                self.count = int(a)
            elif kind == "finding":
                raise Finding(a, b)
            else:
                raise RuntimeError(f"event store check failed: {a}")

    def _compare(self, wal: _WalScan, index: int) -> None:
        mine = wal.chunk_hashes.get(index)
        theirs = self.store_chunks.get(index)
        if mine is None or theirs is None:
            return
        if mine != theirs:
            first = index * CHUNK_POSITIONS + 1
            for i in range(0, min(len(mine), len(theirs)), _HASH_BYTES):
                if mine[i : i + _HASH_BYTES] != theirs[i : i + _HASH_BYTES]:
                    position = first + i // _HASH_BYTES
                    raise Finding(
                        self._where(position),
                        "hash differs from the WAL's (a different event at this position)",
                    )
        del wal.chunk_hashes[index]
        del self.store_chunks[index]

    def finish(self, wal: _WalScan) -> int:
        self.poll(wal, block=True)
        for index in sorted(set(wal.chunk_hashes) & set(self.store_chunks)):
            self._compare(wal, index)
        count = self.count or 0
        if count != wal.position:
            if count > wal.position:
                raise Finding(
                    self._where(wal.position + 1),
                    f"the event store holds positions {wal.position + 1}..{count}, which the "
                    "WAL does not",
                )
            raise Finding(
                f"events of book {self.book_id!r}",
                f"the event store ends at position {count} but the WAL at {wal.position} "
                "(a batch in flight, or events missing from the store)",
            )
        return count

    def _where(self, position: int) -> str:
        return f"events row book {self.book_id!r} position {position}"

    def close(self) -> None:
        self.stop.set()
        with contextlib.suppress(queue.Empty):
            while True:  # a thread blocked on a full queue finishes its put
                self.queue.get_nowait()
        self.thread.join(5)


# --- 4: the read models ----------------------------------------------------------------


def _compare_read_models(
    database_url: str,
    book_id: str,
    books: _Books,
    head: int,
    digests: _Digests,
    directory: Path,
) -> dict[str, str]:
    from ledger.pgconn import PROJECTION_NAMES, connect, read_checkpoint

    summaries: dict[str, str] = {}
    with connect(database_url) as conn:
        for name in PROJECTION_NAMES:
            position = read_checkpoint(conn, name, book_id)
            if position != head:
                raise Finding(
                    f"read model {name} of book {book_id!r}",
                    f"at position {position}, the WAL at {head}: it cannot be compared "
                    "(let `ledger project` catch up, or rebuild it)",
                )
        summaries["balances"] = _compare_balances(conn, book_id, books)
        # Transfers first: their rows are compared in Python while PostgreSQL still hashes
        # the entries.
        transfers = _compare_transfers(conn, book_id, books, head, digests.transfers, directory)
        summaries["entries"] = _compare_entries(
            conn, book_id, books, head, digests.entries.result(), directory
        )
        summaries["transfers"] = transfers
        summaries["trial_balance"] = _compare_trial_balance(conn, book_id, books)
    return summaries


def _compare_balances(conn: Any, book_id: str, books: _Books) -> str:
    rows = conn.execute(
        "SELECT account_id::text, debits_pending, debits_posted, credits_pending, "
        "credits_posted, ledger, closed FROM account_balances WHERE book_id = %s "
        "ORDER BY account_id",
        (book_id,),
    ).fetchall()
    seen = set()
    for r in rows:
        where = f"account_balances row (book {book_id!r}, account {r[0]})"
        account = books.accounts.get(r[0])
        if account is None:
            raise Finding(where, "no such account in the WAL")
        want = (*_four(account), account[4], account[5])
        if tuple(r[1:]) != want:
            raise Finding(where, f"holds {tuple(r[1:])}, the WAL gives {want}")
        seen.add(r[0])
    missing = sorted(set(books.accounts) - seen)
    if missing:
        raise Finding(f"account_balances (book {book_id!r})", f"account {missing[0]} is missing")
    return f"{len(rows)} accounts match"


_ENTRIES_DIGEST_SQL: Final = (
    "SELECT account_id::text, count(*), sha256(string_agg("
    "int8send(position) || uuid_send(account_id) || uuid_send(transfer_id) "
    "|| int8send(amount_minor) || int8send(timestamp_us) || int8send(debits_pending) "
    "|| int8send(debits_posted) || int8send(credits_pending) || int8send(credits_posted) "
    "|| textsend(type) || '\\x00'::bytea || textsend(side) || '\\x00'::bytea "
    "|| textsend(ledger) || '\\x00'::bytea "
    "|| coalesce('\\x01'::bytea || uuid_send(pending_id), '\\x00'::bytea), "
    "'' ORDER BY position)) FROM account_entries WHERE book_id = %s GROUP BY account_id"
)
"""Per account: the number of entries and the sha256 of all of them in position order,
each as :func:`_entry_bytes` forms it, so that any change to any column of any row (or a
row added, removed or moved to another account) changes the account's digest."""

_METADATA_SQL: Final = (
    "CASE WHEN metadata = '{}'::jsonb THEN '\\x00'::bytea "
    "WHEN jsonb_typeof(metadata) <> 'object' THEN '\\xfe'::bytea "
    "ELSE '\\x01'::bytea || (SELECT string_agg(int4send(octet_length(convert_to(key, 'UTF8'))) "
    "|| convert_to(key, 'UTF8') || CASE WHEN jsonb_typeof(value) = 'string' "
    "THEN int4send(octet_length(convert_to(value #>> '{}', 'UTF8'))) "
    "|| convert_to(value #>> '{}', 'UTF8') "
    "ELSE '\\xff'::bytea END, '' ORDER BY convert_to(key, 'UTF8')) FROM jsonb_each(metadata)) "
    "END"
)
"""A transfer's metadata in the bytes :func:`_metadata_bytes` gives."""

_TRANSFERS_DIGEST_SQL: Final = (
    "SELECT count(*), sha256(string_agg("
    "int8send(position) || uuid_send(transfer_id) || int4send(code) || int8send(timestamp_us) "
    "|| int8send(timeout_s) || coalesce('\\x01'::bytea || int8send(expires_at_us), "
    "'\\x00'::bytea) || coalesce('\\x01'::bytea || uuid_send(pending_id), '\\x00'::bytea) "
    f"|| {_METADATA_SQL}, '' ORDER BY position)), "
    "sha256(string_agg(textsend(status) || '\\x00'::bytea || int8send(amount_minor) "
    "|| int8send(amount_posted_minor) || uuid_send(debit_account_id) "
    "|| uuid_send(credit_account_id) || textsend(kind) || '\\x00'::bytea || textsend(ledger) "
    "|| '\\x00'::bytea || coalesce('\\x01'::bytea || int8send(resolved_position), "
    "'\\x00'::bytea), '' ORDER BY position)) FROM transfers WHERE book_id = %s"
)
"""Two sha256 over the transfers in position order: of the columns that an event sets
once (as :func:`_transfer_bytes` forms them, while the WAL is read), and of each row's
state (as :func:`_transfer_state_bytes` forms it, from the state the WAL ends with)."""


# The same digests with the rows sent as they are (a binary COPY, in the order of the
# table) and hashed here by ``_replay.copy_digests`` without the interpreter lock: for
# PostgreSQL, reading the rows out costs less than putting their bytes together (for the
# entries, a third).
# Each spec lists (field, kind) pairs: the hashed bytes of a row, in the order above.
_F8, _F4, _F16, _TEXT, _OPT8, _OPT16, _RAW, _METADATA = range(1, 9)


def _spec(*pairs: tuple[int, int]) -> bytes:
    return bytes(v for pair in pairs for v in pair)


_ENTRIES_COPY_SQL: Final = (
    "COPY (SELECT account_id, position, transfer_id, amount_minor, timestamp_us, "
    "debits_pending, debits_posted, credits_pending, credits_posted, type, side, ledger, "
    "pending_id FROM account_entries WHERE book_id = %s) TO STDOUT (FORMAT binary)"
)
_ENTRIES_SPEC: Final = _spec(
    (1, _F8),
    (0, _F16),
    (2, _F16),
    (3, _F8),
    (4, _F8),
    (5, _F8),
    (6, _F8),
    (7, _F8),
    (8, _F8),
    (9, _TEXT),
    (10, _TEXT),
    (11, _TEXT),
    (12, _OPT16),
)

# The transfers' metadata comes as its jsonb and is put in _metadata_bytes' form natively
# (escapes undone, pairs in the byte order of their keys), as _METADATA_SQL does.
_TRANSFERS_COPY_SQL: Final = (
    "COPY (SELECT position, transfer_id, code, timestamp_us, timeout_s, expires_at_us, "
    "pending_id, metadata, status, amount_minor, amount_posted_minor, "
    "debit_account_id, credit_account_id, kind, ledger, resolved_position "
    "FROM transfers WHERE book_id = %s) TO STDOUT (FORMAT binary)"
)
_TRANSFERS_ONCE_SPEC: Final = _spec(
    (0, _F8),
    (1, _F16),
    (2, _F4),
    (3, _F8),
    (4, _F8),
    (5, _OPT8),
    (6, _OPT16),
    (7, _METADATA),
)
_TRANSFERS_STATE_SPEC: Final = _spec(
    (8, _TEXT),
    (9, _F8),
    (10, _F8),
    (11, _F16),
    (12, _F16),
    (13, _TEXT),
    (14, _TEXT),
    (15, _OPT8),
)


EntryDigests = tuple[int, dict[str, tuple[int, bytes]]]
TransferDigest = tuple[int, int, bytes, bytes]
"""A checkpoint, the row count, the digest of the columns set once, the states' digest."""


def _hashed(
    database_url: str, book_id: str, model: str, query: Callable[[Any], _T]
) -> tuple[int, _T]:
    """A read model's checkpoint and what ``query`` reads on the same connection, in one
    snapshot."""
    from ledger.pgconn import connect, read_checkpoint

    with (
        connect(database_url, autocommit=False) as conn,
        conn.transaction(),
    ):
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        checkpoint = read_checkpoint(conn, model, book_id)
        return checkpoint, query(conn)


_SLICE_PAGES: Final = 2048
"""Heap pages (16 MB with PostgreSQL's 8 kB pages) per COPY of a table read in slices."""


def _heap_slices(conn: Any, table: str) -> list[str]:
    """Conditions on ``ctid`` that cut ``table`` into slices of ``_SLICE_PAGES`` pages, in
    page order; the last one is open-ended, so every row of the snapshot is in exactly one
    slice. PostgreSQL 14 and later read only a slice's pages (a TID range scan); an older
    server would scan the table for each slice."""
    row = conn.execute(
        "SELECT pg_relation_size(%s::regclass) / current_setting('block_size')::int", (table,)
    ).fetchone()
    pages = int(row[0]) if row else 0
    cuts = list(range(_SLICE_PAGES, pages, _SLICE_PAGES))
    lows, highs = [0, *cuts], [*cuts, None]
    return [
        f"ctid >= '({lo},0)'::tid" + ("" if hi is None else f" AND ctid < '({hi},0)'::tid")
        for lo, hi in zip(lows, highs, strict=True)
    ]


_REREAD_GROUPS_MAX: Final = 256
"""Groups read again one by one when their rows came out of order; more: the table whole."""


def _copy_digests(
    sql: str,
    book_id: str,
    fields: int,
    order: int,
    group: int,
    specs: tuple[bytes, ...],
    *,
    sliced: tuple[str, str] | None = None,
) -> Callable[[Any], list[tuple[bytes, int, tuple[bytes, ...]]]]:
    """The digests of ``sql``'s rows. With ``sliced`` (the table and its group column),
    the table is read in slices of pages and each row is hashed as it comes
    (``_replay.Digests``), so that memory holds one slice, not the table; that takes each
    group's rows in order, as a table that is only appended to mostly has them. A group
    whose rows are not is read again by itself; with too many such groups, or without
    ``sliced``, the table is read whole and sorted (``_replay.copy_digests``)."""

    def query(conn: Any) -> list[tuple[bytes, int, tuple[bytes, ...]]]:
        from ledger.pgcopy import copy_out

        assert _native_books is not None
        books = _native_books
        if sliced is not None:
            table, column = sliced
            state = books.Digests(fields, order, group, specs)
            where = "WHERE book_id = %s"
            for condition in _heap_slices(conn, table):
                data = copy_out(conn, sql.replace(where, f"{where} AND {condition}"), (book_id,))
                if not state.feed(data):
                    break
            done = state.result()
            unordered = [] if done is None else [g for g, _, d in done if d is None]
            if done is not None and len(unordered) <= _REREAD_GROUPS_MAX:
                again = {}
                for g in unordered:
                    one = copy_out(
                        conn,
                        sql.replace(where, f"{where} AND {column} = %s"),
                        (book_id, UUID(bytes=g)),
                    )
                    [(_, n, d)] = books.copy_digests(one, fields, order, group, specs)
                    again[g] = (n, d)
                return [(g, *again[g]) if d is None else (g, n, d) for g, n, d in done]
        return books.copy_digests(copy_out(conn, sql, (book_id,)), fields, order, group, specs)

    return query


def _rows(sql: str, book_id: str) -> Callable[[Any], list[Any]]:
    return lambda conn: conn.execute(sql, (book_id,)).fetchall()


def _entry_digests_native(database_url: str, book_id: str) -> EntryDigests:
    """Per account, grouped by its id (field 0) and in position order (field 1)."""
    checkpoint, groups = _hashed(
        database_url,
        book_id,
        "entries",
        _copy_digests(
            _ENTRIES_COPY_SQL,
            book_id,
            13,
            1,
            0,
            (_ENTRIES_SPEC,),
            sliced=("account_entries", "account_id"),
        ),
    )
    return checkpoint, {str(UUID(bytes=g)): (n, d[0]) for g, n, d in groups}


def _entry_digests_sql(database_url: str, book_id: str) -> EntryDigests:
    checkpoint, rows = _hashed(
        database_url, book_id, "entries", _rows(_ENTRIES_DIGEST_SQL, book_id)
    )
    return checkpoint, {r[0]: (int(r[1]), bytes(r[2])) for r in rows}


def _entry_digests(database_url: str, book_id: str) -> EntryDigests:
    """The entries' digests: hashed here when the extension is there, else by PostgreSQL."""
    if _native_books is None:
        return _entry_digests_sql(database_url, book_id)
    return _entry_digests_native(database_url, book_id)


def _transfer_digest_native(database_url: str, book_id: str) -> TransferDigest:
    """All the rows together (group -1), in position order (field 0)."""
    checkpoint, groups = _hashed(
        database_url,
        book_id,
        "transfers",
        _copy_digests(
            _TRANSFERS_COPY_SQL, book_id, 16, 0, -1, (_TRANSFERS_ONCE_SPEC, _TRANSFERS_STATE_SPEC)
        ),
    )
    _, count, (once, states) = groups[0]
    return checkpoint, count, once, states


def _transfer_digest_sql(database_url: str, book_id: str) -> TransferDigest:
    checkpoint, rows = _hashed(
        database_url, book_id, "transfers", _rows(_TRANSFERS_DIGEST_SQL, book_id)
    )
    count, once, states = rows[0] if rows else (0, None, None)
    # No rows: string_agg gives NULL, where the WAL's side is the digest of nothing.
    empty = hashlib.sha256().digest()
    return (
        checkpoint,
        int(count),
        bytes(once) if once is not None else empty,
        bytes(states) if states is not None else empty,
    )


def _transfer_digest(database_url: str, book_id: str) -> TransferDigest:
    """The transfers' digests: hashed here when the extension is there, else by
    PostgreSQL."""
    if _native_books is None:
        return _transfer_digest_sql(database_url, book_id)
    return _transfer_digest_native(database_url, book_id)


@dataclass(frozen=True)
class _Digests:
    """The digest queries PostgreSQL runs while the read models are compared row by row."""

    entries: Future[EntryDigests]
    transfers: Future[TransferDigest]


def _compare_entries(
    conn: Any, book_id: str, books: _Books, head: int, digests: EntryDigests, directory: Path
) -> str:
    checkpoint, by_account = digests
    if checkpoint != head:
        raise Finding(
            f"read model entries of book {book_id!r}",
            f"at position {checkpoint} when its rows were hashed, the WAL at {head}: it "
            "cannot be compared (let `ledger project` catch up, or rebuild it)",
        )
    total = 0
    for account_id, (entries, digest) in sorted(by_account.items()):
        account = books.accounts.get(account_id)
        if account is None:
            raise Finding(
                f"account_entries of account {account_id} (book {book_id!r})",
                "no such account in the WAL",
            )
        if entries != account[6] or digest != account[9].digest():
            raise _locate_entry(conn, book_id, account_id, directory)
        total += entries
    for account_id, account in sorted(books.accounts.items()):
        if account[6] and account_id not in by_account:
            raise Finding(
                f"account_entries of account {account_id} (book {book_id!r})",
                f"no entries, the WAL gives {account[6]}",
            )
    return f"{total} entries of {len(by_account)} accounts match"


_ENTRY_COLUMNS: Final = (
    "position",
    "transfer_id",
    "pending_id",
    "type",
    "side",
    "amount_minor",
    "ledger",
    "timestamp_us",
    "debits_pending",
    "debits_posted",
    "credits_pending",
    "credits_posted",
)
_ENTRY_SELECT: Final = ", ".join(c + "::text" if c.endswith("_id") else c for c in _ENTRY_COLUMNS)


def _locate_entry(conn: Any, book_id: str, account_id: str, directory: Path) -> Finding:
    """The first entry of an account whose digest differs: the account's rows against the
    ones its events give, read again from the WAL (a slow path, taken once, on a finding)."""
    from ledger.adapters.wal import read_wal

    def norm(value: Any) -> Any:
        return None if value is None else str(UUID(value))

    want: list[tuple[Any, ...]] = []
    for record in read_wal(directory):
        if record.type not in _TRANSFER_TYPES:
            continue
        d = record.data
        for side in ("debit", "credit"):
            if d.get(f"{side}_account_id") != account_id:
                continue
            after = d[f"{side}_account_after"]
            pending_id = d.get("pending_id")
            transfer_id = (
                pending_id if record.type == "PendingTransferExpired" else d["transfer_id"]
            )
            want.append(
                (
                    record.position,
                    norm(transfer_id),
                    norm(pending_id),
                    record.type,
                    side,
                    d["amount_minor"],
                    d["ledger"],
                    d["timestamp_us"],
                    after["debits_pending"],
                    after["debits_posted"],
                    after["credits_pending"],
                    after["credits_posted"],
                )
            )
    rows = conn.execute(
        f"SELECT {_ENTRY_SELECT} FROM account_entries WHERE book_id = %s AND account_id = %s "
        "ORDER BY position",
        (book_id, account_id),
    ).fetchall()
    for i, (got, expected) in enumerate(zip(rows, want, strict=False)):
        got = tuple(got)
        if got != expected:
            if got[0] != expected[0]:
                position = min(got[0], expected[0])
                what = (
                    f"no entry at position {expected[0]}, which the WAL gives"
                    if got[0] > expected[0]
                    else "an entry the WAL does not give"
                )
                return Finding(_entry_where(book_id, account_id, position), what)
            differ = "; ".join(
                f"{_ENTRY_COLUMNS[k]} is {got[k]!r}, the WAL gives {expected[k]!r}"
                for k in range(len(_ENTRY_COLUMNS))
                if got[k] != expected[k]
            )
            return Finding(
                _entry_where(book_id, account_id, got[0]),
                f"{differ} (entry {i + 1} of the account)",
            )
    if len(rows) > len(want):
        return Finding(
            _entry_where(book_id, account_id, rows[len(want)][0]), "an entry the WAL does not give"
        )
    if len(rows) < len(want):
        return Finding(
            _entry_where(book_id, account_id, want[len(rows)][0]),
            f"no entry at position {want[len(rows)][0]}, which the WAL gives",
        )
    return Finding(  # pragma: no cover - the digests differ, so some row does
        f"account_entries of account {account_id} (book {book_id!r})",
        "the entries' digest differs from the WAL's, but no single row does",
    )


def _entry_where(book_id: str, account_id: str, position: int) -> str:
    return f"account_entries row (book {book_id!r}, account {account_id}, position {position})"


def _compare_transfers(
    conn: Any,
    book_id: str,
    books: _Books,
    head: int,
    digests: Future[TransferDigest],
    directory: Path,
) -> str:
    """The transfers as digests (see :data:`_TRANSFERS_DIGEST_SQL`); rows are read only to
    name the first one that differs."""
    checkpoint, count, once, states = digests.result()
    if checkpoint != head:
        raise Finding(
            f"read model transfers of book {book_id!r}",
            f"at position {checkpoint} when its rows were hashed, the WAL at {head}",
        )
    mine = _transfer_states(books.transfers)
    differ = mine is not None and (count != len(books.transfers) or states != mine)
    if mine is None or differ:
        _locate_state(conn, book_id, books)
    if once != books.rows.digest():
        raise _locate_transfer(conn, book_id, directory)
    if differ:  # pragma: no cover - the digests differ, so some row does
        raise Finding(
            f"transfers (book {book_id!r})",
            "the transfers' state digest differs from the WAL's, but no single row does",
        )
    return f"{count} transfers match"


def _locate_state(conn: Any, book_id: str, books: _Books) -> None:
    """Raise the first transfer row whose state differs from what the WAL gives (the
    comparison row by row; a slow path, taken on a finding). A difference in the order of
    the rows alone is left to the other digest, whose bytes hold each row's position."""
    count = 0
    with conn.transaction(), conn.cursor(name="audit_transfers") as cur:
        cur.itersize = 20_000
        cur.execute(
            "SELECT transfer_id::text, status, amount_minor, amount_posted_minor, "
            "debit_account_id::text, credit_account_id::text, kind, ledger, resolved_position "
            "FROM transfers WHERE book_id = %s ORDER BY position",
            (book_id,),
        )
        for r in cur:
            transfer = books.transfers.get(r[0])
            where = f"transfers row (book {book_id!r}, transfer {r[0]})"
            if transfer is None:
                raise Finding(where, "no such transfer in the WAL")
            if tuple(r[1:8]) != tuple(transfer[:7]):
                raise Finding(where, f"holds {tuple(r[1:8])}, the WAL gives {tuple(transfer[:7])}")
            resolved = transfer[7] if len(transfer) > 7 else None
            if r[8] != resolved:
                raise Finding(where, f"resolved_position is {r[8]}, the WAL gives {resolved}")
            count += 1
    if count != len(books.transfers):
        raise Finding(
            f"transfers (book {book_id!r})",
            f"{count} rows, the WAL has {len(books.transfers)} transfers",
        )


_STATE_FIXED: Final = struct.Struct(">qq16s16s")


def _transfer_state_bytes(transfer: list[Any] | tuple[Any, ...]) -> bytes:
    """A transfer's state as :data:`_TRANSFERS_DIGEST_SQL` hashes it: status, a NUL, the
    amount and the amount posted (64-bit big-endian), the debit and credit account ids
    (16 bytes each), kind and ledger each ended by a NUL, then the resolving position
    after a 1, or a 0 for none."""
    resolved = transfer[7] if len(transfer) > 7 else None
    return b"".join(
        (
            transfer[0].encode(),
            b"\0",
            _STATE_FIXED.pack(
                transfer[1], transfer[2], UUID(transfer[3]).bytes, UUID(transfer[4]).bytes
            ),
            transfer[5].encode(),
            b"\0",
            transfer[6].encode(),
            b"\0",
            b"\0" if resolved is None else b"\1" + resolved.to_bytes(8, "big", signed=True),
        )
    )


def _transfer_states(transfers: dict[str, list[Any] | tuple[Any, ...]]) -> bytes | None:
    """The sha256 of every transfer's state in position order (the dict's); the native
    code's, or the reference's when the native code leaves a value to it. None when a
    state cannot be put in bytes at all (then the rows are compared one by one)."""
    if _native_books is not None:
        digest = _native_books.transfer_states(transfers)
        if digest is not None:
            return digest
    sha = hashlib.sha256()
    try:
        for transfer in transfers.values():
            sha.update(_transfer_state_bytes(transfer))
    except (AttributeError, TypeError, ValueError, OverflowError, struct.error):
        return None
    return sha.digest()


_TRANSFER_COLUMNS: Final = (
    "position",
    "code",
    "timestamp_us",
    "timeout_s",
    "expires_at_us",
    "pending_id",
    "metadata",
)
_TRANSFER_SELECT: Final = ", ".join(
    c + "::text" if c.endswith("_id") else c for c in ("transfer_id", *_TRANSFER_COLUMNS)
)


def _locate_transfer(conn: Any, book_id: str, directory: Path) -> Finding:
    """The first transfer whose hashed columns differ from what its event gives (the WAL
    read again; a slow path, taken once, on a finding)."""
    from ledger.adapters.wal import read_wal

    want: dict[str, tuple[Any, ...]] = {}
    for record in read_wal(directory):
        d = record.data
        if record.type == "TransferCreated":
            pending = bool(d["flags"].get("pending"))
            want[str(UUID(d["transfer_id"]))] = (
                record.position,
                d["code"],
                d["timestamp_us"],
                d["timeout_s"] if pending else 0,
                d["expires_at_us"] if pending else None,
                None,
                d["metadata"],
            )
        elif record.type in ("PendingTransferPosted", "PendingTransferVoided"):
            want[str(UUID(d["transfer_id"]))] = (
                record.position,
                d["code"],
                d["timestamp_us"],
                0,
                None,
                str(UUID(d["pending_id"])),
                d["metadata"],
            )
    rows = conn.execute(
        f"SELECT {_TRANSFER_SELECT} FROM transfers WHERE book_id = %s ORDER BY position",
        (book_id,),
    ).fetchall()
    for r in rows:
        got, expected = tuple(r[1:]), want.get(r[0])
        if expected is not None and got != expected:
            differ = "; ".join(
                f"{_TRANSFER_COLUMNS[k]} is {got[k]!r}, the WAL gives {expected[k]!r}"
                for k in range(len(_TRANSFER_COLUMNS))
                if got[k] != expected[k]
            )
            return Finding(f"transfers row (book {book_id!r}, transfer {r[0]})", differ)
    return Finding(  # pragma: no cover - the digests differ, so some row does
        f"transfers (book {book_id!r})",
        "the transfers' digest differs from the WAL's, but no single row does",
    )


def _compare_trial_balance(conn: Any, book_id: str, books: _Books) -> str:
    sums: dict[str, list[int]] = {}
    for account in books.accounts.values():
        line = sums.setdefault(account[4], [0, 0, 0, 0])
        for i in range(4):
            line[i] += account[i]
    rows = conn.execute(
        "SELECT ledger, debits_pending, debits_posted, credits_pending, credits_posted "
        "FROM trial_balances WHERE book_id = %s ORDER BY ledger",
        (book_id,),
    ).fetchall()
    got = {r[0]: [int(v) for v in r[1:]] for r in rows}
    for ledger in sorted(set(sums) | set(got)):
        want = sums.get(ledger, [0, 0, 0, 0])
        have = got.get(ledger, [0, 0, 0, 0])
        if want != have:
            raise Finding(
                f"trial_balances row (book {book_id!r}, ledger {ledger})",
                f"holds {tuple(have)}, the accounts sum to {tuple(want)}",
            )
    return f"{len(rows)} ledgers match"


# --- the command ------------------------------------------------------------------------


def _domain_check(directory: Path, books: _Books) -> None:
    """``--domain``: replay through the node's own ``evolve`` and compare the balances."""
    from ledger import domain
    from ledger.adapters.wal import read_wal

    state = domain.BookState()
    for record in read_wal(directory):
        try:
            domain.evolve(
                state, domain.event_from_data(record.type, record.schema_version, record.data)
            )
        except domain.InvariantViolated as exc:
            raise Finding(
                f"position {record.position} (event {record.event_id})", str(exc)
            ) from None
    for account in state.accounts.values():
        mine = books.accounts[str(account.id)]
        if tuple(account.balances()) != _four(mine):
            raise Finding(f"account {account.id}", "ledger.domain.evolve and the audit disagree")


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """The replay keeps a record of every account and transfer it has seen (millions of
    long-lived containers, none in a cycle); the cyclic collector would walk all of them
    again and again as they accumulate, for nothing, so it waits until the audit is over
    and they are gone (as the node raises its thresholds for the same reason)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def replay_wal(
    directory: Path,
    database_url: str | None,
    book_id: str,
    *,
    advance: Advance | None = None,
    domain_check: bool = False,
) -> AuditReport:
    """Run the audit (see the module docstring); raise :class:`Finding` on the first
    problem. Without ``database_url`` only the WAL and the balances are checked."""
    with _collector_paused():
        # The pass's records are released when _audit returns, before the collector runs.
        return _audit(directory, database_url, book_id, advance, domain_check)


def _audit(
    directory: Path,
    database_url: str | None,
    book_id: str,
    advance: Advance | None,
    domain_check: bool,
) -> AuditReport:
    started = time.monotonic()
    report = AuditReport()
    scan = _WalScan(directory)
    if not scan.paths:
        raise FileNotFoundError(f"no WAL segment files (*.wal) in {directory}")
    books = _Books()
    scan.books = books
    store = _StoreCheck(database_url, book_id, scan.paths) if database_url else None
    hashing = (
        ThreadPoolExecutor(2, "audit-digests", initializer=_beside_the_pass)
        if database_url
        else None
    )
    digests: _Digests | None = None
    if hashing is not None and database_url:
        # PostgreSQL hashes the read models' rows while the WAL is read (they need
        # nothing from it) and the transfers are compared row by row.
        digests = _Digests(
            hashing.submit(_entry_digests, database_url, book_id),
            hashing.submit(_transfer_digest, database_url, book_id),
        )
    try:
        if store is not None:
            scan.on_chunk = lambda: store.poll(scan, block=False)
        replay_started = time.monotonic()
        try:
            try:
                scan.run(books.apply, advance)
            finally:
                if _native_books is not None:
                    _native_books.forget()
        except _Damage as damage:
            finding = _locate_damage(directory, damage, scan.position)
            if finding is not None:
                raise finding from None
        report.replay_s = time.monotonic() - replay_started
        report.segments = len(scan.paths)
        report.events = report.last_position = scan.position
        report.head_hash = scan.prev
        report.accounts = len(books.accounts)
        report.ledgers = len({a[4] for a in books.accounts.values()})
        report.transfers = len(books.transfers)
        # The read models are compared on a thread while the event store check (another
        # process) finishes, as the two wait on different things; a finding of the store
        # check is reported first, as before.
        read_models = None
        with ThreadPoolExecutor(1, "audit-read-models") as pool:
            if database_url and digests is not None:
                read_models = pool.submit(
                    _compare_read_models,
                    database_url,
                    book_id,
                    books,
                    scan.position,
                    digests,
                    directory,
                )
            try:
                if store is not None:
                    report.store_events = store.finish(scan)
                if domain_check:
                    _domain_check(directory, books)
            except BaseException:
                if read_models is not None:
                    read_models.cancel()
                raise
            if read_models is not None:
                report.read_models = read_models.result()
    finally:
        # The callback refers to the scan: a cycle that would keep every account and
        # transfer of the pass alive until the collector walked them all.
        scan.on_chunk = None
        if store is not None:
            store.close()
        if hashing is not None:
            hashing.shutdown(wait=False, cancel_futures=True)
    report.duration_s = time.monotonic() - started
    return report


def replay_command(args: Any) -> int:
    """``ledger wal replay DIR [--database-url URL] [--book ID] [--domain] [--no-progress]``."""
    directory = Path(args.dir)
    if not directory.is_dir() or not segment_paths(directory):
        print(f"ledger wal replay: no WAL segment files (*.wal) in {directory}", file=sys.stderr)
        return 2
    url, book_id = args.database_url, args.book
    if not url or not book_id:  # the settings (pydantic, 0.2 s to import) only when needed
        from ledger.config import get_settings

        settings = get_settings()
        url = url or settings.database_url
        book_id = book_id or settings.book_id
    if not url:
        print(
            "ledger wal replay: no database: set LEDGER_DATABASE_URL or --database-url",
            file=sys.stderr,
        )
        return 2
    total = sum(p.stat().st_size for p in segment_paths(directory))
    try:
        with _progress(total, enabled=not args.no_progress) as advance:
            report = replay_wal(directory, url, book_id, advance=advance, domain_check=args.domain)
    except Finding as finding:
        print(f"ledger wal replay: MISMATCH at {finding.where}: {finding.what}", file=sys.stderr)
        return 1
    except (OSError, RuntimeError) as exc:
        print(f"ledger wal replay: could not complete the audit: {exc}", file=sys.stderr)
        return 2
    print(f"ok: book {book_id!r}")
    for line in report.lines():
        print(f"  {line}")
    return 0


@contextlib.contextmanager
def _progress(total: int, *, enabled: bool) -> Iterator[Advance | None]:
    if not enabled:  # rich is not imported at all (20 ms of the command's start)
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    if not console.is_terminal:
        yield None
        return
    columns = (TextColumn("replaying"), BarColumn(), DownloadColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("replay", total=total)
        yield lambda n: bar.advance(task, n)
