"""Structured logs: JSON lines carrying the request id and the global transaction id."""

from __future__ import annotations

import io
import logging

import orjson

from ledger.logs import JsonFormatter, configure_logging, request_id, transaction_id


def test_json_lines_carry_context_and_extras() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("test.logs")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    rid, gid = request_id.set("req-1"), transaction_id.set("order-7")
    try:
        log.warning("retrying %s", "confirm", extra={"attempt": 3})
    finally:
        request_id.reset(rid)
        transaction_id.reset(gid)
        log.removeHandler(handler)
    line = orjson.loads(stream.getvalue())
    assert line["msg"] == "retrying confirm" and line["level"] == "warning"
    assert line["request_id"] == "req-1" and line["gid"] == "order-7" and line["attempt"] == 3


def test_configure_logging_picks_json_when_asked_and_is_idempotent() -> None:
    root = logging.getLogger()
    before = list(root.handlers)
    try:
        configure_logging("INFO", json=True)
        configure_logging("INFO", json=True)
        ours = [h for h in root.handlers if getattr(h, "_eventledger", False)]
        assert len(ours) == 1 and isinstance(ours[0].formatter, JsonFormatter)
    finally:
        for h in list(root.handlers):
            if h not in before:
                root.removeHandler(h)
