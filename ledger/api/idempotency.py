"""``Idempotency-Key`` storage: the same key and body replay the stored response; the same
key with another body is refused (409 ``idempotency_key_reused``).

Two concurrent first requests with one key may both be processed; that is safe because
every account and transfer carries its own client-chosen id, so the second one's items
come back ``exists``. The stored response is the first one committed.
"""

from __future__ import annotations

import hashlib
from typing import Any

from sqlalchemy import create_engine, select
from sqlalchemy.dialects.postgresql import insert

from ledger.adapters.tables import idempotency_keys
from ledger.devservices import normalise_pg_url

__all__ = ["IdempotencyStore", "StoredResponse", "body_digest"]

KEY_LENGTH_MAX = 200


def body_digest(method: str, path: str, body: bytes) -> bytes:
    return hashlib.sha256(method.encode() + b" " + path.encode() + b"\n" + body).digest()


class StoredResponse:
    """A response kept for replay."""

    __slots__ = ("body", "digest", "status_code")

    def __init__(self, digest: bytes, status_code: int, body: Any) -> None:
        self.digest = digest
        self.status_code = status_code
        self.body = body


class IdempotencyStore:
    """Rows of ``idempotency_keys`` for one book."""

    def __init__(self, database_url: str, book_id: str) -> None:
        self._engine = create_engine(normalise_pg_url(database_url), pool_size=4, max_overflow=8)
        self._book_id = book_id

    def get(self, key: str) -> StoredResponse | None:
        t = idempotency_keys
        with self._engine.connect() as conn:
            row = conn.execute(
                select(t.c.request_sha256, t.c.status_code, t.c.response).where(
                    t.c.book_id == self._book_id, t.c.key == key
                )
            ).first()
        if row is None:
            return None
        return StoredResponse(bytes(row.request_sha256), row.status_code, row.response)

    def put(self, key: str, digest: bytes, status_code: int, body: Any) -> None:
        stmt = (
            insert(idempotency_keys)
            .values(
                book_id=self._book_id,
                key=key,
                request_sha256=digest,
                status_code=status_code,
                response=body,
            )
            .on_conflict_do_nothing(index_elements=["book_id", "key"])
        )
        with self._engine.begin() as conn:
            conn.execute(stmt)

    def close(self) -> None:
        self._engine.dispose()
