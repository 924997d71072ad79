"""Balance as of a time and account entries over HTTP, served by the read models.

The read models are filled by ``projections.rebuild`` from the event store (the same
code path as ``ledger projections rebuild``), so no broker is needed here; the Kafka path
is covered by tests/integration/projections.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from projections.rebuild import rebuild
from tests.integration.api.conftest import LiveServer, start_server
from tests.integration.api.test_api import assert_problem, open_pair, transfer


@pytest.fixture
def live_with_read_models(database_url: str, tmp_path: Path) -> Iterator[LiveServer]:
    yield from start_server(database_url, tmp_path / "wal", read_models=True)


def test_balance_as_of_and_entries(live_with_read_models: LiveServer) -> None:
    live = live_with_read_models
    with live.client() as c:
        bank, alice = open_pair(c)
        c.post("/v1/transfers", json={"transfers": [transfer(bank, alice, 100)]})
        time.sleep(0.01)
        between_us = time.time_ns() // 1000
        time.sleep(0.01)
        c.post("/v1/transfers", json={"transfers": [transfer(bank, alice, 50)]})
        for name in ("balances", "entries"):
            rebuild(live.database_url, name)
        then = c.get(f"/v1/accounts/{alice}/balance", params={"as_of": between_us}).json()
        now = c.get(f"/v1/accounts/{alice}/balance").json()
        assert then["credits_posted"] == 100 and now["credits_posted"] == 150
        entries = c.get(f"/v1/accounts/{alice}/entries").json()
        assert [e["amount_minor"] for e in entries] == [100, 50]
        assert [e["credits_posted"] for e in entries] == [100, 150]
        assert {e["side"] for e in entries} == {"credit"}
        page = c.get(
            f"/v1/accounts/{alice}/entries", params={"after_position": entries[0]["position"]}
        ).json()
        assert [e["amount_minor"] for e in page] == [50]
        before = c.get(f"/v1/accounts/{alice}/balance", params={"as_of": 1})
        assert_problem(before, 404, "account_not_found")
        unknown = c.get(f"/v1/accounts/{uuid.uuid4()}/entries").json()
        assert unknown == []
        metrics = c.get("/metrics").text
    assert "ledger_projection_lag_events" in metrics
