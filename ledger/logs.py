"""Structured logging: JSON lines when stderr is not a terminal, readable text when it is.

Context such as the request id or a global transaction id is carried in context variables
(:data:`request_id`, :data:`transaction_id`) and added to every record logged while it
is set, so one request can be followed through the node, the recorder and the relay.
"""

from __future__ import annotations

import contextvars
import logging
import sys
import time
from typing import Any

import orjson

__all__ = ["JsonFormatter", "configure_logging", "request_id", "transaction_id"]

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
transaction_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "transaction_id", default=None
)

_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, context, extras."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid = request_id.get()
        if rid:
            out["request_id"] = rid
        gid = transaction_id.get()
        if gid:
            out["gid"] = gid
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        rid = request_id.get()
        record.ctx = f" [{rid}]" if rid else ""
        return True


def configure_logging(level: str = "INFO", json: bool | None = None) -> None:
    """Install the handler on the root logger (idempotent)."""
    use_json = (not sys.stderr.isatty()) if json is None else json
    handler = logging.StreamHandler(sys.stderr)
    if use_json:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(name)s%(ctx)s: %(message)s")
        )
        handler.addFilter(_ContextFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_eventledger", False):
            root.removeHandler(old)
    handler._eventledger = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
