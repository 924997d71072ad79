"""SIGKILL the coordinator process while it runs the worked examples against real ledger
nodes (and the inventory service); restart it; then every transaction is final, money is
conserved across both books, no limited account is below zero, and nothing is pending.

Phases are reached with gates on the participants (the coordinator is known to be mid-call
when it is killed) or with crash points (it kills itself right after an event is durable).
Every participant loses its first answer to each kind of call (a 500 after the work was
done), so retries and their step boundaries are part of every run.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from examples.cross_book import cross_book_transfer
from tests.integration.sagas.conftest import Inventory, LedgerNode, create_keys
from tests.integration.sagas.processes import CoordinatorProcess
from tests.integration.sagas.test_kill import SAGA_POINTS, TCC_POINTS, applies, crashed_or_finished
from tests.integration.sagas.test_worked_examples import FUNDS, Books, Shop, open_books


@pytest.fixture
def coordinator(database_url: str, tmp_path: Path) -> Iterator[CoordinatorProcess]:
    (tmp_path / "coordinator-wal").mkdir()
    proc = CoordinatorProcess(
        database_url, tmp_path / "coordinator-wal", create_keys(database_url)["admin"]
    )
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def books(two_ledgers: tuple[LedgerNode, LedgerNode]) -> Books:
    return open_books(*two_ledgers)


def gid() -> str:
    return f"kx-{uuid.uuid4().hex[:12]}"


def wait_for(predicate: Callable[[], bool], timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


# -- the four phases of a cross-book transfer ---------------------------------------------------


def test_killed_during_try_the_holds_expire_and_the_restart_cancels(
    coordinator: CoordinatorProcess, books: Books
) -> None:
    """Down longer than both timeouts: the ledger expires the hold it placed by itself
    (no pending transfer outlives its timeout, coordinator or not); the restarted
    coordinator cancels at once; the try held in the network arrives last and is refused."""
    gate = books.b.gated.hold("/try")
    coordinator.start()
    body = cross_book_transfer(gid(), books.source(), books.target(), 300, timeout_s=1)
    body["branches"][0]["payload"]["timeout_s"] = 1  # the ledger's own expiry of the hold
    coordinator.post("/v1/tcc", body)
    books.b.gated.wait_arrived("/try")
    wait_for(lambda: books.a.balances(books.alice)["debits_pending"] == 300)
    coordinator.kill()
    wait_for(lambda: books.a.balances(books.alice)["debits_pending"] == 0, 5)
    coordinator.start()
    assert coordinator.wait_finished(body["gid"], 5)["status"] == "cancelled"
    gate.set()
    wait_for(lambda: any(p.endswith("/try") for p, _ in books.b.gated.answers))
    assert [s for p, s in books.b.gated.answers if p.endswith("/try")] == [409]
    books.check(moved=0)


def test_killed_between_try_and_confirm_commits_both_books(
    coordinator: CoordinatorProcess, books: Books
) -> None:
    coordinator.start("TransactionDecided")
    body = cross_book_transfer(gid(), books.source(), books.target(), 300)
    coordinator.post("/v1/tcc", body)
    coordinator.wait_dead()
    assert books.a.balances(books.alice)["debits_pending"] == 300
    coordinator.start()
    assert coordinator.wait_finished(body["gid"])["status"] == "committed"
    books.check(moved=300)


@pytest.mark.parametrize("op", ["confirm", "cancel"])
def test_killed_during_confirm_or_cancel_finishes_both_books(
    coordinator: CoordinatorProcess, books: Books, op: str
) -> None:
    gate = books.b.gated.hold(f"/{op}")
    coordinator.start()
    amount = 300 if op == "confirm" else FUNDS + 1
    body = cross_book_transfer(gid(), books.source(), books.target(), amount)
    coordinator.post("/v1/tcc", body)
    books.b.gated.wait_arrived(f"/{op}")
    coordinator.kill()
    coordinator.start()
    time.sleep(0.1)
    gate.set()
    state = coordinator.wait_finished(body["gid"])
    assert state["status"] == ("committed" if op == "confirm" else "cancelled")
    books.check(moved=300 if op == "confirm" else 0)


# -- the crash-point matrix over both examples -----------------------------------------------------


@dataclass
class Scenario:
    """One run of a worked example: how to start it and what must hold after it."""

    path: str
    body: dict[str, Any]
    check: Callable[[], None]


def lose_first_answers(*nodes: LedgerNode | Inventory) -> None:
    for node in nodes:
        for suffix in ("/try", "/confirm", "/cancel", "/action", "/compensate"):
            node.gated.lose_answer(suffix)


def cross_book(books: Books, outcome: str, batched: bool = False) -> Scenario:
    """``batched``: the calls go to the nodes' ``/v1/tcc/batch`` (no answer is lost
    there: the gates watch the single-call paths)."""
    amount = 300 if outcome == "committed" else FUNDS + 1
    body = cross_book_transfer(gid(), books.source(), books.target(), amount, batched=batched)
    lose_first_answers(books.a, books.b)
    return Scenario("/v1/tcc", body, lambda: books.check(300 if outcome == "committed" else 0))


def order(shop: Shop, kind: str, outcome: str) -> Scenario:
    quantity = 4 if outcome == "committed" else 11
    body = shop.order(kind, quantity)
    lose_first_answers(shop.ledger, shop.inventory)
    paid, taken = (100, 4) if outcome == "committed" else (0, 0)
    return Scenario(
        "/v1/tcc" if kind == "tcc" else "/v1/sagas", body, lambda: shop.check(paid, taken)
    )


def case(example: str, outcome: str, point: str) -> Any:
    return pytest.param(example, outcome, point, id=f"{example}-{outcome}-{point}")


EXAMPLE_CASES = (
    [
        case("cross_book", o, p)
        for o in ("committed", "cancelled")
        for p in TCC_POINTS
        if applies(p, o)
    ]
    + [
        case("cross_book_batched", o, p)
        for o in ("committed", "cancelled")
        for p in TCC_POINTS
        if applies(p, o) and "@" not in p  # no lost answers there: no third attempts
    ]
    + [
        case("order_tcc", o, p)
        for o in ("committed", "cancelled")
        for p in TCC_POINTS
        if applies(p, o)
    ]
    + [
        case("order_saga", o, p)
        for o in ("committed", "compensated")
        for p in SAGA_POINTS
        if not (o == "committed" and ("compensate" in p or "Decided" in p))
    ]
)
RACY = {"CallStarted:try@3"}


@pytest.mark.parametrize(("example", "outcome", "point"), EXAMPLE_CASES)
def test_crash_point_matrix_over_the_worked_examples(
    coordinator: CoordinatorProcess,
    two_ledgers: tuple[LedgerNode, LedgerNode],
    inventory: Inventory,
    example: str,
    outcome: str,
    point: str,
) -> None:
    if example.startswith("cross_book"):
        scenario = cross_book(open_books(*two_ledgers), outcome, example.endswith("batched"))
    else:
        node = two_ledgers[0]
        funding, customer = node.open_account(limited=False), node.open_account()
        node.move(funding, customer, FUNDS)
        inventory.set_stock("apple", 10)
        shop = Shop(node, inventory, customer, node.open_account())
        scenario = order(shop, example.removeprefix("order_"), outcome)
    coordinator.start(point)
    coordinator.post(scenario.path, scenario.body)
    crashed = crashed_or_finished(coordinator, scenario.body["gid"])
    assert crashed or point in RACY, f"crash point {point} was never reached"
    coordinator.start()
    assert coordinator.wait_finished(scenario.body["gid"])["status"] == outcome
    scenario.check()
