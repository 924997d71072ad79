"""The ledger as a TCC participant: ``/v1/tcc/{gid}/{branch_id}/try|confirm|cancel``.

Try creates a pending transfer, confirm posts it, cancel voids it. Every id is derived
from (gid, branch_id), so a retried call is the same command and answers the same way, and
the pending transfer's state machine is the barrier (DESIGN §6): confirm and cancel are
idempotent, a cancel that arrives before its try records an empty cancellation and the
late try is refused (``id_already_cancelled``: no hanging hold), a confirm after a cancel
is refused, and a try after its timeout finds the hold expired.

Answers follow the coordinator's result protocol: 200 ``{"result": "success"}``; 409
``{"result": "failure", "code", "detail"}`` when a ledger rule refuses the operation
(final); anything else (503 overloaded, 5xx) is transient and retried by the caller.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import Depends, FastAPI, Path
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from ledger import domain
from ledger.api.problems import JsonResponse

__all__ = [
    "IDENT_PATTERN",
    "TCC_NAMESPACE",
    "TccOperations",
    "TccTryRequest",
    "branch_ids",
    "register_tcc_routes",
]

TCC_NAMESPACE = uuid.UUID("8a3b1f6e-2c4d-4e5f-9a0b-7c6d5e4f3a21")
TCC_TIMEOUT_DEFAULT_S = 60
IDENT_PATTERN = r"^[A-Za-z0-9_.:-]{1,128}$"

Gid = Annotated[str, Path(pattern=IDENT_PATTERN, description="global transaction id")]
Branch = Annotated[str, Path(pattern=IDENT_PATTERN, description="branch id within the transaction")]

Submit = Callable[[list[domain.Command]], Awaitable[list[domain.CommandOutcome]]]


def branch_ids(gid: str, branch_id: str) -> tuple[UUID, UUID, UUID]:
    """(try, confirm, cancel) transfer ids of one branch: stable across retries."""
    base = f"{gid}/{branch_id}"
    return (
        uuid.uuid5(TCC_NAMESPACE, f"try:{base}"),
        uuid.uuid5(TCC_NAMESPACE, f"confirm:{base}"),
        uuid.uuid5(TCC_NAMESPACE, f"cancel:{base}"),
    )


class TccTryRequest(BaseModel):
    """The hold a try places: debit → credit, pending until confirm, cancel or timeout."""

    model_config = ConfigDict(extra="forbid")
    debit_account_id: UUID
    credit_account_id: UUID
    amount_minor: int = Field(gt=0, le=domain.AMOUNT_MAX)
    ledger: str = Field(pattern=r"^[A-Z0-9_]{1,12}$")
    code: int = Field(default=1, ge=1, le=domain.CODE_MAX)
    timeout_s: int = Field(default=TCC_TIMEOUT_DEFAULT_S, ge=1, le=31 * 24 * 3600)


class TccResult(BaseModel):
    result: Literal["success", "failure"]
    transfer_id: UUID | None = None
    code: str | None = None
    detail: str | None = None


# Rejections that mean "already done" for an idempotent operation.
_CONFIRMED_ALREADY = {domain.RejectionCode.pending_transfer_already_posted}


def _answer(
    outcome: domain.CommandOutcome, transfer_id: UUID, done_codes: set[domain.RejectionCode]
) -> Response:
    if outcome.status != "rejected" or outcome.code in done_codes:
        return JsonResponse({"result": "success", "transfer_id": str(transfer_id)})
    body = {"result": "failure", "code": str(outcome.code), "detail": outcome.detail}
    return JsonResponse(body, status_code=409)


class TccOperations:
    """Try, confirm and cancel of one branch, shared by the routes and the fast path
    (``ledger.api.fast``), so both answer with the same code."""

    def __init__(self, submit: Submit) -> None:
        self.submit = submit

    async def try_(self, gid: str, branch_id: str, body: TccTryRequest) -> Response:
        try_id, _, _ = branch_ids(gid, branch_id)
        command = domain.CreateTransfer(
            id=try_id,
            debit_account_id=body.debit_account_id,
            credit_account_id=body.credit_account_id,
            amount_minor=body.amount_minor,
            ledger=body.ledger,
            code=body.code,
            flags=domain.TransferFlags(pending=True),
            timeout_s=body.timeout_s,
            metadata={"tcc_gid": gid, "tcc_branch": branch_id},
        )
        [outcome] = await self.submit([command])
        return _answer(outcome, try_id, set())

    async def confirm(self, gid: str, branch_id: str) -> Response:
        try_id, confirm_id, _ = branch_ids(gid, branch_id)
        command = domain.CreateTransfer(
            id=confirm_id,
            pending_id=try_id,
            flags=domain.TransferFlags(post_pending_transfer=True),
        )
        [outcome] = await self.submit([command])
        return _answer(outcome, confirm_id, _CONFIRMED_ALREADY)

    async def cancel(self, gid: str, branch_id: str) -> Response:
        try_id, _, cancel_id = branch_ids(gid, branch_id)
        command = domain.CancelPendingTransfer(id=cancel_id, pending_id=try_id)
        [outcome] = await self.submit([command])
        return _answer(outcome, cancel_id, set())


def register_tcc_routes(app: FastAPI, ops: TccOperations, writer: Callable[..., Any]) -> None:
    """Add the participant endpoints; ``writer`` is the write-scope auth dependency."""
    responses: dict[int | str, dict[str, Any]] = {
        409: {"model": TccResult, "description": "refused by a ledger rule (final)"},
        422: {"description": "request does not match the schema (problem+json)"},
        401: {"description": "missing or invalid API key (problem+json)"},
        403: {"description": "key lacks the scope (problem+json)"},
        503: {"description": "overloaded or unavailable: retry (problem+json)"},
    }

    @app.post(
        "/v1/tcc/{gid}/{branch_id}/try",
        response_model=TccResult,
        responses=responses,
        dependencies=[Depends(writer)],
    )
    async def tcc_try(gid: Gid, branch_id: Branch, body: TccTryRequest) -> Response:
        return await ops.try_(gid, branch_id, body)

    @app.post(
        "/v1/tcc/{gid}/{branch_id}/confirm",
        response_model=TccResult,
        responses=responses,
        dependencies=[Depends(writer)],
    )
    async def tcc_confirm(gid: Gid, branch_id: Branch) -> Response:
        return await ops.confirm(gid, branch_id)

    @app.post(
        "/v1/tcc/{gid}/{branch_id}/cancel",
        response_model=TccResult,
        responses=responses,
        dependencies=[Depends(writer)],
    )
    async def tcc_cancel(gid: Gid, branch_id: Branch) -> Response:
        return await ops.cancel(gid, branch_id)
