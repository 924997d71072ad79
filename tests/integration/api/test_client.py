"""The Python clients against a live server, including retries after an overload."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ledger.client import (
    ApiError,
    AsyncLedgerClient,
    CommandRejectedError,
    LedgerClient,
    transfer_body,
)
from tests.integration.api.conftest import LiveServer, start_server
from tests.integration.api.test_api import CommitStall


class CountingTransport(httpx.HTTPTransport):
    """Counts requests per path, to see the client's retries."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: dict[str, int] = {}

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.calls[request.url.path] = self.calls.get(request.url.path, 0) + 1
        return super().handle_request(request)


def test_sync_client_moves_money_and_reads_it_back(live: LiveServer) -> None:
    with LedgerClient(live.base_url, live.tokens["write"]) as client:
        bank = client.open_account("USD").id
        alice = client.open_account("USD", debits_must_not_exceed_credits=True).id
        assert bank and alice
        done = client.transfer(bank, alice, 1_000, "USD")
        assert done.status == "created"
        hold = client.transfer(alice, bank, 300, "USD", pending=True, timeout_s=60)
        assert hold.id is not None
        assert client.get_account(alice).balances.available == 700
        assert client.post_pending(hold.id, 100).status == "created"
        account = client.get_account(alice)
        assert (account.balances.debits_posted, account.balances.debits_pending) == (100, 0)
        assert client.get_transfer(hold.id).pending_status == "posted"


def test_rejections_raise_with_their_code(live: LiveServer) -> None:
    with LedgerClient(live.base_url, live.tokens["write"]) as client:
        bank = client.open_account("USD").id
        alice = client.open_account("USD", debits_must_not_exceed_credits=True).id
        assert bank and alice
        with pytest.raises(CommandRejectedError) as info:
            client.transfer(alice, bank, 5, "USD")
        assert info.value.code == "exceeds_credits"


def test_auth_errors_are_not_retried(live: LiveServer) -> None:
    transport = CountingTransport()
    with (
        LedgerClient(live.base_url, "elk_nope_nope", transport=transport) as client,
        pytest.raises(ApiError) as info,
    ):
        client.open_account("USD")
    assert info.value.code == "invalid_api_key" and info.value.status == 401
    assert transport.calls["/v1/accounts"] == 1


@pytest.fixture
def tiny_queue(database_url: str, tmp_path: Path) -> Iterator[LiveServer]:
    yield from start_server(database_url, tmp_path / "wal", queue_size_max=2)


def test_client_retries_an_overload_with_the_same_ids(tiny_queue: LiveServer) -> None:
    live = tiny_queue
    transport = CountingTransport()
    with LedgerClient(
        live.base_url,
        live.tokens["write"],
        transport=transport,
        attempts_max=50,
        backoff_s=0.02,
        backoff_max_s=0.2,
    ) as client:
        bank = client.open_account("USD").id
        alice = client.open_account("USD").id
        assert bank and alice
        stall = CommitStall(live.database_url)
        stall.__enter__()
        blocker = threading.Thread(target=lambda: client.transfer(bank, alice, 1, "USD"))
        blocker.start()
        time.sleep(0.3)  # the blocker's command now fills the queue
        threading.Timer(1.0, stall.__exit__, args=(None, None, None)).start()
        two = [transfer_body(bank, alice, 10, "USD"), transfer_body(bank, alice, 20, "USD")]
        results = client.create_transfers(two)
        blocker.join(10)
        assert [r.status for r in results] == ["created", "created"]
        assert transport.calls["/v1/transfers"] >= 3  # blocker + at least one 503 + success
        assert client.get_account(alice).balances.credits_posted == 31


def test_async_client_round_trip(live: LiveServer) -> None:
    async def scenario() -> None:
        async with AsyncLedgerClient(live.base_url, live.tokens["write"]) as client:
            [a, b] = await client.open_accounts(
                [{"ledger": "EUR", "code": 1}, {"ledger": "EUR", "code": 1}]
            )
            assert a.id and b.id
            results = await asyncio.gather(
                *(client.transfer(a.id, b.id, 5, "EUR") for _ in range(20))
            )
            assert {r.status for r in results} == {"created"}
            assert (await client.get_account(b.id)).balances.credits_posted == 100
            with pytest.raises(CommandRejectedError, match="accounts_must_be_different"):
                await client.transfer(a.id, a.id, 5, "EUR", id=uuid.uuid4())

    asyncio.run(scenario())
