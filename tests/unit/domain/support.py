"""A small book driver for domain tests: runs commands through ``decide_batch`` the way
the node does, keeps the event log, and checks after every call that a rejection changed
nothing and that replaying the log reproduces the state."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

from ledger.domain import (
    AccountFlags,
    BookState,
    Command,
    CommandOutcome,
    CommandRejected,
    CreateTransfer,
    Event,
    OpenAccount,
    RejectionCode,
    TransferFlags,
    decide,
    decide_batch,
    evolve,
)

NOW_US = 1_700_000_000_000_000
"""A batch time (2023-11-14): every test book starts here."""

PENDING = TransferFlags(pending=True)
POST = TransferFlags(post_pending_transfer=True)
VOID = TransferFlags(void_pending_transfer=True)
LINKED = TransferFlags(linked=True)
NO_LIMITS = AccountFlags()
NO_OVERDRAFT = AccountFlags(debits_must_not_exceed_credits=True)
NO_NEGATIVE_LIABILITY = AccountFlags(credits_must_not_exceed_debits=True)


def uid(number: int) -> UUID:
    """A readable id: ``uid(7)`` is ``00000000-0000-0000-0000-000000000007``."""
    return UUID(int=number)


def replay(events: Sequence[Event]) -> BookState:
    state = BookState()
    for event in events:
        evolve(state, event)
    return state


class Book:
    """One book at a controllable time, with its event log."""

    def __init__(self) -> None:
        self.state = BookState()
        self.now_us = NOW_US
        self.log: list[Event] = []
        self._next_id = 1_000

    def new_id(self) -> UUID:
        self._next_id += 1
        return uid(self._next_id)

    def run(self, *commands: Command, now_us: int | None = None) -> list[CommandOutcome]:
        before = self.state.copy()
        outcomes = decide_batch(
            self.state, list(commands), self.now_us if now_us is None else now_us
        )
        assert len(outcomes) == len(commands)
        for outcome in outcomes:
            self.log.extend(outcome.events)
        if all(o.status != "created" for o in outcomes):
            assert self.state == before, "a batch with nothing created changed the state"
        assert replay(self.log) == self.state, "replaying the log does not give the state"
        return outcomes

    def ok(self, command: Command, now_us: int | None = None) -> tuple[Event, ...]:
        """Run one command that must be accepted; return its events."""
        (outcome,) = self.run(command, now_us=now_us)
        assert outcome.status == "created", outcome
        return outcome.events

    def reject(self, command: Command, now_us: int | None = None) -> tuple[RejectionCode, str]:
        """Run one command that must be rejected; check ``decide`` agrees; return
        (code, detail)."""
        at = self.now_us if now_us is None else now_us
        try:
            decide(self.state, command, at)
        except CommandRejected as rejection:
            pure = rejection.code
        else:
            raise AssertionError(f"decide accepted {command}")
        (outcome,) = self.run(command, now_us=now_us)
        assert outcome.status == "rejected", outcome
        assert outcome.code == pure, (outcome.code, pure)
        assert outcome.code is not None and outcome.detail is not None
        assert outcome.events == () and outcome.record is None
        return outcome.code, outcome.detail

    def code_of(self, command: Command, now_us: int | None = None) -> RejectionCode:
        return self.reject(command, now_us=now_us)[0]

    def open(
        self,
        ledger: str = "USD",
        flags: AccountFlags = NO_LIMITS,
        **fields: Any,
    ) -> UUID:
        account_id = self.new_id()
        self.ok(OpenAccount(account_id, ledger, fields.pop("code", 10), flags, **fields))
        return account_id

    def transfer(
        self, debit: UUID, credit: UUID, amount: int, ledger: str = "USD", **fields: Any
    ) -> UUID:
        transfer_id = self.new_id()
        self.ok(
            CreateTransfer(
                transfer_id, debit, credit, amount, ledger, fields.pop("code", 1), **fields
            )
        )
        return transfer_id

    def hold(self, debit: UUID, credit: UUID, amount: int, timeout_s: int = 0) -> UUID:
        """Create a pending transfer; return its id."""
        return self.transfer(debit, credit, amount, flags=PENDING, timeout_s=timeout_s)

    def balances(self, account_id: UUID) -> tuple[int, int, int, int]:
        return tuple(self.state.accounts[account_id].balances())  # type: ignore[return-value]
