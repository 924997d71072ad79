"""The worked examples against real ledger nodes: a transfer between two books on two
nodes (examples.cross_book) and an order across the ledger and the inventory service
(examples.order), committed, refused, and with a participant failing."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from examples.cross_book import Side, cross_book_transfer
from examples.order import order_saga, order_tcc
from ledger.devservices import free_port
from ledger.sagas.runtime import ManualClock
from tests.integration.sagas.conftest import (
    FAST,
    Inventory,
    LedgerNode,
    LiveCoordinator,
    start_coordinator,
)

FUNDS = 1_000


@dataclass
class Books:
    """Two ledger nodes with a customer and a settlement account on each side."""

    a: LedgerNode
    b: LedgerNode
    alice: str
    settlement_a: str
    settlement_b: str
    bob: str

    def source(self) -> Side:
        return Side(self.a.base_url, self.a.token, self.alice, self.settlement_a)

    def target(self) -> Side:
        return Side(self.b.base_url, self.b.token, self.settlement_b, self.bob)

    def net(self, node: LedgerNode, account: str) -> int:
        bal = node.balances(account)
        return bal["credits_posted"] - bal["debits_posted"]

    def check(self, moved: int) -> None:
        """Money conserved across books, nothing pending, no limit broken."""
        assert self.net(self.a, self.alice) == FUNDS - moved
        assert self.net(self.b, self.bob) == moved
        assert self.net(self.a, self.settlement_a) == moved  # credited in book A
        assert self.net(self.b, self.settlement_b) == -moved  # debited in book B
        for node, account in (
            (self.a, self.alice),
            (self.a, self.settlement_a),
            (self.b, self.settlement_b),
            (self.b, self.bob),
        ):
            bal = node.balances(account)
            assert bal["debits_pending"] == 0 and bal["credits_pending"] == 0, bal
        assert self.a.balances(self.alice)["available"] >= 0


def open_books(a: LedgerNode, b: LedgerNode) -> Books:
    funding = a.open_account(limited=False)
    alice = a.open_account()
    a.move(funding, alice, FUNDS)
    return Books(
        a,
        b,
        alice,
        a.open_account(limited=False, code=2),
        b.open_account(limited=False, code=2),
        b.open_account(),
    )


@pytest.fixture
def books(two_ledgers: tuple[LedgerNode, LedgerNode]) -> Books:
    return open_books(*two_ledgers)


def gid() -> str:
    return f"x-{uuid.uuid4().hex[:12]}"


def run(live: LiveCoordinator, path: str, body: dict[str, object]) -> dict[str, Any]:
    with live.client("write") as c:
        r = c.post(path, json=body, params={"wait": "true"})
    assert r.status_code == 201, r.text
    state: dict[str, Any] = r.json()
    return state


def batch_requests(live: LiveCoordinator) -> int:
    batcher = live.coordinator.rt.batcher
    assert batcher is not None
    return batcher.requests


@pytest.mark.parametrize("batched", [False, True], ids=["one-request-per-call", "batched"])
def test_cross_book_transfer_commits_on_both_nodes(
    live: LiveCoordinator, books: Books, batched: bool
) -> None:
    body = cross_book_transfer(gid(), books.source(), books.target(), 300, batched=batched)
    assert run(live, "/v1/tcc", body)["status"] == "committed"
    body = cross_book_transfer(gid(), books.source(), books.target(), 200, batched=batched)
    assert run(live, "/v1/tcc", body)["status"] == "committed"
    books.check(moved=500)
    # two transactions, one after the other: a try and a confirm request per node each
    assert batch_requests(live) == (8 if batched else 0)


@pytest.mark.parametrize("batched", [False, True], ids=["one-request-per-call", "batched"])
def test_cross_book_transfer_beyond_the_balance_is_cancelled_on_both_nodes(
    live: LiveCoordinator, books: Books, batched: bool
) -> None:
    body = cross_book_transfer(gid(), books.source(), books.target(), FUNDS + 1, batched=batched)
    state = run(live, "/v1/tcc", body)
    assert state["status"] == "cancelled"
    assert "exceeds_credits" in str(state["decision_reason"])
    books.check(moved=0)


def test_many_batched_cross_book_transfers_share_requests(
    live: LiveCoordinator, books: Books
) -> None:
    """25 transactions at once, 5 of them beyond the balance: the calls to each node
    share requests, and every transaction gets its own outcome."""
    amounts = [10] * 20 + [FUNDS + 1] * 5

    async def start_all() -> list[dict[str, Any]]:
        headers = {"Authorization": f"Bearer {live.tokens['write']}"}
        async with httpx.AsyncClient(base_url=live.base_url, headers=headers, timeout=60) as c:
            bodies = [
                cross_book_transfer(gid(), books.source(), books.target(), amount, batched=True)
                for amount in amounts
            ]
            answers = await asyncio.gather(
                *(c.post("/v1/tcc", json=b, params={"wait": "true"}) for b in bodies)
            )
        return [r.json() for r in answers]

    states = asyncio.run(start_all())
    assert [s["status"] for s in states] == ["committed"] * 20 + ["cancelled"] * 5
    books.check(moved=200)
    # 25 transactions, 2 nodes, 2 calls each: 100 calls; shared, far fewer requests
    assert batch_requests(live) < 50


def test_cross_book_transfer_to_an_unreachable_node_is_cancelled_at_the_timeout(
    live: LiveCoordinator, books: Books
) -> None:
    dead = dataclasses.replace(books.target(), base_url=f"http://127.0.0.1:{free_port()}")
    body = cross_book_transfer(gid(), books.source(), dead, 100, timeout_s=0.5)
    with live.client("write") as c:
        c.post("/v1/tcc", json=body)
    deadline_state = wait_status(live, body["gid"], "cancelling")
    assert deadline_state["branches"][0]["cancel"]["result"] == "success"
    books.check(moved=0)  # the hold in book A was released
    with live.client("admin") as c:
        c.post(f"/v1/transactions/{body['gid']}/force-stop", json={"reason": "node B gone"})


def wait_status(live: LiveCoordinator, g: str, status: str) -> dict[str, Any]:
    import time

    deadline = time.monotonic() + 10
    with live.client("read") as c:
        while True:
            state: dict[str, Any] = c.get(f"/v1/transactions/{g}").json()
            cancel = state["branches"][0].get("cancel", {})
            if state["status"] == status and cancel.get("result") == "success":
                return state
            assert time.monotonic() < deadline, state
            time.sleep(0.02)


# -- the order ------------------------------------------------------------------------------------


@dataclass
class Shop:
    """A customer and a merchant in one ledger book, and the inventory service."""

    ledger: LedgerNode
    inventory: Inventory
    customer: str
    merchant: str

    def order(self, kind: str, quantity: int, amount_minor: int = 100) -> dict[str, object]:
        common = {
            "ledger_url": self.ledger.base_url,
            "ledger_token": self.ledger.token,
            "customer": self.customer,
            "merchant": self.merchant,
            "amount_minor": amount_minor,
            "inventory_url": self.inventory.base_url,
            "sku": "apple",
            "quantity": quantity,
        }
        if kind == "tcc":
            return order_tcc(gid(), **common)  # type: ignore[arg-type]
        return order_saga(gid(), **common)  # type: ignore[arg-type]

    def check(self, paid: int, taken: int) -> None:
        customer = self.ledger.balances(self.customer)
        merchant = self.ledger.balances(self.merchant)
        assert customer["credits_posted"] - customer["debits_posted"] == FUNDS - paid
        assert merchant["credits_posted"] - merchant["debits_posted"] == paid
        assert customer["debits_pending"] == 0 and merchant["credits_pending"] == 0
        assert customer["available"] >= 0
        stock = self.inventory.stock("apple")
        assert stock == {
            "sku": "apple",
            "on_hand": 10 - taken,
            "reserved": 0,
            "available": 10 - taken,
        }


@pytest.fixture
def shop(two_ledgers: tuple[LedgerNode, LedgerNode], inventory: Inventory) -> Iterator[Shop]:
    node = two_ledgers[0]
    funding = node.open_account(limited=False)
    customer = node.open_account()
    node.move(funding, customer, FUNDS)
    inventory.set_stock("apple", 10)
    yield Shop(node, inventory, customer, node.open_account())


@pytest.mark.parametrize("kind", ["tcc", "saga"])
def test_an_order_pays_and_takes_stock(live: LiveCoordinator, shop: Shop, kind: str) -> None:
    path = "/v1/tcc" if kind == "tcc" else "/v1/sagas"
    assert run(live, path, shop.order(kind, 4))["status"] == "committed"
    shop.check(paid=100, taken=4)


@pytest.mark.parametrize("kind", ["tcc", "saga"])
def test_an_order_with_short_stock_releases_the_funds(
    live: LiveCoordinator, shop: Shop, kind: str
) -> None:
    path = "/v1/tcc" if kind == "tcc" else "/v1/sagas"
    state = run(live, path, shop.order(kind, 11))
    assert state["status"] == ("cancelled" if kind == "tcc" else "compensated")
    assert "insufficient_stock" in str(state["decision_reason"])
    shop.check(paid=0, taken=0)


def test_an_order_whose_inventory_keeps_failing_is_cancelled(
    database_url: str, tmp_path: Path, shop: Shop
) -> None:
    shop.inventory.gated.fail("/v1/tcc/reserve/try", 1000)
    body = {**shop.order("tcc", 2), "timeout_s": 0.5}
    with start_coordinator(database_url, tmp_path / "c-wal", runtime=FAST) as live:
        state = run(live, "/v1/tcc", body)
    assert state["status"] == "cancelled"
    assert state["decision_reason"] == "timed out before every try succeeded"
    assert state["branches"][1]["try"]["attempts"] >= 2
    shop.check(paid=0, taken=0)


def test_reordered_deliveries_on_the_ledger_nodes_leave_the_books_right(
    database_url: str, tmp_path: Path, books: Books
) -> None:
    """Book B's try is held in the network past the deadline; the coordinator cancels
    (B's first cancel answer is lost, so B sees two cancels before the try); the late try
    is refused. Then a transfer whose first confirm answer is lost: the repeated confirm
    posts nothing twice."""
    held = books.b.gated.hold("/try")
    books.b.gated.lose_answer("/cancel")
    clock = ManualClock()
    with start_coordinator(database_url, tmp_path / "c-wal", clock=clock) as live:
        body = cross_book_transfer(gid(), books.source(), books.target(), 300, timeout_s=5)
        with live.client("write") as c:
            c.post("/v1/tcc", json=body)
        books.b.gated.wait_arrived("/try")
        clock.advance(6)
        state = live.wait_finished(body["gid"], clock=clock)
        assert state["status"] == "cancelled"
        assert state["branches"][1]["cancel"]["attempts"] == 2
        held.set()
        wait_until(lambda: any(p.endswith("/try") for p, _ in books.b.gated.answers))
        assert [s for p, s in books.b.gated.answers if p.endswith("/try")] == [409]
        books.check(moved=0)
        del books.b.gated.holds["/try"]
        books.b.gated.lose_answer("/confirm")
        body = cross_book_transfer(gid(), books.source(), books.target(), 300)
        with live.client("write") as c:
            c.post("/v1/tcc", json=body)
        state = live.wait_finished(body["gid"], clock=clock)
        assert state["status"] == "committed"
        assert state["branches"][1]["confirm"]["attempts"] == 2
    books.check(moved=300)


def wait_until(predicate: Callable[[], bool], timeout_s: float = 10) -> None:
    import time

    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline
        time.sleep(0.01)
