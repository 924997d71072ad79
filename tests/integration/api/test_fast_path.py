"""The pure-ASGI fast path answers exactly as the FastAPI routes do.

Two live servers over one PostgreSQL, each with its own book, share their API keys: one
with the fast path (``ledger.api.fast``), one without. Every request of a sequence goes
to both, which therefore hold the same state, and the answers must be identical: status,
every header but ``date`` (and a generated ``x-request-id``), and the body byte for byte.
The cases cover the common case the fast path answers and everything it hands on to
FastAPI (bad JSON, schema errors at various places, auth failures, idempotency keys,
limits, odd content types and encodings), and the counters show which path was taken.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.application.errors import Overloaded
from tests.integration.api.conftest import LiveServer, start_server

LIMIT = 256 * 1024


@dataclass
class Twins:
    """A fast-path server and a FastAPI-only server, sent the same requests."""

    fast: LiveServer
    slow: LiveServer
    clients: list[httpx.Client] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.connect()

    def connect(self) -> None:
        self.clients = [
            httpx.Client(base_url=s.base_url, timeout=30) for s in (self.fast, self.slow)
        ]

    def close(self) -> None:
        for c in self.clients:
            c.close()

    def auth(self, scope: str = "write") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.fast.tokens[scope]}"}

    def same(
        self,
        path: str,
        body: Any = None,
        *,
        content: bytes | Callable[[], Iterator[bytes]] | None = None,
        headers: dict[str, str] | None = None,
        scope: str | None = "write",
        fast: bool | None = None,
        method: str = "POST",
        repeated: tuple[tuple[str, str], ...] = (),
    ) -> httpx.Response:
        """Send to both; assert identical answers. ``fast``: whether the fast path must
        (True) or must not (False) have answered it."""
        sent = {"content-type": "application/json"}
        if scope is not None:
            sent |= self.auth(scope)
        sent |= headers or {}
        served = self.fast.app.fast.served if self.fast.app.fast else 0
        answers = []
        for c in self.clients:
            data = content() if callable(content) else content
            if data is None and body is not None:
                data = json.dumps(body).encode()  # not orjson: it refuses ints over 64 bits
            headers_sent = [*sent.items(), *repeated]
            answers.append(c.request(method, path, content=data, headers=headers_sent))
        a, b = answers
        assert (a.status_code, _headers(a, self.fast), a.content) == (
            b.status_code,
            _headers(b, self.slow),
            b.content,
        ), f"{method} {path}: fast path and FastAPI differ"
        if sent.get("x-request-id") and not repeated:
            assert a.headers["x-request-id"] == sent["x-request-id"][:64]
        assert self.slow.app.fast is None and self.fast.app.fast is not None
        if fast is not None:
            taken = self.fast.app.fast.served - served
            assert taken == (1 if fast else 0), f"fast path taken {taken} times, want {fast}"
        return a


def _headers(r: httpx.Response, server: LiveServer) -> list[tuple[str, str]]:
    """The headers, but ``date``; a generated request id only as its shape (16 hex
    digits), and the server's own address left out, as they differ between the two."""
    out = []
    for name, value in r.headers.multi_items():
        if name == "date":
            continue
        value = value.replace(server.base_url, "<server>")
        if name == "x-request-id" and re.fullmatch(r"[0-9a-f]{16}", value):
            value = "generated"  # (no request in these tests sends an id of this shape)
        out.append((name, value))
    return out


@pytest.fixture
def twins(database_url: str, tmp_path: Path) -> Iterator[Twins]:
    fast_gen = start_server(
        database_url, tmp_path / "fast", book_id="fast", http_body_size_max_bytes=LIMIT
    )
    fast = next(fast_gen)
    slow_gen = start_server(
        database_url,
        tmp_path / "slow",
        book_id="slow",
        fast_path=False,
        share_keys_of=fast,
        http_body_size_max_bytes=LIMIT,
    )
    slow = next(slow_gen)
    t = Twins(fast, slow)
    try:
        yield t
    finally:
        t.close()
        for gen in (slow_gen, fast_gen):
            with pytest.raises(StopIteration):
                next(gen)


def acct(**kw: Any) -> dict[str, Any]:
    return {"id": str(uuid.uuid4()), "ledger": "USD", "code": 1, **kw}


def xfer(debit: str, credit: str, amount: Any = 1, **kw: Any) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "debit_account_id": debit,
        "credit_account_id": credit,
        "amount_minor": amount,
        "ledger": "USD",
        "code": 1,
        **kw,
    }


def open_pair(t: Twins) -> tuple[str, str]:
    bank, alice = acct(), acct(flags={"debits_must_not_exceed_credits": True})
    t.same("/v1/accounts", {"accounts": [bank, alice]}, fast=True)
    return bank["id"], alice["id"]


# -- the common case ----------------------------------------------------------------------


def test_accounts_and_transfers_answer_alike(twins: Twins) -> None:
    t = twins
    bank, alice = open_pair(t)
    first = acct()
    r = t.same("/v1/accounts", {"accounts": [first, acct(code=0), acct(linked=True), acct()]})
    assert [x["status"] for x in r.json()["results"]] == [
        "created",
        "rejected",
        "created",
        "created",
    ]
    t.same("/v1/accounts", {"accounts": [first]}, fast=True)  # exists
    t.same("/v1/accounts", {"accounts": [{**first, "code": 2}]}, fast=True)  # id reused
    one = xfer(bank, alice, 2500)
    assert t.same("/v1/transfers", {"transfers": [one]}, fast=True).json()["results"][0][
        "status"
    ] == ("created")
    t.same("/v1/transfers", {"transfers": [one]}, fast=True)  # exists
    t.same("/v1/transfers", {"transfers": [{**one, "amount_minor": 7}]}, fast=True)
    t.same("/v1/transfers", {"transfers": [xfer(alice, bank, 10**9)]}, fast=True)  # rejected
    chain = [xfer(bank, alice, 5, flags={"linked": True}), xfer(alice, bank, 10**9)]
    t.same("/v1/transfers", {"transfers": chain}, fast=True)
    hold = xfer(bank, alice, 900, flags={"pending": True}, timeout_s=3600)
    t.same("/v1/transfers", {"transfers": [hold]}, fast=True)
    post = {
        "id": str(uuid.uuid4()),
        "pending_id": hold["id"],
        "amount_minor": 600,
        "flags": {"post_pending_transfer": True},
        "metadata": {"why": "partial"},
    }
    t.same("/v1/transfers", {"transfers": [post]}, fast=True)
    batch = [xfer(bank, alice, i + 1) for i in range(300)]
    t.same("/v1/transfers", {"transfers": batch}, fast=True)
    upper = xfer(bank.upper(), alice, 3)
    upper["id"] = upper["id"].upper()  # answered in canonical (lower-case) form
    t.same("/v1/transfers", {"transfers": [upper]}, fast=True)
    # Query strings are ignored by the routes; a request id is echoed.
    t.same("/v1/transfers?x=1", {"transfers": [xfer(bank, alice)]}, fast=True)
    t.same(
        "/v1/transfers",
        {"transfers": [xfer(bank, alice)]},
        headers={"x-request-id": "trace-" + "z" * 80},
        fast=True,
    )
    t.same(
        "/v1/transfers",
        {"transfers": [xfer(bank, alice)]},
        headers={"content-type": "application/json; charset=utf-8"},
        fast=True,
    )
    for scope in ("write", "admin"):
        t.same("/v1/accounts", {"accounts": [acct()]}, scope=scope, fast=True)
    for server in (t.fast, t.slow):
        with httpx.Client(base_url=server.base_url, headers=t.auth("read")) as c:
            got = c.get(f"/v1/accounts/{alice}").json()
            assert got["balances"]["credits_posted"] == 2500 + 600 + 300 * 301 // 2 + 3 + 2 + 1
            assert got["balances"]["credits_pending"] == 0


def test_chunked_bodies_answer_alike(twins: Twins) -> None:
    t = twins
    bank, alice = open_pair(t)
    raw = orjson.dumps({"transfers": [xfer(bank, alice, i + 1) for i in range(50)]})

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(raw), 997):
            yield raw[i : i + 997]

    t.same("/v1/transfers", content=chunks, fast=True)

    def too_long() -> Iterator[bytes]:
        yield b'{"transfers": ['
        for _ in range(LIMIT // 1000 + 2):
            yield b" " * 1000

    r = t.same("/v1/transfers", content=too_long, fast=False)
    assert r.status_code == 413 and r.json()["code"] == "request_too_large"


def test_idempotency_keys_answer_alike(twins: Twins) -> None:
    t = twins
    bank, alice = open_pair(t)
    body = {"transfers": [xfer(bank, alice, 10)]}
    key = {"Idempotency-Key": "k-1"}
    t.same("/v1/transfers", body, headers=key, fast=True)
    replay = t.same("/v1/transfers", body, headers=key, fast=True)
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.json()["results"][0]["status"] == "created"
    other = t.same("/v1/transfers", {"transfers": [xfer(bank, alice, 11)]}, headers=key)
    assert other.status_code == 409 and other.json()["code"] == "idempotency_key_reused"
    # the same key on another endpoint is another request
    t.same("/v1/accounts", {"accounts": [acct()]}, headers=key, fast=True)
    t.same("/v1/accounts", {"accounts": [acct()]}, headers={"Idempotency-Key": "a-1"})
    for bad in ("", "k" * 201):
        r = t.same("/v1/transfers", body, headers={"Idempotency-Key": bad}, fast=True)
        assert r.status_code == 422 and r.json()["code"] == "invalid_idempotency_key"
    r = t.same("/v1/transfers", content=b"{nope", headers={"Idempotency-Key": "k-2"}, fast=False)
    assert r.status_code == 422 and r.json()["code"] == "invalid_request"
    # a stored rejection replays too
    rejected = {"transfers": [xfer(alice, bank, 10**9)]}
    t.same("/v1/transfers", rejected, headers={"Idempotency-Key": "k-3"}, fast=True)
    t.same("/v1/transfers", rejected, headers={"Idempotency-Key": "k-3"}, fast=True)


# -- everything handed on to FastAPI -------------------------------------------------------


def test_post_and_void_answer_alike(twins: Twins) -> None:
    t = twins
    bank, alice = open_pair(t)
    holds = [xfer(bank, alice, 100 + i, flags={"pending": True}, timeout_s=3600) for i in range(9)]
    t.same("/v1/transfers", {"transfers": holds}, fast=True)
    h = [x["id"] for x in holds]
    partial = {"amount_minor": 60, "metadata": {"why": "partial"}}
    assert t.same(f"/v1/transfers/{h[0]}/post", partial, fast=True).json()["status"] == "created"
    again = t.same(f"/v1/transfers/{h[0]}/post", partial, fast=True)  # the derived id exists
    assert again.json()["status"] == "exists"
    other = t.same(f"/v1/transfers/{h[0]}/void", {"id": str(uuid.uuid4())}, fast=True)
    assert other.json()["status"] == "rejected"  # already posted
    # An empty body is no body, whatever its content type; so is JSON null.
    t.same(f"/v1/transfers/{h[1]}/void", content=b"", fast=True)
    t.same(
        f"/v1/transfers/{h[2]}/post", content=b"", headers={"content-type": "text/plain"}, fast=True
    )
    t.same(f"/v1/transfers/{h[3]}/post", content=b"null", fast=True)
    # Other spellings of the id, answered in canonical form.
    t.same(f"/v1/transfers/{h[4].upper()}/void", content=b"", fast=True)
    t.same(f"/v1/transfers/{h[5].replace('-', '')}/post", {"id": str(uuid.uuid4())}, fast=True)
    # A hold that does not exist: rejected by the ledger, not by the request checks.
    t.same(f"/v1/transfers/{uuid.uuid4()}/post", {}, fast=True)
    key = {"Idempotency-Key": "resolve-1"}
    t.same(f"/v1/transfers/{h[6]}/post", {"amount_minor": 1}, headers=key, fast=True)
    replay = t.same(f"/v1/transfers/{h[6]}/post", {"amount_minor": 1}, headers=key, fast=True)
    assert replay.headers["idempotent-replayed"] == "true"
    t.same(f"/v1/transfers/{h[6]}/post", {"amount_minor": 2}, headers=key, fast=True)  # misuse
    # What FastAPI answers: bad ids, bodies, content types and keys.
    for path, body, content, headers, scope in [
        ("/v1/transfers/nope/post", {}, None, None, "write"),
        (f"/v1/transfers/{h[7]}/post", {"amount_minor": -1}, None, None, "write"),
        (f"/v1/transfers/{h[7]}/post", {"extra": 1}, None, None, "write"),
        (f"/v1/transfers/{h[7]}/post", [], None, None, "write"),
        (f"/v1/transfers/{h[7]}/post", None, b"{", None, "write"),
        (
            f"/v1/transfers/{h[7]}/post",
            None,
            b'{"amount_minor": 1}',
            {"content-type": "text/plain"},
            "write",
        ),
        (f"/v1/transfers/{h[7]}/void", {}, None, None, "read"),
        (f"/v1/transfers/{h[7]}/void", {}, None, None, None),
    ]:
        t.same(path, body, content=content, headers=headers, scope=scope, fast=False)
    assert t.same(f"/v1/transfers/{h[7]}/void", {}, fast=True).json()["status"] == "created"
    for server in (t.fast, t.slow):
        with httpx.Client(base_url=server.base_url, headers=t.auth("read")) as c:
            got = c.get(f"/v1/accounts/{alice}").json()["balances"]
            posted = 60 + 102 + 103 + 1 + 105  # partial, two full posts, 1, the no-dash post
            assert got["credits_posted"] == posted, server.base_url
            assert got["credits_pending"] == 108  # only the last hold is still held


def test_invalid_requests_answer_alike(twins: Twins) -> None:
    t = twins
    bank, alice = open_pair(t)
    good = [xfer(bank, alice) for _ in range(3)]
    bad_items: list[dict[str, Any]] = [
        {**good[0], "amount_minor": -5},
        {**good[0], "amount_minor": "5"},
        {**good[0], "amount_minor": 5.0},
        {**good[0], "amount_minor": True},
        {**good[0], "ledger": "usd"},
        {**good[0], "code": 70000},
        {**good[0], "id": "not-a-uuid"},
        {**good[0], "id": 12},
        {**good[0], "unexpected": 1},
        {k: v for k, v in good[0].items() if k != "id"},
        {**good[0], "flags": {"linked": 1}},
        {**good[0], "flags": {"pending": True, "bogus": True}},
        {**good[0], "metadata": {"k": 1}},
        {**good[0], "metadata": {"": "v"}},
        {**good[0], "metadata": {f"k{i}": "v" for i in range(100)}},
        {**good[0], "timeout_s": -1},
        {**good[0], "pending_id": "x"},
    ]
    for item in bad_items:
        r = t.same("/v1/transfers", {"transfers": [*good, item]}, fast=False)
        assert r.status_code == 422, item
        assert r.json()["errors"][0]["where"].startswith("transfers[3]")
    # Over 64 bits: orjson refuses it, so FastAPI answers (decide rejects the amount).
    huge = t.same("/v1/transfers", {"transfers": [{**good[0], "amount_minor": 2**70}]}, fast=False)
    assert huge.json()["results"][0]["status"] == "rejected"
    body: object
    for body in (
        {"transfers": []},
        {"transfers": {}},
        {"transfers": [None]},
        {"transfer": good},
        {"transfers": good, "extra": True},
        [good],
        None,
        "text",
        3,
    ):
        t.same("/v1/transfers", content=orjson.dumps(body), fast=False)
    t.same("/v1/transfers", {"transfers": [{"id": str(uuid.uuid4())}] * 8191}, fast=False)
    t.same("/v1/accounts", {"accounts": [acct(scale=99)]}, fast=False)
    t.same("/v1/accounts", {"accounts": [acct(ledger="")]}, fast=True)  # decide rejects it
    t.same("/v1/accounts", {"accounts": [{"id": str(uuid.uuid4())}]}, fast=False)
    t.same("/v1/accounts", {"accounts": []}, fast=False)


def test_odd_bodies_and_content_types_answer_alike(twins: Twins) -> None:
    t = twins
    bank, alice = open_pair(t)
    item = xfer(bank, alice)
    raw = orjson.dumps({"transfers": [item]})
    text = raw.decode()
    odd: list[bytes] = [
        b"",
        b"{not json",
        raw + b" trailing",
        raw + b"\n",  # whitespace after the document is fine for both parsers
        b"\xef\xbb\xbf" + raw,  # a UTF-8 byte order mark
        text.encode("utf-16"),
        text.replace('"USD"', '"US\\u0044"').encode(),  # an escape that is still valid
        text.replace('"code":1', '"code":1,"code":2').encode(),  # duplicate keys
        text.replace('"code":1', '"code":2,"code":1').encode(),
        text.replace('"amount_minor":1', '"amount_minor":NaN').encode(),
        text.replace('"amount_minor":1', '"amount_minor":1e0').encode(),
        text.replace('"amount_minor":1', '"amount_minor":-0').encode(),
        text.replace('"code":1', '"code":1,"metadata":{"k":"\\ud800"}').encode(),
        text.replace('"code":1', '"code":1,"metadata":{"k":"\\ud83d\\ude00"}').encode(),
        text.replace('"code":1', '"code":1,"metadata":{"k":"\xe9"}').encode("latin-1"),
        text.replace('"code":1', '"code":1,"metadata":{"k":"\u00e9"}').encode(),
        raw.replace(b'"code":1', b'"code":1,"metadata":{"k":"\xed\xa0\x80"}'),
    ]
    for body in odd:
        # each one with its own transfer id, so that none answers "exists" by accident
        fresh = body.replace(item["id"].encode(), str(uuid.uuid4()).encode())
        if body.startswith(b"\xff\xfe"):
            fresh = text.replace(item["id"], str(uuid.uuid4())).encode("utf-16")
        t.same("/v1/transfers", content=fresh)
    for content_type in (
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/merge-patch+json",
        "APPLICATION/JSON",
        "application/json; charset=latin-1",
        "",
    ):
        fresh = raw.replace(item["id"].encode(), str(uuid.uuid4()).encode())
        t.same("/v1/transfers", content=fresh, headers={"content-type": content_type})
    r = t.same(
        "/v1/transfers", content=b"x" * (LIMIT + 1), headers={"content-type": "application/json"}
    )
    assert r.status_code == 413
    t.same("/v1/transfers/", {"transfers": [xfer(bank, alice)]}, fast=False)
    t.same("/v1/transfers", method="PUT", fast=False)
    t.same("/v1/transfers", method="GET", fast=False)


def test_auth_failures_answer_alike(twins: Twins) -> None:
    t = twins
    bank, alice = open_pair(t)
    body = {"transfers": [xfer(bank, alice)]}
    write = t.fast.tokens["write"]
    for headers, fast in (
        ({}, False),
        ({"Authorization": ""}, False),
        ({"Authorization": "Basic abc"}, False),
        ({"Authorization": "Bearer"}, False),
        ({"Authorization": "Bearer  "[:-1] + "x"}, False),
        ({"Authorization": "Bearer elk_nope_nope"}, False),
        ({"Authorization": "Bearer not-a-key"}, False),
        ({"Authorization": "Bearer " + write[:-1]}, False),
        (t.auth("read"), False),
        ({"Authorization": "bearer " + write}, True),  # the scheme is case-blind
        ({"Authorization": "BEARER   " + write}, True),
    ):
        fresh = {"transfers": [{**body["transfers"][0], "id": str(uuid.uuid4())}]}
        t.same("/v1/transfers", fresh, headers=headers, scope=None, fast=fast)
        t.same(f"/v1/tcc/g-{uuid.uuid4().hex}/b/cancel", headers=headers, scope=None, fast=fast)
    # repeated headers: the first Authorization, Content-Type and Idempotency-Key count,
    # and the last x-request-id
    read = "Bearer " + t.fast.tokens["read"]
    for repeated, fast in (
        ((("authorization", read),), True),
        ((("x-request-id", "second"),), True),
        ((("x-request-id", ""),), True),
        ((("idempotency-key", "r-1"),), True),
        ((("content-type", "text/plain"),), True),
    ):
        fresh = {"transfers": [{**body["transfers"][0], "id": str(uuid.uuid4())}]}
        headers = {"x-request-id": "first", "idempotency-key": f"i-{uuid.uuid4()}"}
        t.same("/v1/transfers", fresh, headers=headers, repeated=repeated, fast=fast)
    fresh = {"transfers": [{**body["transfers"][0], "id": str(uuid.uuid4())}]}
    t.same("/v1/transfers", fresh, scope="read", repeated=(("authorization", "Bearer " + write),))
    # no key and bad JSON: the JSON error comes first, as FastAPI decides
    r = t.same("/v1/transfers", content=b"{", scope=None, fast=False)
    assert r.status_code == 422
    r = t.same("/v1/transfers", {"transfers": []}, scope="read", fast=False)
    assert r.status_code == 403


def test_failures_inside_the_operation_answer_alike(
    twins: Twins, monkeypatch: pytest.MonkeyPatch
) -> None:
    t = twins
    bank, alice = open_pair(t)

    async def overloaded(commands: object) -> object:
        raise Overloaded("command queue full: test")

    async def broken(commands: object) -> object:
        raise RuntimeError("unexpected")

    for server in (t.fast, t.slow):
        assert server.ctx.node is not None
        monkeypatch.setattr(server.ctx.node, "submit", overloaded)
    r = t.same("/v1/transfers", {"transfers": [xfer(bank, alice)]}, fast=True)
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    t.same("/v1/tcc/g1/b1/confirm", fast=True)
    for server in (t.fast, t.slow):
        monkeypatch.setattr(server.ctx.node, "submit", broken)
    r = t.same("/v1/transfers", {"transfers": [xfer(bank, alice)]}, fast=True)
    assert r.status_code == 500 and r.text == "Internal Server Error"
    t.close()  # uvicorn closes a connection whose application raised
    t.connect()

    def key_store_away(token: str) -> object:
        raise RuntimeError("PostgreSQL away")

    with monkeypatch.context() as patch:
        for server in (t.fast, t.slow):
            patch.setattr(server.ctx.keys, "verify", key_store_away)
        r = t.same("/v1/transfers", {"transfers": [xfer(bank, alice)]}, fast=False)
        assert r.status_code == 500 and r.text == "Internal Server Error"
        t.close()
        t.connect()
        r = t.same("/v1/tcc/g2/b2/cancel", fast=False)
        assert r.status_code == 500
        t.close()
        t.connect()
    nodes = [t.fast.ctx.node, t.slow.ctx.node]
    for server in (t.fast, t.slow):
        server.ctx.node = None
    try:
        r = t.same("/v1/accounts", {"accounts": [acct()]}, fast=True)
        assert r.status_code == 503 and r.json()["code"] == "unavailable"
    finally:
        t.fast.ctx.node, t.slow.ctx.node = nodes


# -- the TCC participant ----------------------------------------------------------------------


def test_tcc_operations_answer_alike(twins: Twins) -> None:
    t = twins
    bank, payer = open_pair(t)
    t.same("/v1/transfers", {"transfers": [xfer(bank, payer, 1000)]}, fast=True)
    hold = {
        "debit_account_id": payer,
        "credit_account_id": bank,
        "amount_minor": 300,
        "ledger": "USD",
    }
    t.same("/v1/tcc/gid-1/b.1/try", hold, fast=True)
    t.same("/v1/tcc/gid-1/b.1/try", hold, fast=True)  # repeated: exists is success
    t.same("/v1/tcc/gid-1/b.1/confirm", fast=True)
    t.same("/v1/tcc/gid-1/b.1/confirm", {"ignored": "body"}, fast=True)
    r = t.same("/v1/tcc/gid-1/b.1/cancel", fast=True)  # too late: refused
    assert r.status_code == 409
    t.same("/v1/tcc/gid:2/b_2/cancel", fast=True)  # before its try: empty cancellation
    r = t.same("/v1/tcc/gid:2/b_2/try", hold, fast=True)
    assert r.json()["code"] == "id_already_cancelled"
    t.same("/v1/tcc/gid-3/b/try", {**hold, "amount_minor": 10**6}, fast=True)  # 409 funds
    t.same("/v1/tcc/gid-4/b/try", {**hold, "timeout_s": 5, "code": 7}, fast=True)
    t.same("/v1/tcc/gid-4/b/cancel", fast=True)
    # handed on: bad bodies, bad path parameters, other methods
    for body in (
        {**hold, "amount_minor": 0},
        {**hold, "amount_minor": "3"},
        {**hold, "amount_minor": 3.0},
        {**hold, "ledger": "us"},
        {**hold, "extra": 1},
        {"debit_account_id": payer},
        None,
    ):
        t.same(f"/v1/tcc/g-{uuid.uuid4().hex}/b/try", content=orjson.dumps(body))
    t.same("/v1/tcc/gid-5/b/try", content=b"", fast=False)
    for path in (
        "/v1/tcc/" + "g" * 129 + "/b/confirm",
        "/v1/tcc/g%20h/b/confirm",
        "/v1/tcc/g%0A/b/confirm",
        "/v1/tcc/g/b%2Fc/confirm",
        "/v1/tcc/g/b/confirm/",
        "/v1/tcc/g/b/commit",
        "/v1/tcc//b/confirm",
    ):
        t.same(path, fast=False)
    t.same("/v1/tcc/g/b/confirm", method="GET", fast=False)


def test_tcc_batches_answer_alike(twins: Twins) -> None:
    t = twins
    bank, payer = open_pair(t)
    t.same("/v1/transfers", {"transfers": [xfer(bank, payer, 1000)]}, fast=True)
    hold = {"debit_account_id": payer, "credit_account_id": bank, "amount_minor": 300}
    hold["ledger"] = "USD"

    def calls(*items: tuple[str, str, Any]) -> dict[str, Any]:
        return {"calls": [{"gid": g, "branch_id": "b", "op": o, "payload": p} for g, o, p in items]}

    t.same("/v1/tcc/batch", calls(("k1", "try", hold), ("k2", "cancel", None)), fast=True)
    r = t.same(
        "/v1/tcc/batch",
        calls(("k1", "confirm", None), ("k2", "try", hold), ("k3", "try", {**hold, "x": 1})),
        fast=True,
    )
    assert [i["status"] for i in r.json()["results"]] == [200, 409, 422]  # each in its place
    # handed on: a body that is not a batch at all
    bad: list[Any] = [{"calls": []}, {"calls": [1]}, {"calls": "k1"}, {}, None]
    for body in bad:
        t.same("/v1/tcc/batch", content=orjson.dumps(body), fast=False)
    t.same("/v1/tcc/batch", calls(("k1", "confirm", None)), scope="read", fast=False)


# -- metrics ------------------------------------------------------------------------------


def _request_counts(server: LiveServer) -> dict[str, float]:
    text = httpx.get(server.base_url + "/metrics").text
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(
            ("ledger_http_requests_total", "ledger_command_outcomes_total")
        ) or line.startswith("ledger_http_request_seconds_count"):
            name, _, value = line.rpartition(" ")
            if 'route="/metrics"' not in name:
                out[name] = float(value)
    return out


def test_metrics_count_alike(twins: Twins) -> None:
    t = twins
    bank, alice = open_pair(t)
    t.same("/v1/transfers", {"transfers": [xfer(bank, alice, 5)]}, fast=True)
    t.same("/v1/transfers", {"transfers": [xfer(alice, bank, 10**9), xfer(bank, alice)]})
    t.same("/v1/transfers", {"transfers": [xfer(bank, alice, -1)]}, fast=False)
    t.same("/v1/tcc/g/b/cancel", fast=True)
    t.same("/v1/tcc/g/b/try", {"nope": 1}, fast=False)
    t.same("/v1/transfers", {"transfers": []}, scope=None, fast=False)
    fast, slow = _request_counts(t.fast), _request_counts(t.slow)
    assert fast == slow
    assert fast['ledger_http_requests_total{method="POST",route="/v1/transfers",status="200"}'] == 2
    assert any('route="/v1/tcc/{gid}/{branch_id}/cancel"' in k for k in fast)


# -- random bodies --------------------------------------------------------------------------

_UUIDS = st.uuids().map(str) | st.sampled_from(["", "x", "00000000-0000-0000-0000-000000000000"])
_INTS = st.integers(min_value=-2, max_value=2**65) | st.sampled_from([0, 1, 65535, 65536])
_SCALARS = (
    st.none()
    | st.booleans()
    | _INTS
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5)
)
_ITEMS = st.fixed_dictionaries(
    {"id": _UUIDS},
    optional={
        "debit_account_id": _UUIDS,
        "credit_account_id": _UUIDS,
        "amount_minor": _INTS | _SCALARS,
        "ledger": st.sampled_from(["USD", "usd", "", "EUR", "A" * 13]) | _SCALARS,
        "code": _INTS,
        "flags": st.dictionaries(
            st.sampled_from(["linked", "pending", "post_pending_transfer", "x"]),
            st.booleans() | _SCALARS,
            max_size=3,
        ),
        "pending_id": _UUIDS | st.none(),
        "timeout_s": _INTS,
        "metadata": st.dictionaries(st.text(max_size=3), st.text(max_size=3) | _INTS, max_size=3),
        "bogus": _SCALARS,
    },
)


@settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(items=st.lists(_ITEMS, min_size=0, max_size=4))
def test_random_transfer_batches_answer_alike(twins: Twins, items: list[dict[str, Any]]) -> None:
    twins.same("/v1/transfers", {"transfers": items})
