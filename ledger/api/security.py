"""The bearer-key dependency shared by the ledger API and the coordinator API."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Header

from ledger.api.auth import ApiKey, KeyStore, scope_allows
from ledger.api.problems import ApiProblem

__all__ = ["bearer_key"]

_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def bearer_key(keys: KeyStore, scope: str) -> Callable[..., Awaitable[ApiKey]]:
    """A FastAPI dependency: the caller's active key, which must allow ``scope``.

    Answers 401 ``unauthenticated`` (no bearer token), 401 ``invalid_api_key`` (unknown,
    malformed or revoked) or 403 ``insufficient_scope``. A key verified within the store's
    cache TTL is checked on the event loop without a thread hop.
    """

    async def check(authorization: Annotated[str | None, Header()] = None) -> ApiKey:
        if not authorization or not authorization.lower().startswith("bearer "):
            raise ApiProblem(
                401,
                "unauthenticated",
                "missing bearer API key: send 'Authorization: Bearer elk_...'",
                headers=_CHALLENGE,
            )
        token = authorization[7:].strip()
        known, key = keys.cached(token)
        if not known:
            key = await asyncio.to_thread(keys.verify, token)
        if key is None:
            raise ApiProblem(
                401,
                "invalid_api_key",
                "API key is unknown, malformed or revoked",
                headers=_CHALLENGE,
            )
        if not scope_allows(key.scope, scope):
            raise ApiProblem(
                403,
                "insufficient_scope",
                f"key {key.key_id} has scope {key.scope!r}; this endpoint needs {scope!r}",
            )
        return key

    return check
