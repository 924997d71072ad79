"""The ledger as a TCC participant, over HTTP, with every anomaly forced in order."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.api.conftest import LiveServer, start_server


@pytest.fixture
def tcc(database_url: str, tmp_path: Path) -> Iterator[LiveServer]:
    yield from start_server(database_url, tmp_path / "wal", pending_expiry_interval_ms=50)


def setup_accounts(c: httpx.Client) -> tuple[str, str]:
    payer: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "ledger": "USD",
        "code": 1,
        "flags": {"debits_must_not_exceed_credits": True},
    }
    bank: dict[str, Any] = {"id": str(uuid.uuid4()), "ledger": "USD", "code": 1}
    c.post("/v1/accounts", json={"accounts": [payer, bank]}).raise_for_status()
    fund = {
        "id": str(uuid.uuid4()),
        "debit_account_id": bank["id"],
        "credit_account_id": payer["id"],
        "amount_minor": 1000,
        "ledger": "USD",
        "code": 1,
    }
    c.post("/v1/transfers", json={"transfers": [fund]}).raise_for_status()
    return payer["id"], bank["id"]


def op(c: httpx.Client, gid: str, branch: str, name: str, body: Any = None) -> httpx.Response:
    return c.post(f"/v1/tcc/{gid}/{branch}/{name}", json=body)


def hold_body(payer: str, bank: str, amount: int = 300, timeout_s: int = 60) -> dict[str, Any]:
    return {
        "debit_account_id": payer,
        "credit_account_id": bank,
        "amount_minor": amount,
        "ledger": "USD",
        "timeout_s": timeout_s,
    }


def balances(c: httpx.Client, account: str) -> dict[str, int]:
    b: dict[str, int] = c.get(f"/v1/accounts/{account}").json()["balances"]
    return b


def test_try_confirm_and_their_repeats(tcc: LiveServer) -> None:
    with tcc.client("write") as c:
        payer, bank = setup_accounts(c)
        first = op(c, "g1", "b1", "try", hold_body(payer, bank))
        assert first.status_code == 200 and first.json()["result"] == "success"
        assert op(c, "g1", "b1", "try", hold_body(payer, bank)).json()["result"] == "success"
        assert balances(c, payer)["debits_pending"] == 300
        assert op(c, "g1", "b1", "confirm").json()["result"] == "success"
        assert op(c, "g1", "b1", "confirm").json()["result"] == "success"  # duplicate confirm
        assert balances(c, payer)["debits_posted"] == 300
        late_cancel = op(c, "g1", "b1", "cancel")
        assert late_cancel.status_code == 409
        assert late_cancel.json()["code"] == "pending_transfer_already_posted"


def test_cancel_before_try_then_late_try_is_refused(tcc: LiveServer) -> None:
    with tcc.client("write") as c:
        payer, bank = setup_accounts(c)
        assert op(c, "g2", "b1", "cancel").json()["result"] == "success"
        assert op(c, "g2", "b1", "cancel").json()["result"] == "success"  # two cancels
        late = op(c, "g2", "b1", "try", hold_body(payer, bank))
        assert late.status_code == 409 and late.json()["code"] == "id_already_cancelled"
        assert balances(c, payer)["debits_pending"] == 0  # no hanging hold


def test_confirm_after_cancel_is_refused(tcc: LiveServer) -> None:
    with tcc.client("write") as c:
        payer, bank = setup_accounts(c)
        op(c, "g3", "b1", "try", hold_body(payer, bank))
        assert op(c, "g3", "b1", "cancel").json()["result"] == "success"
        confirm = op(c, "g3", "b1", "confirm")
        assert confirm.status_code == 409
        assert confirm.json()["code"] == "pending_transfer_already_voided"
        assert balances(c, payer) == {
            "debits_pending": 0,
            "debits_posted": 0,
            "credits_pending": 0,
            "credits_posted": 1000,
            "available": 1000,
        }


def test_try_after_timeout_finds_the_hold_expired(tcc: LiveServer) -> None:
    with tcc.client("write") as c:
        payer, bank = setup_accounts(c)
        op(c, "g4", "b1", "try", hold_body(payer, bank, timeout_s=1))
        deadline = time.monotonic() + 10
        while balances(c, payer)["debits_pending"]:
            assert time.monotonic() < deadline, "the hold did not expire"
            time.sleep(0.1)
        confirm = op(c, "g4", "b1", "confirm")
        assert confirm.status_code == 409 and confirm.json()["code"] == "pending_transfer_expired"
        assert op(c, "g4", "b1", "cancel").json()["result"] == "success"
        again = op(c, "g4", "b1", "try", hold_body(payer, bank, timeout_s=1))
        assert again.json()["result"] == "success"  # the same try: exists, still expired
        assert balances(c, payer)["debits_pending"] == 0


def test_try_refused_by_a_ledger_rule_is_a_final_failure(tcc: LiveServer) -> None:
    with tcc.client("write") as c:
        payer, bank = setup_accounts(c)
        r = op(c, "g5", "b1", "try", hold_body(payer, bank, amount=5000))
        assert r.status_code == 409
        assert r.json() == {
            "result": "failure",
            "code": "exceeds_credits",
            "detail": r.json()["detail"],
        }


def test_tcc_needs_a_write_key(tcc: LiveServer) -> None:
    with tcc.client("read") as c:
        assert op(c, "g6", "b1", "cancel").status_code == 403


# -- POST /v1/tcc/batch: many calls at once, each answered as it would be alone --------------


def batch(c: httpx.Client, *calls: dict[str, Any]) -> list[dict[str, Any]]:
    r = c.post("/v1/tcc/batch", json={"calls": list(calls)})
    assert r.status_code == 200, r.text
    results: list[dict[str, Any]] = r.json()["results"]
    assert len(results) == len(calls)
    return results


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _ids_out(body: dict[str, Any]) -> dict[str, Any]:
    """The body with its transfer ids (derived from the gid) replaced by a mark."""
    return {k: _UUID.sub("<id>", v) if isinstance(v, str) else v for k, v in body.items()}


def call(gid: str, branch: str, name: str, payload: Any = None) -> dict[str, Any]:
    return {"gid": gid, "branch_id": branch, "op": name, "payload": payload}


def test_a_batch_answers_each_call_as_a_single_call_would(tcc: LiveServer) -> None:
    with tcc.client("write") as c:
        # the same sequence once alone and once batched (other gids and accounts)
        other, other_bank = setup_accounts(c)
        alone = [
            op(c, "s1", "b", "try", hold_body(other, other_bank, amount=100)),
            op(c, "s2", "b", "cancel"),
            op(c, "s2", "b", "try", hold_body(other, other_bank, amount=100)),
            op(c, "s3", "b", "try", hold_body(other, other_bank, amount=5000)),
        ]
        payer, bank = setup_accounts(c)
        hold = hold_body(payer, bank, amount=100)
        batched = batch(
            c,
            call("t1", "b", "try", hold),
            call("t2", "b", "cancel"),  # before its try: empty cancellation
            call("t2", "b", "try", hold),  # the late try in the same batch: refused
            call("t3", "b", "try", hold_body(payer, bank, amount=5000)),  # exceeds credits
        )
        for single, item in zip(alone, batched, strict=True):
            assert (item["status"], _ids_out(item["body"])) == (
                single.status_code,
                _ids_out(single.json()),
            )
        assert [i["status"] for i in batched] == [200, 200, 409, 409]
        assert batched[2]["body"]["code"] == "id_already_cancelled"
        assert batched[3]["body"]["code"] == "exceeds_credits"
        assert balances(c, payer)["debits_pending"] == 100
        assert balances(c, other)["debits_pending"] == 100
        # confirm and cancel in one batch, each repeated: idempotent, in order
        done = batch(
            c,
            call("t1", "b", "confirm"),
            call("t1", "b", "confirm"),
            call("s1", "b", "cancel"),
            call("s1", "b", "cancel"),
            call("t1", "b", "cancel"),  # after its confirm: refused
        )
        assert [i["status"] for i in done] == [200, 200, 200, 200, 409]
        assert done[4]["body"]["code"] == "pending_transfer_already_posted"
        assert done[0]["body"]["transfer_id"] == done[1]["body"]["transfer_id"]
        assert balances(c, payer) == {
            "debits_pending": 0,
            "debits_posted": 100,
            "credits_pending": 0,
            "credits_posted": 1000,
            "available": 900,
        }
        assert balances(c, other)["debits_pending"] == 0


def test_a_bad_call_is_answered_in_its_place_and_the_others_go_ahead(tcc: LiveServer) -> None:
    with tcc.client("write") as c:
        payer, bank = setup_accounts(c)
        results = batch(
            c,
            call("v1", "b", "try", {**hold_body(payer, bank), "amount_minor": -1}),
            call("v2", "b", "try", hold_body(payer, bank, amount=10)),
            call("v 3", "b", "confirm"),
            {"gid": "v4", "branch_id": "b", "op": "post"},
            call("v5", "b", "try"),  # a try needs its hold
        )
        assert [i["status"] for i in results] == [422, 200, 422, 422, 422]
        wheres = [[e["where"] for e in i["body"].get("errors", [])] for i in results]
        assert wheres[0] == ["calls[0].payload.amount_minor"]
        assert wheres[2] == ["calls[2].gid"]
        assert wheres[3] == ["calls[3].op"]
        assert results[0]["body"]["code"] == "invalid_request"
        assert "calls[0].payload.amount_minor" in results[0]["body"]["detail"]
        assert results[1]["body"]["result"] == "success"
        assert balances(c, payer)["debits_pending"] == 10  # only the valid hold


def test_batch_limits_and_auth(tcc: LiveServer) -> None:
    from ledger.api.tcc import TCC_BATCH_CALLS_MAX

    with tcc.client("read") as c:
        assert (
            c.post("/v1/tcc/batch", json={"calls": [call("a", "b", "cancel")]}).status_code == 403
        )
    with httpx.Client(base_url=tcc.base_url) as anonymous:
        r = anonymous.post("/v1/tcc/batch", json={"calls": [call("a", "b", "cancel")]})
        assert r.status_code == 401
    with tcc.client("write") as c:
        empty = c.post("/v1/tcc/batch", json={"calls": []})
        assert empty.status_code == 422 and empty.json()["errors"][0]["where"] == "calls"
        too_many = {"calls": [call(f"g{i}", "b", "cancel") for i in range(TCC_BATCH_CALLS_MAX + 1)]}
        r = c.post("/v1/tcc/batch", json=too_many)
        assert r.status_code in (413, 422), r.text
        assert r.headers["content-type"] == "application/problem+json"
        assert c.post("/v1/tcc/batch", json={"calls": [], "x": 1}).status_code == 422
