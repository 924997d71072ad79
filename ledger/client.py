"""Python clients for the ledger's HTTP API: :class:`LedgerClient` and :class:`AsyncLedgerClient`.

Reliable submission: every account and transfer gets a client-generated id before the
first attempt, and every POST carries an ``Idempotency-Key``; a retriable failure
(connection error, timeout, 503 overloaded/unavailable) is retried with the *same* ids and
key, with exponential back-off that honours ``Retry-After``. So a retry can never move
money twice: at worst the ledger answers ``exists``.

Errors::

    LedgerClientError
    ├── ApiError                 the API answered with a problem document (code, status, detail)
    │   └── RetriesExhausted     a retriable error persisted past the retry budget
    └── CommandRejectedError     a single-item call was rejected by a ledger rule (code)
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from uuid import UUID

import httpx
from pydantic import BaseModel

_JITTER = random.Random()
"""Back-off jitter from a generator of this module's own: the process-wide one is left alone."""

__all__ = [
    "Account",
    "ApiError",
    "AsyncLedgerClient",
    "Balances",
    "CommandRejectedError",
    "ItemResult",
    "LedgerClient",
    "LedgerClientError",
    "RetriesExhausted",
    "Transfer",
]

RETRIABLE_STATUS = frozenset({502, 503, 504})


class LedgerClientError(Exception):
    """Base of the client's errors."""


class ApiError(LedgerClientError):
    """The API refused the request: ``code`` is the stable problem code."""

    def __init__(self, status: int, code: str, detail: str, body: Any = None) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.body = body

    @property
    def retriable(self) -> bool:
        return self.status in RETRIABLE_STATUS


class RetriesExhausted(ApiError):
    """A retriable failure lasted longer than the client's retry budget."""


class CommandRejectedError(LedgerClientError):
    """A ledger rule rejected the command (``code`` as in the rejection-code table)."""

    def __init__(self, code: str, detail: str | None, item_id: UUID | None) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
        self.item_id = item_id


class ItemResult(BaseModel):
    """The outcome of one item of a batch."""

    index: int
    id: UUID | None
    status: Literal["created", "exists", "rejected"]
    code: str | None = None
    detail: str | None = None


class Balances(BaseModel):
    debits_pending: int
    debits_posted: int
    credits_pending: int
    credits_posted: int
    available: int


class Account(BaseModel):
    id: UUID
    ledger: str
    scale: int
    code: int
    flags: dict[str, bool]
    metadata: dict[str, str]
    closed: bool
    timestamp_us: int
    balances: Balances


class Transfer(BaseModel):
    id: UUID
    debit_account_id: UUID
    credit_account_id: UUID
    amount_minor: int
    ledger: str
    code: int
    flags: dict[str, bool]
    pending_id: UUID | None
    timeout_s: int
    expires_at_us: int | None
    pending_status: str
    amount_posted_minor: int
    metadata: dict[str, str]
    timestamp_us: int


@dataclass(frozen=True)
class _Request:
    method: str
    path: str
    json: Any = None
    params: Mapping[str, Any] | None = None
    idempotency_key: str | None = None


def _account_body(
    ledger: str,
    code: int,
    id: UUID | None,
    debits_must_not_exceed_credits: bool,
    credits_must_not_exceed_debits: bool,
    metadata: Mapping[str, str] | None,
    scale: int,
    linked: bool,
) -> dict[str, Any]:
    return {
        "id": str(id or uuid.uuid4()),
        "ledger": ledger,
        "code": code,
        "scale": scale,
        "linked": linked,
        "flags": {
            "debits_must_not_exceed_credits": debits_must_not_exceed_credits,
            "credits_must_not_exceed_debits": credits_must_not_exceed_debits,
        },
        "metadata": dict(metadata or {}),
    }


def transfer_body(
    debit_account_id: UUID,
    credit_account_id: UUID,
    amount_minor: int,
    ledger: str,
    code: int = 1,
    *,
    id: UUID | None = None,
    pending: bool = False,
    timeout_s: int = 0,
    linked: bool = False,
    metadata: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """One item of :meth:`LedgerClient.create_transfers`, with a fresh id unless given."""
    return {
        "id": str(id or uuid.uuid4()),
        "debit_account_id": str(debit_account_id),
        "credit_account_id": str(credit_account_id),
        "amount_minor": amount_minor,
        "ledger": ledger,
        "code": code,
        "flags": {"linked": linked, "pending": pending},
        "timeout_s": timeout_s,
        "metadata": dict(metadata or {}),
    }


def _with_ids(items: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for item in items:
        d = dict(item)
        if "id" not in d or d["id"] is None:
            d["id"] = str(uuid.uuid4())
        out.append(d)
    return out


def _error_from(response: httpx.Response) -> ApiError:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and "code" in body:
        return ApiError(response.status_code, str(body["code"]), str(body.get("detail")), body)
    return ApiError(response.status_code, f"http_{response.status_code}", response.text[:500])


def _single(results: list[ItemResult]) -> ItemResult:
    result = results[0]
    if result.status == "rejected":
        raise CommandRejectedError(result.code or "rejected", result.detail, result.id)
    return result


class _Retry:
    """Exponential back-off with jitter, honouring Retry-After, within a total budget."""

    def __init__(self, attempts_max: int, backoff_s: float, backoff_max_s: float) -> None:
        self.attempts_max = attempts_max
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s

    def delay_s(self, attempt: int, response: httpx.Response | None) -> float:
        base = min(self.backoff_s * (1 << min(attempt, 30)), self.backoff_max_s)
        delay = base * (0.5 + _JITTER.random() / 2)
        if response is not None:
            header = response.headers.get("retry-after")
            if header and header.isdigit():
                delay = max(delay, min(float(header), self.backoff_max_s))
        return delay


class _Api:
    """The request table shared by the sync and async clients."""

    @staticmethod
    def open_accounts(accounts: Sequence[Mapping[str, Any]]) -> _Request:
        return _Request("POST", "/v1/accounts", {"accounts": _with_ids(accounts)}, None, _key())

    @staticmethod
    def create_transfers(transfers: Sequence[Mapping[str, Any]]) -> _Request:
        body = {"transfers": _with_ids(transfers)}
        return _Request("POST", "/v1/transfers", body, None, _key())

    @staticmethod
    def resolve(pending_id: UUID, kind: str, amount_minor: int, id: UUID | None) -> _Request:
        body = {"id": str(id or uuid.uuid4()), "amount_minor": amount_minor}
        return _Request("POST", f"/v1/transfers/{pending_id}/{kind}", body, None, _key())


def _key() -> str:
    return uuid.uuid4().hex


class LedgerClient:
    """Synchronous client (httpx). Use as a context manager or call :meth:`close`."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout_s: float = 10.0,
        attempts_max: int = 8,
        backoff_s: float = 0.05,
        backoff_max_s: float = 2.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._http = httpx.Client(
            base_url=base_url,
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=timeout_s,
            transport=transport,
        )
        self._retry = _Retry(attempts_max, backoff_s, backoff_max_s)

    def __enter__(self) -> LedgerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, req: _Request) -> Any:
        headers = {"Idempotency-Key": req.idempotency_key} if req.idempotency_key else None
        last: ApiError | None = None
        for attempt in range(self._retry.attempts_max):
            response: httpx.Response | None = None
            try:
                response = self._http.request(
                    req.method, req.path, json=req.json, params=req.params, headers=headers
                )
            except (httpx.TransportError, httpx.TimeoutException) as exc:
                last = ApiError(0, "transport_error", repr(exc))
            else:
                if response.status_code < 400:
                    return response.json()
                last = _error_from(response)
                if not last.retriable:
                    raise last
            time.sleep(self._retry.delay_s(attempt, response))
        assert last is not None
        raise RetriesExhausted(last.status, last.code, last.detail, last.body)

    # -- commands --------------------------------------------------------------------------

    def open_accounts(self, accounts: Sequence[Mapping[str, Any]]) -> list[ItemResult]:
        body = self._send(_Api.open_accounts(accounts))
        return [ItemResult.model_validate(r) for r in body["results"]]

    def open_account(
        self,
        ledger: str,
        code: int = 1,
        *,
        id: UUID | None = None,
        debits_must_not_exceed_credits: bool = False,
        credits_must_not_exceed_debits: bool = False,
        metadata: Mapping[str, str] | None = None,
        scale: int = 2,
    ) -> ItemResult:
        """Open one account; raises :class:`CommandRejectedError` if a rule refuses it."""
        body = _account_body(
            ledger,
            code,
            id,
            debits_must_not_exceed_credits,
            credits_must_not_exceed_debits,
            metadata,
            scale,
            False,
        )
        return _single(self.open_accounts([body]))

    def create_transfers(self, transfers: Sequence[Mapping[str, Any]]) -> list[ItemResult]:
        body = self._send(_Api.create_transfers(transfers))
        return [ItemResult.model_validate(r) for r in body["results"]]

    def transfer(
        self,
        debit_account_id: UUID,
        credit_account_id: UUID,
        amount_minor: int,
        ledger: str,
        code: int = 1,
        *,
        id: UUID | None = None,
        pending: bool = False,
        timeout_s: int = 0,
        metadata: Mapping[str, str] | None = None,
    ) -> ItemResult:
        """One transfer; raises :class:`CommandRejectedError` if a rule refuses it."""
        item = transfer_body(
            debit_account_id,
            credit_account_id,
            amount_minor,
            ledger,
            code,
            id=id,
            pending=pending,
            timeout_s=timeout_s,
            metadata=metadata,
        )
        return _single(self.create_transfers([item]))

    def post_pending(
        self, pending_id: UUID, amount_minor: int = 0, *, id: UUID | None = None
    ) -> ItemResult:
        return _single(
            [
                ItemResult.model_validate(
                    self._send(_Api.resolve(pending_id, "post", amount_minor, id))
                )
            ]
        )

    def void_pending(self, pending_id: UUID, *, id: UUID | None = None) -> ItemResult:
        return _single(
            [ItemResult.model_validate(self._send(_Api.resolve(pending_id, "void", 0, id)))]
        )

    # -- reads -----------------------------------------------------------------------------

    def get_account(self, account_id: UUID) -> Account:
        return Account.model_validate(self._send(_Request("GET", f"/v1/accounts/{account_id}")))

    def get_balance(self, account_id: UUID, as_of_us: int | None = None) -> Balances:
        params = {"as_of": as_of_us} if as_of_us is not None else None
        req = _Request("GET", f"/v1/accounts/{account_id}/balance", params=params)
        return Balances.model_validate(self._send(req))

    def get_transfer(self, transfer_id: UUID) -> Transfer:
        req = _Request("GET", f"/v1/transfers/{transfer_id}")
        return Transfer.model_validate(self._send(req))

    def get_entries(
        self, account_id: UUID, limit: int = 100, after_position: int = 0
    ) -> list[dict[str, Any]]:
        params = {"limit": limit, "after_position": after_position}
        req = _Request("GET", f"/v1/accounts/{account_id}/entries", params=params)
        result: list[dict[str, Any]] = self._send(req)
        return result


class AsyncLedgerClient:
    """Asynchronous client (httpx.AsyncClient); same methods as :class:`LedgerClient`."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout_s: float = 10.0,
        attempts_max: int = 8,
        backoff_s: float = 0.05,
        backoff_max_s: float = 2.0,
        transport: httpx.AsyncBaseTransport | None = None,
        max_connections: int = 100,
    ) -> None:
        self._http = httpx.AsyncClient(
            base_url=base_url,
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=timeout_s,
            transport=transport,
            limits=httpx.Limits(max_connections=max_connections),
        )
        self._retry = _Retry(attempts_max, backoff_s, backoff_max_s)

    async def __aenter__(self) -> AsyncLedgerClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, req: _Request) -> Any:
        headers = {"Idempotency-Key": req.idempotency_key} if req.idempotency_key else None
        last: ApiError | None = None
        for attempt in range(self._retry.attempts_max):
            response: httpx.Response | None = None
            try:
                response = await self._http.request(
                    req.method, req.path, json=req.json, params=req.params, headers=headers
                )
            except (httpx.TransportError, httpx.TimeoutException) as exc:
                last = ApiError(0, "transport_error", repr(exc))
            else:
                if response.status_code < 400:
                    return response.json()
                last = _error_from(response)
                if not last.retriable:
                    raise last
            await asyncio.sleep(self._retry.delay_s(attempt, response))
        assert last is not None
        raise RetriesExhausted(last.status, last.code, last.detail, last.body)

    async def open_accounts(self, accounts: Sequence[Mapping[str, Any]]) -> list[ItemResult]:
        body = await self._send(_Api.open_accounts(accounts))
        return [ItemResult.model_validate(r) for r in body["results"]]

    async def create_transfers(self, transfers: Sequence[Mapping[str, Any]]) -> list[ItemResult]:
        body = await self._send(_Api.create_transfers(transfers))
        return [ItemResult.model_validate(r) for r in body["results"]]

    async def transfer(
        self,
        debit_account_id: UUID,
        credit_account_id: UUID,
        amount_minor: int,
        ledger: str,
        code: int = 1,
        *,
        id: UUID | None = None,
        pending: bool = False,
        timeout_s: int = 0,
        metadata: Mapping[str, str] | None = None,
    ) -> ItemResult:
        item = transfer_body(
            debit_account_id,
            credit_account_id,
            amount_minor,
            ledger,
            code,
            id=id,
            pending=pending,
            timeout_s=timeout_s,
            metadata=metadata,
        )
        return _single(await self.create_transfers([item]))

    async def post_pending(
        self, pending_id: UUID, amount_minor: int = 0, *, id: UUID | None = None
    ) -> ItemResult:
        body = await self._send(_Api.resolve(pending_id, "post", amount_minor, id))
        return _single([ItemResult.model_validate(body)])

    async def void_pending(self, pending_id: UUID, *, id: UUID | None = None) -> ItemResult:
        body = await self._send(_Api.resolve(pending_id, "void", 0, id))
        return _single([ItemResult.model_validate(body)])

    async def get_account(self, account_id: UUID) -> Account:
        body = await self._send(_Request("GET", f"/v1/accounts/{account_id}"))
        return Account.model_validate(body)

    async def get_transfer(self, transfer_id: UUID) -> Transfer:
        body = await self._send(_Request("GET", f"/v1/transfers/{transfer_id}"))
        return Transfer.model_validate(body)
