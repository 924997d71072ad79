"""``ledger serve``: the API process (uvicorn), with embedded services when no URL is set."""

from __future__ import annotations

import logging
from typing import Any

import uvicorn

from ledger.adapters.migrate import upgrade
from ledger.api.app import ApiContext, create_app
from ledger.api.auth import KeyStore
from ledger.api.idempotency import IdempotencyStore
from ledger.bootstrap import open_node
from ledger.config import Settings
from ledger.devservices import start_embedded_postgres
from ledger.logs import configure_logging

__all__ = ["attach_read_models", "build_context", "serve", "uvicorn_options"]

_log = logging.getLogger(__name__)


def attach_read_models(ctx: ApiContext, database_url: str, book_id: str) -> ApiContext:
    """Serve balance-as-of and entries from the read models; export their lag."""
    from projections.read import ReadModels
    from projections.status import StatusCollector

    ctx.read_models = ReadModels(database_url, book_id)
    ctx.metrics.registry.register(StatusCollector(database_url))
    return ctx


def uvicorn_options() -> dict[str, Any]:
    """How ``ledger serve`` runs uvicorn (the tests serve the app the same way).

    The event loop and HTTP parser are uvicorn's defaults, uvloop and httptools (both
    come with ``uvicorn[standard]``); the protocol is httptools' with one write per
    response (``ledger.api.protocol``). No access log: a line per request would cost
    the event loop more than the rest of a request's handling.
    """
    from ledger.api.protocol import CoalescingHttpToolsProtocol

    return {"http": CoalescingHttpToolsProtocol, "access_log": False}


def build_context(settings: Settings, database_url: str) -> ApiContext:
    """The API's parts: the node (opened in the server's loop), keys, idempotency, and
    the read models with their lag exported as metrics."""
    ctx = ApiContext(
        open_node=lambda: open_node(settings, database_url),
        keys=KeyStore(database_url),
        idempotency=IdempotencyStore(database_url, settings.book_id),
        body_size_max_bytes=settings.http_body_size_max_bytes,
    )
    return attach_read_models(ctx, database_url, settings.book_id)


def serve(settings: Settings, host: str | None = None, port: int | None = None) -> int:
    configure_logging(settings.log_level, settings.log_json)
    url = settings.database_url
    pg = None
    if not url:
        pg = start_embedded_postgres()
        url = pg.url
        upgrade(url)
        _log.warning("no LEDGER_DATABASE_URL: using embedded PostgreSQL at %s (dev only)", url)
        key, token = KeyStore(url).create("dev", "admin")
        print(f"dev admin key {key.key_id}: {token}", flush=True)
    ctx = build_context(settings, url)
    ctx.on_shutdown += [ctx.keys.close, ctx.idempotency.close]
    if pg is not None:
        ctx.on_shutdown.append(pg.close)
    uvicorn.run(
        create_app(ctx),
        host=host or settings.http_host,
        port=port if port is not None else settings.http_port,
        log_level=settings.log_level.lower(),
        **uvicorn_options(),
    )
    return 0
