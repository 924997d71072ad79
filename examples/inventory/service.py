"""A small inventory service that takes part in TCC transactions and sagas.

It owns its own PostgreSQL database (``items`` and ``reservations``) and joins global
transactions through :mod:`ledger.sagas.participant`: every operation runs its business
change and its barrier insert in one transaction, so duplicates, a cancel before its try
and a try after its cancel are all handled by the barrier rows, never by
check-then-insert.

It follows the coordinator's *envelope* convention: each call is a ``POST`` whose body is
``{"gid": ..., "branch_id": ..., "op": ..., "payload": {"sku": ..., "quantity": ...}}``
and the answer is the fixed result protocol: 200 ``{"result": "success"}``, or 409
``{"result": "failure", "code": ..., "detail": ...}`` for a final refusal.

Endpoints::

    POST /v1/items                       {"sku", "on_hand"}: set an item's stock
    GET  /v1/items/{sku}                 on_hand, reserved, available
    POST /v1/tcc/reserve/try             hold stock            (refused: insufficient_stock,
    POST /v1/tcc/reserve/confirm         take the held stock    branch_cancelled)
    POST /v1/tcc/reserve/cancel          release the held stock
    POST /v1/saga/reserve/action         take stock at once    (refused: insufficient_stock)
    POST /v1/saga/reserve/compensate     give it back
    GET  /health

Stock rule, checked by the database too: ``0 <= reserved <= on_hand``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, Final, Literal

import orjson
import psycopg
from fastapi import FastAPI, Path
from psycopg import sql
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from ledger.sagas.participant import BARRIER_DDL, TABLE, abarrier

__all__ = ["SCHEMA", "Envelope", "create_app", "create_schema"]

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS items (
    sku      text   PRIMARY KEY,
    on_hand  bigint NOT NULL CHECK (on_hand >= 0),
    reserved bigint NOT NULL DEFAULT 0 CHECK (reserved >= 0 AND reserved <= on_hand)
);
CREATE TABLE IF NOT EXISTS reservations (
    gid       text   NOT NULL,
    branch_id text   NOT NULL,
    sku       text   NOT NULL REFERENCES items (sku),
    quantity  bigint NOT NULL CHECK (quantity > 0),
    state     text   NOT NULL CHECK (state IN ('held', 'taken', 'released')),
    PRIMARY KEY (gid, branch_id)
);
"""

Sku = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]


class Reserve(BaseModel):
    """What to reserve."""

    model_config = ConfigDict(extra="forbid")
    sku: Sku
    quantity: int = Field(gt=0, le=1_000_000)


class Envelope(BaseModel):
    """The coordinator's envelope (see ``ledger.sagas.protocol``)."""

    model_config = ConfigDict(extra="forbid")
    gid: str = Field(min_length=1, max_length=128)
    branch_id: str = Field(min_length=1, max_length=64)
    op: str
    payload: Reserve | None = None


class Item(BaseModel):
    """Stock to set for one item."""

    model_config = ConfigDict(extra="forbid")
    sku: Sku
    on_hand: int = Field(ge=0, le=1_000_000_000)


class Refused(Exception):
    """A final "no" (409 failure); raising it rolls back the barrier rows too."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def _json(body: dict[str, Any], status: int = 200) -> Response:
    return Response(orjson.dumps(body), status, media_type="application/json")


SUCCESS: Final = {"result": "success"}

Conn = psycopg.AsyncConnection[Any]


async def create_schema(conn: Conn) -> None:
    """The service's tables and the barrier table (idempotent)."""
    await conn.execute(SCHEMA)
    await conn.execute(sql.SQL(BARRIER_DDL).format(table=sql.Identifier(TABLE)))


async def _reservation(conn: Conn, gid: str, branch_id: str) -> tuple[str, int, str] | None:
    cur = await conn.execute(
        "SELECT sku, quantity, state FROM reservations WHERE gid = %s AND branch_id = %s "
        "FOR UPDATE",
        (gid, branch_id),
    )
    row = await cur.fetchone()
    return None if row is None else (str(row[0]), int(row[1]), str(row[2]))


async def _cancelled_first(conn: Conn, gid: str, branch_id: str, origin: str) -> bool:
    """True when the barrier's origin row was written by a cancel or compensation."""
    cur = await conn.execute(
        f"SELECT reason FROM {TABLE} WHERE gid = %s AND branch_id = %s AND op = %s",
        (gid, branch_id, origin),
    )
    row = await cur.fetchone()
    return row is not None and row[0] != origin


async def _hold(conn: Conn, e: Envelope, state: Literal["held", "taken"]) -> None:
    """Reserve (``held``) or take (``taken``) the stock of the envelope's payload."""
    if e.payload is None:
        raise Refused("payload_missing", "a try or action needs {sku, quantity}")
    sku, quantity = e.payload.sku, e.payload.quantity
    cur = await conn.execute(
        "SELECT on_hand, reserved FROM items WHERE sku = %s FOR UPDATE", (sku,)
    )
    row = await cur.fetchone()
    if row is None:
        raise Refused("item_not_found", f"no item {sku!r}")
    on_hand, reserved = int(row[0]), int(row[1])
    if on_hand - reserved < quantity:
        raise Refused(
            "insufficient_stock",
            f"insufficient_stock: {sku} available {on_hand - reserved}, asked {quantity}",
        )
    if state == "held":
        await conn.execute(
            "UPDATE items SET reserved = reserved + %s WHERE sku = %s", (quantity, sku)
        )
    else:
        await conn.execute(
            "UPDATE items SET on_hand = on_hand - %s WHERE sku = %s", (quantity, sku)
        )
    await conn.execute(
        "INSERT INTO reservations (gid, branch_id, sku, quantity, state) "
        "VALUES (%s, %s, %s, %s, %s)",
        (e.gid, e.branch_id, sku, quantity, state),
    )


async def _first(conn: Conn, e: Envelope, op: Literal["try", "action"]) -> None:
    """try / action: hold or take stock once; a repeat answers as the first did."""
    async with abarrier(conn, e.gid, e.branch_id, op) as run:
        if run:
            await _hold(conn, e, "held" if op == "try" else "taken")
            return
    found = await _reservation(conn, e.gid, e.branch_id)
    if found is not None and found[2] != "released":
        return  # a repeat of a try that succeeded
    if found is not None or await _cancelled_first(conn, e.gid, e.branch_id, op):
        raise Refused("branch_cancelled", f"{e.gid}/{e.branch_id} was cancelled before its {op}")
    raise Refused("not_reserved", f"{e.gid}/{e.branch_id}: an earlier {op} was refused")


async def _confirm(conn: Conn, e: Envelope) -> None:
    async with abarrier(conn, e.gid, e.branch_id, "confirm") as run:
        if not run:
            return  # a duplicate confirm
        found = await _reservation(conn, e.gid, e.branch_id)
        if found is None or found[2] != "held":
            state = "no reservation" if found is None else f"reservation {found[2]}"
            raise Refused("nothing_to_confirm", f"{e.gid}/{e.branch_id}: {state}")
        sku, quantity, _ = found
        await conn.execute(
            "UPDATE items SET on_hand = on_hand - %s, reserved = reserved - %s WHERE sku = %s",
            (quantity, quantity, sku),
        )
        await conn.execute(
            "UPDATE reservations SET state = 'taken' WHERE gid = %s AND branch_id = %s",
            (e.gid, e.branch_id),
        )


async def _undo(conn: Conn, e: Envelope, op: Literal["cancel", "compensate"]) -> None:
    """cancel / compensate: give back what the try or action held or took (nothing, when
    it never ran: an empty cancellation, which also blocks a late try)."""
    async with abarrier(conn, e.gid, e.branch_id, op) as run:
        if not run:
            return
        found = await _reservation(conn, e.gid, e.branch_id)
        if found is None:
            return
        sku, quantity, state = found
        if op == "cancel" and state == "taken":
            raise Refused("already_confirmed", f"{e.gid}/{e.branch_id} was confirmed")
        if state == "held":
            await conn.execute(
                "UPDATE items SET reserved = reserved - %s WHERE sku = %s", (quantity, sku)
            )
        elif state == "taken":
            await conn.execute(
                "UPDATE items SET on_hand = on_hand + %s WHERE sku = %s", (quantity, sku)
            )
        await conn.execute(
            "UPDATE reservations SET state = 'released' WHERE gid = %s AND branch_id = %s",
            (e.gid, e.branch_id),
        )


def create_app(database_url: str, *, pool_size_max: int = 8) -> FastAPI:
    """The inventory service over the database at ``database_url``."""
    dsn = database_url.replace("postgresql+psycopg://", "postgresql://", 1)
    pool = AsyncConnectionPool(dsn, min_size=1, max_size=pool_size_max, open=False)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await pool.open(wait=True)
        async with pool.connection() as conn:
            await create_schema(conn)
        try:
            yield
        finally:
            await pool.close()

    app = FastAPI(title="inventory (example participant)", lifespan=lifespan)

    async def run(e: Envelope, op: str) -> Response:
        if e.op != op:
            return _json({"detail": f"envelope op {e.op!r} sent to the {op} endpoint"}, 400)
        try:
            async with pool.connection() as conn, conn.transaction():
                if op in ("try", "action"):
                    await _first(conn, e, op)  # type: ignore[arg-type]
                elif op == "confirm":
                    await _confirm(conn, e)
                else:
                    await _undo(conn, e, op)  # type: ignore[arg-type]
        except Refused as refused:
            return _json({"result": "failure", "code": refused.code, "detail": refused.detail}, 409)
        return _json(SUCCESS)

    @app.post("/v1/tcc/reserve/{op}")
    async def tcc(
        op: Annotated[Literal["try", "confirm", "cancel"], Path()], e: Envelope
    ) -> Response:
        return await run(e, op)

    @app.post("/v1/saga/reserve/{op}")
    async def saga(op: Annotated[Literal["action", "compensate"], Path()], e: Envelope) -> Response:
        return await run(e, op)

    @app.post("/v1/items")
    async def set_item(item: Item) -> Response:
        async with pool.connection() as conn:
            await conn.execute(
                "INSERT INTO items (sku, on_hand) VALUES (%s, %s) ON CONFLICT (sku) DO UPDATE "
                "SET on_hand = EXCLUDED.on_hand",
                (item.sku, item.on_hand),
            )
        return _json({"sku": item.sku, "on_hand": item.on_hand})

    @app.get("/v1/items/{sku}")
    async def get_item(sku: Annotated[str, Path(max_length=64)]) -> Response:
        async with pool.connection() as conn:
            cur = await conn.execute("SELECT on_hand, reserved FROM items WHERE sku = %s", (sku,))
            row = await cur.fetchone()
        if row is None:
            return _json({"detail": f"no item {sku!r}"}, 404)
        on_hand, reserved = int(row[0]), int(row[1])
        return _json(
            {"sku": sku, "on_hand": on_hand, "reserved": reserved, "available": on_hand - reserved}
        )

    @app.get("/health")
    async def health() -> Response:
        return _json({"status": "ok"})

    return app
