"""The ledger as a TCC participant, over HTTP, with every anomaly forced in order."""

from __future__ import annotations

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
