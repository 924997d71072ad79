"""A live API server (uvicorn on a free loopback port) over real PostgreSQL and a real WAL."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn

from ledger.api.app import ApiContext, LedgerApi, create_app
from ledger.api.auth import KeyStore
from ledger.api.idempotency import IdempotencyStore
from ledger.api.server import attach_read_models, uvicorn_options
from ledger.bootstrap import open_node
from ledger.config import load_settings
from ledger.devservices import free_port


@dataclass
class LiveServer:
    base_url: str
    ctx: ApiContext
    tokens: dict[str, str]
    key_ids: dict[str, str]
    database_url: str
    app: LedgerApi

    def client(self, scope: str = "admin") -> httpx.Client:
        return httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {self.tokens[scope]}"},
            timeout=30,
        )


def start_server(
    database_url: str,
    wal_dir: Path,
    read_models: bool = False,
    *,
    book_id: str = "api",
    fast_path: bool = True,
    share_keys_of: LiveServer | None = None,
    **settings: object,
) -> Iterator[LiveServer]:
    """A server for ``book_id``; ``share_keys_of`` reuses another server's tokens (so
    two servers can be sent identical requests)."""
    config = load_settings(wal_dir=wal_dir, book_id=book_id, **settings)
    keys = KeyStore(database_url, cache_ttl_s=0)
    tokens: dict[str, str] = {}
    key_ids: dict[str, str] = {}
    if share_keys_of is not None:
        tokens, key_ids = dict(share_keys_of.tokens), dict(share_keys_of.key_ids)
    else:
        for scope in ("read", "write", "admin"):
            key, token = keys.create(f"test-{scope}", scope)
            tokens[scope], key_ids[scope] = token, key.key_id
    ctx = ApiContext(
        open_node=lambda: open_node(config, database_url),
        keys=keys,
        idempotency=IdempotencyStore(database_url, config.book_id),
        body_size_max_bytes=config.http_body_size_max_bytes,
        fast_path=fast_path,
    )
    if read_models:
        attach_read_models(ctx, database_url, config.book_id)
    port = free_port()
    app = create_app(ctx)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", **uvicorn_options())
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("API server did not start")
        time.sleep(0.02)
    try:
        yield LiveServer(f"http://127.0.0.1:{port}", ctx, tokens, key_ids, database_url, app)
    finally:
        server.should_exit = True
        thread.join(30)
        keys.close()
        ctx.idempotency.close()


@pytest.fixture
def live(database_url: str, tmp_path: Path) -> Iterator[LiveServer]:
    yield from start_server(database_url, tmp_path / "wal", http_body_size_max_bytes=256 * 1024)
