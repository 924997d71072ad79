"""Reads of the read models for the HTTP API (``GET /v1/accounts/{id}/balance?as_of=``,
``GET /v1/accounts/{id}/entries``) and for operators.

Read models trail the event store by the projection lag (see ``ledger projections
status``); a read here is as of the projection's checkpoint, never ahead of it. Each
method opens no transaction of its own beyond one statement, so reads never block the
workers, and a rebuild's swap delays a read by the length of the swap at most.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final
from uuid import UUID

import psycopg

from projections.tracking import dsn

__all__ = ["ReadModels"]

_BALANCES: Final = ("debits_pending", "debits_posted", "credits_pending", "credits_posted")


def _balances(row: tuple[Any, ...]) -> dict[str, int]:
    dp, dpo, cp, cpo = (int(v) for v in row)
    return {
        "debits_pending": dp,
        "debits_posted": dpo,
        "credits_pending": cp,
        "credits_posted": cpo,
        "available": cpo - dpo - dp,
    }


class ReadModels:
    """Async reads of one book's read models (``book_id``: default ``LEDGER_BOOK_ID``).

    One connection, used by one coroutine at a time; it is opened on first use and
    re-opened after a connection error. Call :meth:`close` when done.
    """

    def __init__(self, database_url: str, book_id: str | None = None) -> None:
        if book_id is None:
            from ledger.config import get_settings

            book_id = get_settings().book_id
        self.book_id = book_id
        self._dsn = dsn(database_url)
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._lock = asyncio.Lock()

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await conn.close()

    async def _fetch(self, query: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        async with self._lock:
            for attempt in (1, 2):
                if self._conn is None or self._conn.closed:
                    self._conn = await psycopg.AsyncConnection.connect(self._dsn, autocommit=True)
                try:
                    cur = await self._conn.execute(query, params)
                    return await cur.fetchall()
                except psycopg.OperationalError:
                    await self._conn.close()
                    self._conn = None
                    if attempt == 2:
                        raise
        raise AssertionError("unreachable")

    async def balance(self, account_id: UUID) -> dict[str, int] | None:
        """The account's balances as projected (posted, pending, available), or None."""
        rows = await self._fetch(
            "SELECT debits_pending, debits_posted, credits_pending, credits_posted "
            "FROM account_balances WHERE book_id = %s AND account_id = %s",
            (self.book_id, account_id),
        )
        return _balances(rows[0]) if rows else None

    async def balance_as_of(self, account_id: UUID, as_of_us: int) -> dict[str, int] | None:
        """The account's balances at ``as_of_us`` (microseconds since the epoch): those
        after its last movement at or before that time, zeros if it was open but had not
        moved yet. Returns ``None`` when the account did not exist then (or is unknown to
        the read models). Keys: debits_pending, debits_posted, credits_pending,
        credits_posted, available (= credits_posted - debits_posted - debits_pending)."""
        rows = await self._fetch(
            "SELECT debits_pending, debits_posted, credits_pending, credits_posted "
            "FROM account_entries WHERE book_id = %s AND account_id = %s "
            "AND timestamp_us <= %s ORDER BY timestamp_us DESC, position DESC LIMIT 1",
            (self.book_id, account_id, as_of_us),
        )
        if rows:
            return _balances(rows[0])
        opened = await self._fetch(
            "SELECT 1 FROM account_balances WHERE book_id = %s AND account_id = %s "
            "AND opened_at_us <= %s",
            (self.book_id, account_id, as_of_us),
        )
        return _balances((0, 0, 0, 0)) if opened else None

    async def entries(
        self, account_id: UUID, limit: int, after_position: int
    ) -> list[dict[str, Any]]:
        """The account's movements after ``after_position``, oldest first, at most
        ``limit``: each with position, transfer_id, pending_id, type, side (debit or
        credit), amount_minor, ledger, timestamp_us and the four balances after it plus
        available. Page with ``after_position`` = the last position returned."""
        rows = await self._fetch(
            "SELECT position, transfer_id, pending_id, type, side, amount_minor, ledger, "
            "timestamp_us, debits_pending, debits_posted, credits_pending, credits_posted "
            "FROM account_entries WHERE book_id = %s AND account_id = %s AND position > %s "
            "ORDER BY position LIMIT %s",
            (self.book_id, account_id, after_position, limit),
        )
        return [
            {
                "position": r[0],
                "transfer_id": str(r[1]),
                "pending_id": None if r[2] is None else str(r[2]),
                "type": r[3],
                "side": r[4],
                "amount_minor": r[5],
                "ledger": r[6],
                "timestamp_us": r[7],
                **_balances(r[8:12]),
            }
            for r in rows
        ]

    async def transfer(self, transfer_id: UUID) -> dict[str, Any] | None:
        """One transfer by id as projected (kind, status, amounts, accounts), or None."""
        rows = await self._fetch(
            _TRANSFER + "WHERE book_id = %s AND transfer_id = %s",
            (
                self.book_id,
                transfer_id,
            ),
        )
        return _transfer(rows[0]) if rows else None

    async def transfers_of_account(
        self, account_id: UUID, limit: int, after_position: int = 0
    ) -> list[dict[str, Any]]:
        """Transfers that debit or credit the account, by position, at most ``limit``."""
        rows = await self._fetch(
            f"SELECT * FROM ({_TRANSFER} WHERE book_id = %s AND debit_account_id = %s "
            f"AND position > %s UNION ALL {_TRANSFER} WHERE book_id = %s "
            "AND credit_account_id = %s AND position > %s) t ORDER BY position LIMIT %s",
            (
                self.book_id,
                account_id,
                after_position,
                self.book_id,
                account_id,
                after_position,
                limit,
            ),
        )
        return [_transfer(r) for r in rows]

    async def trial_balance(self) -> list[dict[str, Any]]:
        """Per ledger code: the sums of the four balances over all accounts."""
        rows = await self._fetch(
            "SELECT ledger, debits_pending, debits_posted, credits_pending, credits_posted "
            "FROM trial_balances WHERE book_id = %s ORDER BY ledger",
            (self.book_id,),
        )
        return [
            {"ledger": r[0], **dict(zip(_BALANCES, map(int, r[1:]), strict=True))} for r in rows
        ]


_TRANSFER: Final = (
    "SELECT transfer_id, position, debit_account_id, credit_account_id, amount_minor, ledger, "
    "code, kind, pending_id, status, amount_posted_minor, timeout_s, expires_at_us, "
    "timestamp_us, resolved_position, metadata FROM transfers "
)


def _transfer(r: tuple[Any, ...]) -> dict[str, Any]:
    return {
        "id": str(r[0]),
        "position": r[1],
        "debit_account_id": str(r[2]),
        "credit_account_id": str(r[3]),
        "amount_minor": r[4],
        "ledger": r[5],
        "code": r[6],
        "kind": r[7],
        "pending_id": None if r[8] is None else str(r[8]),
        "status": r[9],
        "amount_posted_minor": r[10],
        "timeout_s": r[11],
        "expires_at_us": r[12],
        "timestamp_us": r[13],
        "resolved_position": r[14],
        "metadata": r[15],
    }
