"""The read models: account balances, account entries, transfers, trial balances.

Why the SQL looks the way it does. Projection throughput is measured, and per-row
statements cost a round trip each, so every projection folds a whole batch in Python
first (the last balances of each account, the final state of each transfer, the net
change of each trial-balance line) and then writes it with a few set-based statements:
``COPY`` for rows that are new (positions above the checkpoint have never been applied,
so they cannot be in the table yet), and one ``UPDATE ... FROM unnest(arrays)`` or
``INSERT ... ON CONFLICT`` for rows that change. Ids stay strings from the event data
(PostgreSQL parses them), which saves building a ``UUID`` object per value.

Balance as of a time is not a table of its own: the entries model keeps every movement
with the balances after it and its timestamp, so "the last entry at or before T" answers
it (:mod:`projections.read`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import orjson
import psycopg
from psycopg import sql

from ledger.application.records import EventRecord
from projections.base import Projection, ProjectionInvariantViolated, TableNames, current_data
from projections.tables import account_balances, account_entries, transfers, trial_balances

__all__ = [
    "AccountBalancesProjection",
    "AccountEntriesProjection",
    "TransfersProjection",
    "TrialBalanceProjection",
]

_TRANSFER_TYPES: Final = frozenset(
    (
        "TransferCreated",
        "PendingTransferPosted",
        "PendingTransferVoided",
        "PendingTransferExpired",
    )
)
_BALANCE_KEYS: Final = ("debits_pending", "debits_posted", "credits_pending", "credits_posted")


def _balances(after: Any) -> tuple[int, int, int, int]:
    return (
        after["debits_pending"],
        after["debits_posted"],
        after["credits_pending"],
        after["credits_posted"],
    )


def _copy(
    conn: psycopg.Connection[Any], table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
) -> None:
    if not rows:
        return
    statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, columns))
    )
    with conn.cursor() as cur, cur.copy(statement) as copy:
        for row in rows:
            copy.write_row(row)


class AccountBalancesProjection(Projection):
    """``account_balances``: one row per account with its four balances (available is
    ``credits_posted - debits_posted - debits_pending``, computed when read)."""

    name = "balances"
    tables = (account_balances,)

    _COLUMNS: Final = (
        "book_id",
        "account_id",
        "ledger",
        "code",
        *_BALANCE_KEYS,
        "closed",
        "opened_at_us",
        "position",
    )

    def apply(
        self,
        conn: psycopg.Connection[Any],
        book_id: str,
        records: Sequence[EventRecord],
        names: TableNames,
    ) -> None:
        opened: dict[str, list[Any]] = {}
        changed: dict[str, list[Any]] = {}  # account -> [4 balances, closed, position]
        for r in records:
            t = r.type
            d = current_data(r)
            if t in _TRANSFER_TYPES:
                for key, after in (
                    (d["debit_account_id"], d["debit_account_after"]),
                    (d["credit_account_id"], d["credit_account_after"]),
                ):
                    row = opened.get(key)
                    if row is not None:
                        row[4:8] = _balances(after)
                        row[10] = r.position
                    else:
                        prior = changed.get(key)
                        closed = prior[4] if prior is not None else None
                        changed[key] = [*_balances(after), closed, r.position]
            elif t == "AccountOpened":
                opened[d["account_id"]] = [
                    book_id,
                    d["account_id"],
                    d["ledger"],
                    d["code"],
                    0,
                    0,
                    0,
                    0,
                    False,
                    d["timestamp_us"],
                    r.position,
                ]
            elif t == "AccountClosed":
                key = d["account_id"]
                row = opened.get(key)
                if row is not None:
                    row[4:8] = _balances(d["account_after"])
                    row[8] = True
                    row[10] = r.position
                else:
                    changed[key] = [*_balances(d["account_after"]), True, r.position]
        table = names[account_balances.name]
        _copy(conn, table, self._COLUMNS, list(opened.values()))
        if changed:
            columns = list(zip(*changed.values(), strict=True))
            conn.execute(
                sql.SQL(
                    "UPDATE {t} AS a SET debits_pending = u.dp, debits_posted = u.dpo, "
                    "credits_pending = u.cp, credits_posted = u.cpo, "
                    "closed = coalesce(u.closed, a.closed), position = u.position "
                    "FROM unnest(%s::uuid[], %s::int8[], %s::int8[], %s::int8[], %s::int8[], "
                    "%s::bool[], %s::int8[]) AS u(account_id, dp, dpo, cp, cpo, closed, position) "
                    "WHERE a.book_id = %s AND a.account_id = u.account_id"
                ).format(t=sql.Identifier(table)),
                (list(changed), *map(list, columns), book_id),
            )


class AccountEntriesProjection(Projection):
    """``account_entries``: every movement of every account (a transfer, a hold, its post,
    void or expiry) with the amount and the account's four balances after it."""

    name = "entries"
    tables = (account_entries,)

    _COLUMNS: Final = (
        "book_id",
        "account_id",
        "position",
        "transfer_id",
        "pending_id",
        "type",
        "side",
        "amount_minor",
        "ledger",
        "timestamp_us",
        *_BALANCE_KEYS,
    )

    def apply(
        self,
        conn: psycopg.Connection[Any],
        book_id: str,
        records: Sequence[EventRecord],
        names: TableNames,
    ) -> None:
        rows: list[tuple[Any, ...]] = []
        append = rows.append
        for r in records:
            t = r.type
            if t not in _TRANSFER_TYPES:
                continue
            d = current_data(r)
            pending_id = d.get("pending_id")
            transfer_id = d["transfer_id"] if t != "PendingTransferExpired" else pending_id
            head = (r.position, transfer_id, pending_id, t)
            tail = (d["amount_minor"], d["ledger"], d["timestamp_us"])
            append(
                (
                    book_id,
                    d["debit_account_id"],
                    *head,
                    "debit",
                    *tail,
                    *_balances(d["debit_account_after"]),
                )
            )
            append(
                (
                    book_id,
                    d["credit_account_id"],
                    *head,
                    "credit",
                    *tail,
                    *_balances(d["credit_account_after"]),
                )
            )
        _copy(conn, names[account_entries.name], self._COLUMNS, rows)


class TransfersProjection(Projection):
    """``transfers``: every transfer by id (indexed by debit and credit account too), with
    its kind (single, pending, post, void) and, for a hold, where it stands."""

    name = "transfers"
    tables = (transfers,)

    _COLUMNS: Final = (
        "book_id",
        "transfer_id",
        "position",
        "debit_account_id",
        "credit_account_id",
        "amount_minor",
        "ledger",
        "code",
        "kind",
        "pending_id",
        "status",
        "amount_posted_minor",
        "timeout_s",
        "expires_at_us",
        "timestamp_us",
        "resolved_position",
        "metadata",
    )
    _STATUS: Final = {
        "PendingTransferPosted": "posted",
        "PendingTransferVoided": "voided",
        "PendingTransferExpired": "expired",
    }

    def apply(
        self,
        conn: psycopg.Connection[Any],
        book_id: str,
        records: Sequence[EventRecord],
        names: TableNames,
    ) -> None:
        created: dict[str, list[Any]] = {}
        resolved: dict[str, tuple[str, int, int]] = {}  # pending id -> status, posted, position
        for r in records:
            t = r.type
            if t not in _TRANSFER_TYPES:
                continue
            d = current_data(r)
            if t == "TransferCreated":
                if d["flags"]["pending"]:
                    row = self._row(book_id, r.position, d, "pending", None, "pending")
                    row[12], row[13] = d["timeout_s"], d["expires_at_us"]
                else:
                    row = self._row(book_id, r.position, d, "single", None, "none")
                created[d["transfer_id"]] = row
                continue
            status = self._STATUS[t]
            pending_id = d["pending_id"]
            if t != "PendingTransferExpired":
                kind = "post" if t == "PendingTransferPosted" else "void"
                created[d["transfer_id"]] = self._row(
                    book_id, r.position, d, kind, pending_id, "none"
                )
            posted = d["amount_minor"] if t == "PendingTransferPosted" else 0
            held = created.get(pending_id)
            if held is not None:
                held[10], held[11], held[15] = status, posted, r.position
            else:
                resolved[pending_id] = (status, posted, r.position)
        table = names[transfers.name]
        _copy(conn, table, self._COLUMNS, list(created.values()))
        if resolved:
            statuses, posted_amounts, positions = zip(*resolved.values(), strict=True)
            conn.execute(
                sql.SQL(
                    "UPDATE {t} AS x SET status = u.status, amount_posted_minor = u.posted, "
                    "resolved_position = u.position "
                    "FROM unnest(%s::uuid[], %s::text[], %s::int8[], %s::int8[]) "
                    "AS u(transfer_id, status, posted, position) "
                    "WHERE x.book_id = %s AND x.transfer_id = u.transfer_id"
                ).format(t=sql.Identifier(table)),
                (list(resolved), list(statuses), list(posted_amounts), list(positions), book_id),
            )

    @staticmethod
    def _row(
        book_id: str, position: int, d: Any, kind: str, pending_id: str | None, status: str
    ) -> list[Any]:
        return [
            book_id,
            d["transfer_id"],
            position,
            d["debit_account_id"],
            d["credit_account_id"],
            d["amount_minor"],
            d["ledger"],
            d["code"],
            kind,
            pending_id,
            status,
            0,
            0,
            None,
            d["timestamp_us"],
            None,
            orjson.dumps(d["metadata"]).decode(),
        ]


class TrialBalanceProjection(Projection):
    """``trial_balances``: per book and ledger code, the sums of the four balances over
    all accounts. Every movement debits one account and credits another by the same
    amount, so Σ debits = Σ credits (posted and pending) after every batch; a line that
    breaks it stops the worker (:class:`ProjectionInvariantViolated`)."""

    name = "trial_balance"
    tables = (trial_balances,)

    def apply(
        self,
        conn: psycopg.Connection[Any],
        book_id: str,
        records: Sequence[EventRecord],
        names: TableNames,
    ) -> None:
        deltas: dict[str, list[int]] = {}  # ledger -> [dp, dpo, cp, cpo, position]
        for r in records:
            t = r.type
            if t not in _TRANSFER_TYPES:
                continue
            d = current_data(r)
            line = deltas.get(d["ledger"])
            if line is None:
                line = deltas[d["ledger"]] = [0, 0, 0, 0, 0]
            amount = d["amount_minor"]
            if t == "TransferCreated":
                if d["flags"]["pending"]:
                    line[0] += amount
                    line[2] += amount
                else:
                    line[1] += amount
                    line[3] += amount
            elif t == "PendingTransferPosted":
                held = d["pending_amount_minor"]
                line[0] -= held
                line[2] -= held
                line[1] += amount
                line[3] += amount
            else:
                line[0] -= amount
                line[2] -= amount
            line[4] = r.position
        if not deltas:
            return
        columns = list(zip(*deltas.values(), strict=True))
        conn.execute(
            sql.SQL(
                "INSERT INTO {t} AS x (book_id, ledger, debits_pending, debits_posted, "
                "credits_pending, credits_posted, position) "
                "SELECT %s, * FROM unnest(%s::text[], %s::numeric[], %s::numeric[], "
                "%s::numeric[], %s::numeric[], %s::int8[]) "
                "ON CONFLICT (book_id, ledger) DO UPDATE SET "
                "debits_pending = x.debits_pending + EXCLUDED.debits_pending, "
                "debits_posted = x.debits_posted + EXCLUDED.debits_posted, "
                "credits_pending = x.credits_pending + EXCLUDED.credits_pending, "
                "credits_posted = x.credits_posted + EXCLUDED.credits_posted, "
                "position = EXCLUDED.position"
            ).format(t=sql.Identifier(names[trial_balances.name])),
            (book_id, list(deltas), *map(list, columns)),
        )

    def check(self, conn: psycopg.Connection[Any], book_id: str, names: TableNames) -> None:
        row = conn.execute(
            sql.SQL(
                "SELECT ledger, debits_posted, credits_posted, debits_pending, credits_pending "
                "FROM {t} WHERE book_id = %s AND (debits_posted <> credits_posted "
                "OR debits_pending <> credits_pending OR debits_pending < 0) "
                "ORDER BY ledger LIMIT 1"
            ).format(t=sql.Identifier(names[trial_balances.name])),
            (book_id,),
        ).fetchone()
        if row is not None:
            raise ProjectionInvariantViolated(
                f"trial balance of book {book_id!r}, ledger {row[0]}: debits posted {row[1]}, "
                f"credits posted {row[2]}, debits pending {row[3]}, credits pending {row[4]} "
                f"(table {names[trial_balances.name]}): Σ debits must equal Σ credits"
            )
