"""Every endpoint and error class of the HTTP API, over real HTTP and real PostgreSQL."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from ledger.api.auth import KeyStore
from tests.integration.api.conftest import LiveServer, start_server

PROBLEM = "application/problem+json"


def account(ledger: str = "USD", limit: bool = False, **kw: Any) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "ledger": ledger,
        "code": 1,
        "flags": {"debits_must_not_exceed_credits": limit},
        **kw,
    }


def transfer(debit: str, credit: str, amount: int, **kw: Any) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "debit_account_id": debit,
        "credit_account_id": credit,
        "amount_minor": amount,
        "ledger": "USD",
        "code": 1,
        **kw,
    }


def open_pair(c: httpx.Client) -> tuple[str, str]:
    bank, alice = account(), account(limit=True)
    r = c.post("/v1/accounts", json={"accounts": [bank, alice]})
    assert r.status_code == 200, r.text
    return bank["id"], alice["id"]


def assert_problem(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = r.json()
    assert body["code"] == code and body["status"] == status and body["detail"]
    return body


# -- health, readiness, metrics -----------------------------------------------------------


def test_health_ready_and_metrics_need_no_key(live: LiveServer) -> None:
    with httpx.Client(base_url=live.base_url) as c:
        assert c.get("/health").json() == {
            "status": "ok",
            "position": None,
            "queue_depth": None,
            "detail": None,
        }
        ready = c.get("/ready")
        assert ready.status_code == 200 and ready.json()["status"] == "ready"
        metrics = c.get("/metrics").text
    for name in (
        "ledger_http_requests",
        "ledger_batch_commands",
        "ledger_queue_depth",
        "ledger_wal_append_seconds",
        "ledger_store_commit_seconds",
    ):
        assert name in metrics


def test_metrics_count_batches_and_commits(live: LiveServer) -> None:
    with live.client() as c:
        open_pair(c)
        text = httpx.get(live.base_url + "/metrics").text
    assert "ledger_batch_commands_count 1.0" in text
    assert "ledger_wal_append_seconds_count 1.0" in text
    assert "ledger_store_commit_seconds_count 1.0" in text


def test_openapi_document_lists_the_endpoints(live: LiveServer) -> None:
    doc = httpx.get(live.base_url + "/openapi.json").json()
    for path in (
        "/v1/accounts",
        "/v1/transfers",
        "/v1/accounts/{account_id}",
        "/v1/accounts/{account_id}/balance",
        "/v1/accounts/{account_id}/entries",
        "/v1/transfers/{transfer_id}",
        "/v1/transfers/{transfer_id}/post",
        "/v1/transfers/{transfer_id}/void",
    ):
        assert path in doc["paths"], path


# -- auth -----------------------------------------------------------------------------------


def test_missing_key_is_401(live: LiveServer) -> None:
    r = httpx.post(live.base_url + "/v1/accounts", json={"accounts": [account()]})
    assert_problem(r, 401, "unauthenticated")
    assert r.headers["www-authenticate"] == "Bearer"


def test_unknown_key_is_401(live: LiveServer) -> None:
    r = httpx.get(
        live.base_url + f"/v1/accounts/{uuid.uuid4()}",
        headers={"Authorization": "Bearer elk_deadbeef_nope"},
    )
    assert_problem(r, 401, "invalid_api_key")


def test_read_key_cannot_write(live: LiveServer) -> None:
    with live.client("read") as c:
        r = c.post("/v1/accounts", json={"accounts": [account()]})
    body = assert_problem(r, 403, "insufficient_scope")
    assert "needs 'write'" in body["detail"]


def test_revoked_key_is_refused(live: LiveServer) -> None:
    with live.client("write") as c:
        assert c.post("/v1/accounts", json={"accounts": [account()]}).status_code == 200
        keys = KeyStore(live.database_url)
        keys.revoke(live.key_ids["write"])
        keys.close()
        r = c.post("/v1/accounts", json={"accounts": [account()]})
    assert_problem(r, 401, "invalid_api_key")


# -- accounts and transfers ---------------------------------------------------------------


def test_accounts_batch_reports_each_item(live: LiveServer) -> None:
    with live.client("write") as c:
        first = account()
        r = c.post("/v1/accounts", json={"accounts": [first, account(code=0)]})
        assert r.status_code == 200
        results = r.json()["results"]
        assert [x["status"] for x in results] == ["created", "rejected"]
        assert results[1]["code"] == "code_must_not_be_zero" and results[1]["index"] == 1
        again = c.post("/v1/accounts", json={"accounts": [first]}).json()["results"]
        assert again[0]["status"] == "exists"
        changed = c.post("/v1/accounts", json={"accounts": [{**first, "code": 2}]}).json()
        assert changed["results"][0]["code"] == "id_already_used_with_different_fields"


def test_transfer_moves_money_and_balances_show_it(live: LiveServer) -> None:
    with live.client() as c:
        bank, alice = open_pair(c)
        t = transfer(bank, alice, 2500)
        assert (
            c.post("/v1/transfers", json={"transfers": [t]}).json()["results"][0]["status"]
            == "created"
        )
        got = c.get(f"/v1/accounts/{alice}").json()
        assert got["balances"] == {
            "debits_pending": 0,
            "debits_posted": 0,
            "credits_pending": 0,
            "credits_posted": 2500,
            "available": 2500,
        }
        assert c.get(f"/v1/accounts/{alice}/balance").json()["credits_posted"] == 2500
        view = c.get(f"/v1/transfers/{t['id']}").json()
        assert view["amount_minor"] == 2500 and view["pending_status"] == "none"


def test_insufficient_funds_is_rejected_with_its_code(live: LiveServer) -> None:
    with live.client() as c:
        bank, alice = open_pair(c)
        [res] = c.post("/v1/transfers", json={"transfers": [transfer(alice, bank, 1)]}).json()[
            "results"
        ]
    assert res["status"] == "rejected" and res["code"] == "exceeds_credits"
    assert "credits_posted 0" in res["detail"]


def test_linked_chain_fails_atomically(live: LiveServer) -> None:
    with live.client() as c:
        bank, alice = open_pair(c)
        chain = [
            transfer(bank, alice, 100, flags={"linked": True}),
            transfer(alice, bank, 500),  # exceeds alice's credits
        ]
        results = c.post("/v1/transfers", json={"transfers": chain}).json()["results"]
        assert [r["code"] for r in results] == ["linked_event_failed", "exceeds_credits"]
        assert c.get(f"/v1/accounts/{alice}").json()["balances"]["credits_posted"] == 0


def test_pending_transfer_post_and_void(live: LiveServer) -> None:
    with live.client() as c:
        bank, alice = open_pair(c)
        hold = transfer(bank, alice, 900, flags={"pending": True}, timeout_s=3600)
        c.post("/v1/transfers", json={"transfers": [hold]})
        assert c.get(f"/v1/accounts/{alice}").json()["balances"]["credits_pending"] == 900
        posted = c.post(f"/v1/transfers/{hold['id']}/post", json={"amount_minor": 600})
        assert posted.status_code == 200 and posted.json()["status"] == "created"
        balances = c.get(f"/v1/accounts/{alice}").json()["balances"]
        assert (balances["credits_pending"], balances["credits_posted"]) == (0, 600)
        again = c.post(f"/v1/transfers/{hold['id']}/post", json={"amount_minor": 600})
        assert again.json()["status"] == "exists"  # same derived id: an idempotent repeat
        other_id = c.post(f"/v1/transfers/{hold['id']}/post", json={"id": str(uuid.uuid4())})
        assert other_id.json()["code"] == "pending_transfer_already_posted"
        other = transfer(bank, alice, 50, flags={"pending": True})
        c.post("/v1/transfers", json={"transfers": [other]})
        assert c.post(f"/v1/transfers/{other['id']}/void").json()["status"] == "created"
        assert c.post(f"/v1/transfers/{other['id']}/void").json()["status"] == "exists"
        assert c.get(f"/v1/transfers/{other['id']}").json()["pending_status"] == "voided"


def test_unknown_ids_are_404_problems(live: LiveServer) -> None:
    with live.client("read") as c:
        assert_problem(c.get(f"/v1/accounts/{uuid.uuid4()}"), 404, "account_not_found")
        assert_problem(c.get(f"/v1/transfers/{uuid.uuid4()}"), 404, "transfer_not_found")
        assert_problem(c.get("/v1/nothing-here"), 404, "not_found")


def test_read_models_not_enabled_answer_501(live: LiveServer) -> None:
    with live.client("read") as c:
        r = c.get(f"/v1/accounts/{uuid.uuid4()}/balance", params={"as_of": 1})
        assert_problem(r, 501, "read_model_not_available")
        assert_problem(
            c.get(f"/v1/accounts/{uuid.uuid4()}/entries"), 501, "read_model_not_available"
        )


# -- validation and limits ----------------------------------------------------------------


def test_schema_errors_say_where(live: LiveServer) -> None:
    with live.client() as c:
        bank, alice = open_pair(c)
        bad = [transfer(bank, alice, 1), transfer(bank, alice, -5)]
        body = assert_problem(
            c.post("/v1/transfers", json={"transfers": bad}), 422, "invalid_request"
        )
    assert body["errors"][0]["where"] == "transfers[1].amount_minor"
    assert body["detail"].startswith("at transfers[1].amount_minor")


def test_malformed_json_is_422_not_500(live: LiveServer) -> None:
    with live.client() as c:
        r = c.post(
            "/v1/transfers", content=b"{not json", headers={"content-type": "application/json"}
        )
    assert_problem(r, 422, "invalid_request")


def test_too_many_items_is_422(live: LiveServer) -> None:
    with live.client() as c:
        items = [{"id": str(uuid.uuid4())} for _ in range(8191)]
        # 8191 tiny items stay under the body limit of the test server only if small:
        r = c.post("/v1/accounts", json={"accounts": items[:8191]})
    assert r.status_code in (413, 422)
    assert r.headers["content-type"].startswith(PROBLEM)


def test_body_over_the_limit_is_413(live: LiveServer) -> None:
    with live.client() as c:
        r = c.post(
            "/v1/accounts",
            content=b"x" * (300 * 1024),
            headers={"content-type": "application/json"},
        )
    assert_problem(r, 413, "request_too_large")


# -- idempotency keys -----------------------------------------------------------------------


def test_idempotency_key_replays_the_stored_response(live: LiveServer) -> None:
    with live.client() as c:
        bank, alice = open_pair(c)
        body = {"transfers": [transfer(bank, alice, 10)]}
        first = c.post("/v1/transfers", json=body, headers={"Idempotency-Key": "k-1"})
        second = c.post("/v1/transfers", json=body, headers={"Idempotency-Key": "k-1"})
        assert first.json() == second.json()
        assert second.json()["results"][0]["status"] == "created"  # not "exists": replayed
        assert second.headers["idempotent-replayed"] == "true"
        other = c.post(
            "/v1/transfers",
            json={"transfers": [transfer(bank, alice, 11)]},
            headers={"Idempotency-Key": "k-1"},
        )
        assert_problem(other, 409, "idempotency_key_reused")
        assert c.get(f"/v1/accounts/{alice}").json()["balances"]["credits_posted"] == 10


# -- overload -----------------------------------------------------------------------------


@pytest.fixture
def tiny_queue(database_url: str, tmp_path: Path) -> Iterator[LiveServer]:
    yield from start_server(database_url, tmp_path / "wal", queue_size_max=2)


class CommitStall:
    """Hold the writer lease row FOR UPDATE: the node's next batch waits on it."""

    def __init__(self, url: str) -> None:
        self.conn = psycopg.connect(url.replace("+psycopg", ""))

    def __enter__(self) -> CommitStall:
        self.conn.execute("SELECT * FROM writer_leases FOR UPDATE")
        return self

    def __exit__(self, *exc: object) -> None:
        self.conn.rollback()
        self.conn.close()


def test_full_queue_answers_503_with_retry_after_and_keeps_the_accepted(
    tiny_queue: LiveServer,
) -> None:
    live = tiny_queue
    with live.client() as c:
        bank, alice = open_pair(c)
        results: list[httpx.Response] = []
        stall = CommitStall(live.database_url)
        with stall:
            blocked = threading.Thread(
                target=lambda: results.append(
                    c.post("/v1/transfers", json={"transfers": [transfer(bank, alice, 7)]})
                )
            )
            blocked.start()
            time.sleep(0.3)
            two = [transfer(bank, alice, 8), transfer(bank, alice, 9)]
            r = c.post("/v1/transfers", json={"transfers": two})
            body = assert_problem(r, 503, "overloaded")
            assert r.headers["retry-after"] == "1" and "queue full" in body["detail"]
        blocked.join(10)
        assert results[0].json()["results"][0]["status"] == "created"
        assert c.get(f"/v1/accounts/{alice}").json()["balances"]["credits_posted"] == 7
