"""Bearer API keys with scopes, stored hashed.

A key looks like ``elk_<key_id>_<secret>``. Only ``sha256(secret)`` is stored; the secret
has 256 bits of entropy, so a fast hash is the right tool (as for GitHub or Stripe tokens;
slow password hashes exist for low-entropy human secrets). Scopes nest: ``admin`` ⊃
``write`` ⊃ ``read``. Verified keys are cached for ``cache_ttl_s`` (default 2 s), so a
revocation takes effect within that time on every node.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import create_engine, func, insert, select, update

from ledger.adapters.tables import api_keys
from ledger.devservices import normalise_pg_url

__all__ = ["SCOPES", "ApiKey", "KeyStore", "scope_allows"]

SCOPES = ("read", "write", "admin")
_RANK = {s: i for i, s in enumerate(SCOPES)}
TOKEN_PREFIX = "elk"


def scope_allows(granted: str, needed: str) -> bool:
    """True if a key with scope ``granted`` may call an endpoint needing ``needed``."""
    return _RANK[granted] >= _RANK[needed]


@dataclass(frozen=True)
class ApiKey:
    """A stored key (never the secret)."""

    key_id: str
    name: str
    scope: str
    created_at: datetime
    revoked_at: datetime | None


def _hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def parse_token(token: str) -> tuple[str, str] | None:
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] != TOKEN_PREFIX or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


class KeyStore:
    """Create, list, revoke and verify API keys in the ``api_keys`` table."""

    def __init__(self, database_url: str, *, cache_ttl_s: float = 2.0) -> None:
        self._engine = create_engine(normalise_pg_url(database_url), pool_size=4, max_overflow=4)
        self._ttl = cache_ttl_s
        self._cache: dict[str, tuple[float, ApiKey | None]] = {}
        self._lock = threading.Lock()

    def create(self, name: str, scope: str) -> tuple[ApiKey, str]:
        """A new key; returns it and the token, which is shown once and never stored."""
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {', '.join(SCOPES)} (got {scope!r})")
        if not name or len(name) > 200:
            raise ValueError("name must be 1..200 characters")
        key_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        with self._engine.begin() as conn:
            row = conn.execute(
                insert(api_keys)
                .values(key_id=key_id, name=name, secret_sha256=_hash(secret), scopes=scope)
                .returning(api_keys.c.created_at)
            ).one()
        key = ApiKey(key_id, name, scope, row.created_at, None)
        return key, f"{TOKEN_PREFIX}_{key_id}_{secret}"

    def list(self) -> list[ApiKey]:
        with self._engine.connect() as conn:
            rows = conn.execute(select(api_keys).order_by(api_keys.c.created_at)).all()
        return [ApiKey(r.key_id, r.name, r.scopes, r.created_at, r.revoked_at) for r in rows]

    def revoke(self, key_id: str) -> bool:
        """Revoke ``key_id``; False if there is no such active key."""
        with self._engine.begin() as conn:
            result = conn.execute(
                update(api_keys)
                .where(api_keys.c.key_id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=func.now())
            )
        with self._lock:
            self._cache.clear()
        return bool(result.rowcount)

    def cached(self, token: str) -> tuple[bool, ApiKey | None]:
        """(True, key or None) if ``token`` was verified within the TTL, else (False, None):
        lets the event loop answer most requests without a thread hop."""
        hit = self._cache.get(token)
        if hit is not None and hit[0] > time.monotonic():
            return True, hit[1]
        return False, None

    def verify(self, token: str) -> ApiKey | None:
        """The active key for ``token``, or None (unknown, malformed, wrong secret, revoked)."""
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(token)
        if hit is not None and hit[0] > now:
            return hit[1]
        key = self._verify_uncached(token)
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[token] = (now + self._ttl, key)
        return key

    def _verify_uncached(self, token: str) -> ApiKey | None:
        parsed = parse_token(token)
        if parsed is None:
            return None
        key_id, secret = parsed
        with self._engine.connect() as conn:
            row = conn.execute(select(api_keys).where(api_keys.c.key_id == key_id)).first()
        if row is None or row.revoked_at is not None:
            return None
        if not hmac.compare_digest(bytes(row.secret_sha256), _hash(secret)):
            return None
        return ApiKey(row.key_id, row.name, row.scopes, row.created_at, row.revoked_at)

    def close(self) -> None:
        self._engine.dispose()
