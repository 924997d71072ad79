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

``POST /v1/tcc/batch`` takes the calls of many transactions at once (the coordinator's
batch convention, ``ledger.sagas.batching``): ``{"calls": [{"gid", "branch_id", "op",
"payload"}, ...]}``, answered ``{"results": [{"status", "body"}, ...]}`` in the same
order, each the status and body the single call would have answered. All of them are one
node submission, so a busy coordinator costs the node one request, one WAL append and one
PostgreSQL transaction per batch instead of per call.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import Depends, FastAPI, Path
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from starlette.responses import Response

from ledger import domain
from ledger.api.limits import BATCH_ITEMS_MAX
from ledger.api.problems import JsonResponse, problem_body, validation_problem

__all__ = [
    "IDENT_PATTERN",
    "TCC_BATCH_CALLS_MAX",
    "TCC_NAMESPACE",
    "TccBatchRequest",
    "TccBatchResponse",
    "TccOperations",
    "TccTryRequest",
    "register_tcc_routes",
    "transfer_id",
]

TCC_NAMESPACE = uuid.UUID("8a3b1f6e-2c4d-4e5f-9a0b-7c6d5e4f3a21")
TCC_TIMEOUT_DEFAULT_S = 60
IDENT_PATTERN = r"^[A-Za-z0-9_.:-]{1,128}$"

Gid = Annotated[str, Path(pattern=IDENT_PATTERN, description="global transaction id")]
Branch = Annotated[str, Path(pattern=IDENT_PATTERN, description="branch id within the transaction")]

Submit = Callable[[list[domain.Command]], Awaitable[list[domain.CommandOutcome]]]


def transfer_id(op: str, gid: str, branch_id: str) -> UUID:
    """The id of the transfer ``op`` of a branch makes: stable across retries."""
    return uuid.uuid5(TCC_NAMESPACE, f"{op}:{gid}/{branch_id}")


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
_CONFIRMED_ALREADY = frozenset({domain.RejectionCode.pending_transfer_already_posted})
_NONE_DONE: frozenset[domain.RejectionCode] = frozenset()

TCC_BATCH_CALLS_MAX = BATCH_ITEMS_MAX
"""Calls per ``POST /v1/tcc/batch``."""

TccOp = Literal["try", "confirm", "cancel"]


class TccBatchCall(BaseModel):
    """One call of a batch: the coordinator's envelope (``payload``: the hold, for try)."""

    model_config = ConfigDict(extra="forbid")
    gid: str = Field(pattern=IDENT_PATTERN, description="global transaction id")
    branch_id: str = Field(pattern=IDENT_PATTERN, description="branch id within the transaction")
    op: TccOp
    payload: Any = Field(default=None, description="try: the hold (as the try body); else ignored")


class TccBatchRequest(BaseModel):
    """Calls of many transactions at once. Each item is validated on its own (a bad item
    is answered 422 in its place and the others go ahead)."""

    model_config = ConfigDict(extra="forbid")
    calls: list[dict[str, Any]] = Field(
        min_length=1,
        max_length=TCC_BATCH_CALLS_MAX,
        description="items of the form of TccBatchCall",
    )


class TccBatchItem(BaseModel):
    status: int = Field(description="the status a single call would have answered")
    body: dict[str, Any] = Field(description="the body a single call would have answered")


class TccBatchResponse(BaseModel):
    results: list[TccBatchItem]


_CALL: TypeAdapter[TccBatchCall] = TypeAdapter(TccBatchCall)
_HOLD: TypeAdapter[TccTryRequest] = TypeAdapter(TccTryRequest)


def _result(
    outcome: domain.CommandOutcome, transfer_id: UUID, done_codes: frozenset[domain.RejectionCode]
) -> tuple[int, dict[str, Any]]:
    if outcome.status != "rejected" or outcome.code in done_codes:
        return 200, {"result": "success", "transfer_id": str(transfer_id)}
    return 409, {"result": "failure", "code": str(outcome.code), "detail": outcome.detail}


def _item_problem(i: int, exc: ValidationError, where: tuple[str, ...] = ()) -> dict[str, Any]:
    errors = [{**e, "loc": ("calls", i, *where, *e.get("loc", ()))} for e in exc.errors()]
    return problem_body(validation_problem(RequestValidationError(errors)))


class TccOperations:
    """Try, confirm and cancel of one branch, or of many in one batch, shared by the
    routes and the fast path (``ledger.api.fast``), so both answer with the same code."""

    def __init__(self, submit: Submit) -> None:
        self.submit = submit

    @staticmethod
    def command(
        op: TccOp, gid: str, branch_id: str, hold: TccTryRequest | None
    ) -> tuple[domain.Command, UUID, frozenset[domain.RejectionCode]]:
        """The command of one operation, the id of the transfer it makes, and the
        rejections that mean it was done before (answered as success)."""
        try_id = transfer_id("try", gid, branch_id)
        if op == "try":
            assert hold is not None
            command: domain.Command = domain.CreateTransfer(
                id=try_id,
                debit_account_id=hold.debit_account_id,
                credit_account_id=hold.credit_account_id,
                amount_minor=hold.amount_minor,
                ledger=hold.ledger,
                code=hold.code,
                flags=domain.TransferFlags(pending=True),
                timeout_s=hold.timeout_s,
                metadata={"tcc_gid": gid, "tcc_branch": branch_id},
            )
            return command, try_id, _NONE_DONE
        if op == "confirm":
            confirm_id = transfer_id("confirm", gid, branch_id)
            command = domain.CreateTransfer(
                id=confirm_id,
                pending_id=try_id,
                flags=domain.TransferFlags(post_pending_transfer=True),
            )
            return command, confirm_id, _CONFIRMED_ALREADY
        cancel_id = transfer_id("cancel", gid, branch_id)
        return domain.CancelPendingTransfer(id=cancel_id, pending_id=try_id), cancel_id, _NONE_DONE

    async def _one(
        self, op: TccOp, gid: str, branch_id: str, hold: TccTryRequest | None
    ) -> Response:
        command, made, done = self.command(op, gid, branch_id, hold)
        [outcome] = await self.submit([command])
        status, body = _result(outcome, made, done)
        return JsonResponse(body, status_code=status)

    async def try_(self, gid: str, branch_id: str, body: TccTryRequest) -> Response:
        return await self._one("try", gid, branch_id, body)

    async def confirm(self, gid: str, branch_id: str) -> Response:
        return await self._one("confirm", gid, branch_id, None)

    async def cancel(self, gid: str, branch_id: str) -> Response:
        return await self._one("cancel", gid, branch_id, None)

    async def batch(self, request: TccBatchRequest) -> Response:
        """Every valid call as one node submission (one WAL append, one PostgreSQL
        transaction, in the order given: a cancel after its try in the same batch finds
        the hold); each answered in its place with what a single call would answer.
        When the node refuses the whole submission (overloaded, stopped), the whole
        request is answered 503 and the caller retries every call."""
        answers: list[tuple[int, dict[str, Any]] | None] = []
        commands: list[domain.Command] = []
        made: list[tuple[UUID, frozenset[domain.RejectionCode]]] = []
        for i, raw in enumerate(request.calls):
            try:
                call = _CALL.validate_python(raw)
            except ValidationError as exc:
                answers.append((422, _item_problem(i, exc)))
                continue
            hold = None
            if call.op == "try":
                try:
                    hold = _HOLD.validate_python(call.payload)
                except ValidationError as exc:
                    answers.append((422, _item_problem(i, exc, ("payload",))))
                    continue
            command, made_id, done = self.command(call.op, call.gid, call.branch_id, hold)
            commands.append(command)
            made.append((made_id, done))
            answers.append(None)
        outcomes = iter(await self.submit(commands) if commands else [])
        ids = iter(made)
        results = []
        for answer in answers:
            if answer is None:
                made_id, done = next(ids)
                answer = _result(next(outcomes), made_id, done)
            results.append({"status": answer[0], "body": answer[1]})
        return JsonResponse({"results": results})


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

    @app.post(
        "/v1/tcc/batch",
        response_model=TccBatchResponse,
        responses={k: v for k, v in responses.items() if k != 409},
        dependencies=[Depends(writer)],
        summary="Many participant calls at once (the coordinator's batch convention)",
    )
    async def tcc_batch(body: TccBatchRequest) -> Response:
        return await ops.batch(body)
