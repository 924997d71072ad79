"""Stateful property test: the ledger against a simple reference model.

Goal: whatever sequence of batches clients send — accounts, transfers, holds posted,
voided or expired, linked chains, duplicate ids, and input that is invalid on purpose —
the ledger agrees with ``reference_model`` on every outcome, code and balance, and these
hold after every step:

* per ledger code, Σ debits_posted = Σ credits_posted and Σ debits_pending = Σ
  credits_pending (double entry);
* no account breaks its balance-limit flag;
* replaying every event from an empty state reproduces the state (and every event
  survives its data round trip);
* resubmitting any earlier accepted command changes nothing.

Method: Hypothesis drives a RuleBasedStateMachine; ids are drawn from small pools so that
collisions (duplicates, unknown ids, nil ids) happen often.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace
from typing import Any
from uuid import UUID

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import event as hypothesis_event
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from ledger.domain import (
    AMOUNT_MAX,
    NIL_ID,
    AccountFlags,
    BookState,
    CancelPendingTransfer,
    CloseAccount,
    Command,
    CommandRejected,
    CreateTransfer,
    Event,
    ExpirePendingTransfers,
    OpenAccount,
    RejectionCode,
    TransferFlags,
    command_to_data,
    decide,
    decide_batch,
    event_from_data,
    event_to_data,
    evolve,
    parse_command,
)
from tests.property import reference_model as ref

START_US = 1_700_000_000_000_000
S = 1_000_000

LEDGERS = st.sampled_from(["USD", "USD", "USD", "EUR", "", "usd"])
AMOUNTS = st.one_of(
    st.integers(1, 120),
    st.sampled_from([0, -1, AMOUNT_MAX, AMOUNT_MAX + 1, AMOUNT_MAX - 50]),
)
ACCOUNT_FLAGS = st.sampled_from(
    [
        AccountFlags(),
        AccountFlags(),
        AccountFlags(debits_must_not_exceed_credits=True),
        AccountFlags(credits_must_not_exceed_debits=True),
        AccountFlags(True, True),
    ]
)
METADATA: st.SearchStrategy[dict[str, str]] = st.one_of(
    st.just({}), st.just({}), st.dictionaries(st.sampled_from(["a", "b"]), st.text(max_size=3))
)


def vars_of(flags: AccountFlags) -> tuple[bool, bool]:
    return (flags.debits_must_not_exceed_credits, flags.credits_must_not_exceed_debits)


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.state = BookState()
        self.model = ref.RefLedger()
        self.log: list[Event] = []
        self.now_us = START_US
        self.account_ids: list[UUID] = []
        self.transfer_ids: list[UUID] = []
        self.hold_ids: list[UUID] = []
        self.replayed = BookState()
        self.replayed_count = 0
        self.accepted: list[Command] = []
        self.next_id = 1

    # --- ids ---------------------------------------------------------------------

    def fresh_id(self) -> UUID:
        self.next_id += 1
        return UUID(int=self.next_id)

    def some_account(self, data: st.DataObject) -> UUID:
        pool = [*self.account_ids, UUID(int=999_999), NIL_ID]
        weights = (
            st.sampled_from(pool)
            if not self.account_ids
            else st.one_of(st.sampled_from(self.account_ids), st.sampled_from(pool))
        )
        return data.draw(weights)

    def some_transfer_id(self, data: st.DataObject) -> UUID:
        if self.transfer_ids and data.draw(st.integers(0, 4)) > 0:
            return data.draw(st.sampled_from(self.transfer_ids))
        return data.draw(st.sampled_from([self.fresh_id(), UUID(int=888_888), NIL_ID]))

    # --- command strategies -------------------------------------------------------

    def noisy(self, data: st.DataObject) -> bool:
        """One command in five is built from anything at all; the rest are plausible."""
        return data.draw(st.integers(0, 4)) == 0

    def open_account(self, data: st.DataObject) -> OpenAccount:
        if not self.noisy(data):
            return OpenAccount(
                self.fresh_id(),
                data.draw(st.sampled_from(["USD", "USD", "EUR"])),
                1,
                data.draw(ACCOUNT_FLAGS.filter(lambda f: not all(vars_of(f)))),
            )
        reuse = bool(self.account_ids) and data.draw(st.booleans())
        account_id = data.draw(st.sampled_from(self.account_ids)) if reuse else self.fresh_id()
        return OpenAccount(
            account_id,
            data.draw(st.sampled_from(["USD", "USD", "EUR", "", "usd"])),
            data.draw(st.sampled_from([1, 1, 2, 0])),
            data.draw(ACCOUNT_FLAGS),
            data.draw(METADATA),
            scale=data.draw(st.sampled_from([2, 2, 2, 0])),
        )

    def transfer(self, data: st.DataObject) -> CreateTransfer:
        pending = data.draw(st.booleans())
        if not self.noisy(data) and len(self.account_ids) >= 2:
            debit = data.draw(st.sampled_from(self.account_ids))
            ledger = self.model.accounts[debit].ledger
            partners = [
                a
                for a in self.account_ids
                if a != debit and self.model.accounts[a].ledger == ledger
            ]
            credit = data.draw(st.sampled_from(partners or self.account_ids))
            return CreateTransfer(
                self.fresh_id(),
                debit,
                credit,
                data.draw(st.sampled_from([AMOUNT_MAX // 2 + 1, *range(1, 120, 7)])),
                self.model.accounts[debit].ledger,
                1,
                TransferFlags(pending=pending),
                timeout_s=data.draw(st.sampled_from([0, 0, 1, 5, 60])) if pending else 0,
                metadata=data.draw(METADATA),
            )
        return CreateTransfer(
            self.some_transfer_id(data),
            self.some_account(data),
            self.some_account(data),
            data.draw(AMOUNTS),
            data.draw(LEDGERS),
            data.draw(st.sampled_from([1, 1, 1, 0, 70_000])),
            TransferFlags(pending=pending),
            data.draw(st.sampled_from([None, None, None, NIL_ID])),
            data.draw(st.sampled_from([0, 0, 1, 5, 60, 10**13])) if pending else 0,
            data.draw(METADATA),
        )

    def resolve(self, data: st.DataObject) -> CreateTransfer:
        post = data.draw(st.booleans())
        flags = TransferFlags(post_pending_transfer=post, void_pending_transfer=not post)
        if not self.noisy(data) and self.hold_ids:
            return CreateTransfer(
                self.fresh_id(),
                pending_id=data.draw(st.sampled_from(self.hold_ids)),
                amount_minor=data.draw(st.sampled_from([0, 0, 1, 10, 50])) if post else 0,
                flags=flags,
            )
        if data.draw(st.integers(0, 9)) == 0:
            flags = TransferFlags(pending=True, post_pending_transfer=True)
        return CreateTransfer(
            self.fresh_id(),
            data.draw(st.sampled_from([NIL_ID, NIL_ID, NIL_ID, self.some_account(data)])),
            NIL_ID,
            data.draw(st.one_of(st.just(0), st.integers(1, 130))),
            data.draw(st.sampled_from(["", "", "USD", "EUR"])),
            data.draw(st.sampled_from([0, 0, 1, 2])),
            flags,
            self.some_transfer_id(data),
        )

    def cancel(self, data: st.DataObject) -> CancelPendingTransfer:
        """Mostly a hold (pending, posted, voided or expired by now); else an id nobody
        used yet (the cancel forbids it), another transfer, or the nil id. The cancel's own
        id is fresh, or sometimes an earlier cancel's or transfer's."""
        roll = data.draw(st.integers(0, 9))
        by_status: dict[str, list[UUID]] = defaultdict(list)
        for hold_id in self.hold_ids:
            by_status[self.model.transfers[hold_id].status].append(hold_id)
        if by_status and roll < 6:
            status = data.draw(st.sampled_from(sorted(by_status)))
            pending_id = data.draw(st.sampled_from(by_status[status]))
        elif roll < 8:
            pending_id = self.fresh_id()
        else:
            pending_id = self.some_transfer_id(data)
        own = self.fresh_id() if data.draw(st.integers(0, 3)) else self.some_transfer_id(data)
        return CancelPendingTransfer(id=own, pending_id=pending_id)

    def close(self, data: st.DataObject) -> CloseAccount:
        if self.noisy(data):
            return CloseAccount(self.some_account(data))
        return CloseAccount(data.draw(st.sampled_from(self.account_ids[4:] or [NIL_ID])))

    def any_command(self, data: st.DataObject) -> Command:
        kind = data.draw(st.sampled_from(["open", "transfer", "transfer", "resolve", "close"]))
        if kind == "open":
            return self.open_account(data)
        if kind == "transfer":
            return self.transfer(data)
        if kind == "resolve":
            return self.resolve(data)
        return self.close(data)

    # --- running batches ----------------------------------------------------------

    def run(self, commands: list[Command]) -> list[Any]:
        expected = ref.decide_batch(self.model, commands, self.now_us)
        outcomes = decide_batch(self.state, commands, self.now_us)
        assert [(o.status, o.code or "") for o in outcomes] == expected, commands
        for command, outcome in zip(commands, outcomes, strict=True):
            hypothesis_event(f"{type(command).__name__}: {outcome.status} {outcome.code or ''}")
            assert (outcome.status == "rejected") == (outcome.code is not None)
            if outcome.status != "rejected":
                self.accepted.append(command)
            if outcome.status != "created":
                assert outcome.events == ()
            for event in outcome.events:
                hypothesis_event(f"event {event.type}")
                self.log.append(event)
                self.note_ids(event)
        self.check_against_model()
        return outcomes

    def note_ids(self, event: Event) -> None:
        if event.type == "AccountOpened":
            self.account_ids.append(event.account_id)  # type: ignore[attr-defined]
        elif event.type != "AccountClosed" and event.type != "PendingTransferExpired":
            self.transfer_ids.append(event.transfer_id)  # type: ignore[attr-defined]
            if event.type == "TransferCreated" and event.flags.pending:  # type: ignore[attr-defined]
                self.hold_ids.append(event.transfer_id)  # type: ignore[attr-defined]
            if event.type == "PendingTransferForbidden":
                # A late try of the cancelled id is refused: draw it again.
                self.transfer_ids.append(event.pending_id)  # type: ignore[attr-defined]

    def check_against_model(self) -> None:
        assert self.state.accounts.keys() == self.model.accounts.keys()
        for account_id, account in self.state.accounts.items():
            mine = self.model.accounts[account_id]
            assert tuple(account.balances()) == (
                mine.debits_pending,
                mine.debits_posted,
                mine.credits_pending,
                mine.credits_posted,
            )
            assert account.closed == mine.closed
        assert self.state.transfers.keys() == self.model.transfers.keys()
        for transfer_id, transfer in self.state.transfers.items():
            assert transfer.pending_status == self.model.transfers[transfer_id].status
        assert self.state.forbidden == self.model.forbidden

    # --- rules --------------------------------------------------------------------

    @initialize()
    def open_accounts(self) -> None:
        """Four accounts that are never closed on purpose: two USD without limits (they
        fund the others), one USD that cannot be overdrawn, one EUR."""
        self.run(
            [
                OpenAccount(self.fresh_id(), "USD", 1),
                OpenAccount(self.fresh_id(), "USD", 1),
                OpenAccount(self.fresh_id(), "USD", 1, AccountFlags(True, False)),
                OpenAccount(self.fresh_id(), "EUR", 1),
            ]
        )

    @rule(data=st.data())
    def open_account_rule(self, data: st.DataObject) -> None:
        self.run([self.open_account(data)])

    @rule(data=st.data())
    def transfer_rule(self, data: st.DataObject) -> None:
        self.run([self.transfer(data)])

    @rule(data=st.data())
    def post_or_void(self, data: st.DataObject) -> None:
        self.run([self.resolve(data)])

    @rule(data=st.data())
    def cancel_a_hold(self, data: st.DataObject) -> None:
        self.run([self.cancel(data)])

    @rule(data=st.data(), then=st.sampled_from(["nothing", "post", "void", "expire", "cancel"]))
    def a_hold_then_its_cancel(self, data: st.DataObject, then: str) -> None:
        """A TCC round in a few steps: a hold (a try), what happened to it since, then the
        cancel (and sometimes the cancel again, or a late try of the same id)."""
        hold = self.transfer(data)
        hold = replace(hold, flags=TransferFlags(pending=True), pending_id=None)
        self.run([hold])
        if then in ("post", "void"):
            post = then == "post"
            flags = TransferFlags(post_pending_transfer=post, void_pending_transfer=not post)
            self.run([CreateTransfer(self.fresh_id(), pending_id=hold.id, flags=flags)])
        elif then == "expire":
            self.now_us += 61 * S
            self.run([ExpirePendingTransfers(now_us=self.now_us)])
        elif then == "cancel":
            self.run([CancelPendingTransfer(id=self.fresh_id(), pending_id=hold.id)])
        cancel = CancelPendingTransfer(id=self.fresh_id(), pending_id=hold.id)
        self.run([cancel])
        if data.draw(st.booleans()):
            self.run([cancel])
        if data.draw(st.booleans()):
            self.run([hold])

    @rule(data=st.data())
    def close_account(self, data: st.DataObject) -> None:
        self.run([self.close(data)])

    @rule(seconds=st.integers(0, 30), limit=st.sampled_from([8190, 8190, 1, 0]))
    def advance_time_and_expire(self, seconds: int, limit: int) -> None:
        self.now_us += seconds * S
        self.run([ExpirePendingTransfers(now_us=self.now_us, limit=limit)])

    @rule(data=st.data(), size=st.integers(1, 5))
    def batch_with_linked_chains(self, data: st.DataObject, size: int) -> None:
        commands = [self.any_command(data) for _ in range(size)]
        linked = data.draw(st.lists(st.booleans(), min_size=size, max_size=size))
        chained: list[Command] = []
        for command, link in zip(commands, linked, strict=True):
            if isinstance(command, CreateTransfer):
                command = replace(command, flags=replace(command.flags, linked=link))
            elif isinstance(command, OpenAccount | CloseAccount):
                command = replace(command, linked=link)
            chained.append(command)
        if data.draw(st.booleans()):
            chained.insert(data.draw(st.integers(0, size)), ExpirePendingTransfers(self.now_us))
        self.run(chained)

    @precondition(lambda self: self.accepted)
    @rule(data=st.data())
    def resubmit_an_accepted_command(self, data: st.DataObject) -> None:
        command = data.draw(st.sampled_from(self.accepted))
        if isinstance(command, CreateTransfer):
            command = replace(command, flags=replace(command.flags, linked=False))
        elif isinstance(command, OpenAccount | CloseAccount):
            command = replace(command, linked=False)
        before = self.state.copy()
        (outcome,) = self.run([command])
        assert outcome.events == ()
        if isinstance(command, CancelPendingTransfer):
            # The void it made exists; a cancel that forbade its hold's id or found the
            # hold ended keeps no record of its own id, so that id may have been forbidden
            # since by another cancel (then it is refused, still changing nothing).
            refused = outcome.code == "id_already_cancelled" and command.id in before.forbidden
            assert outcome.status in ("created", "exists") or refused, outcome
        else:
            assert outcome.status == (
                "created" if isinstance(command, ExpirePendingTransfers) else "exists"
            )
        assert self.state == before

    @precondition(lambda self: self.accepted)
    @rule(data=st.data())
    def reuse_an_id_with_another_code(self, data: st.DataObject) -> None:
        command = data.draw(st.sampled_from(self.accepted))
        if not isinstance(command, OpenAccount | CreateTransfer):
            return
        if isinstance(command, CreateTransfer):
            if command.pending_id is not None:
                return  # a post or void with code 0 inherits the code: another may match
            changed: Command = replace(
                command, code=command.code % 7 + 1, flags=replace(command.flags, linked=False)
            )
        else:
            changed = replace(command, code=command.code % 7 + 1, linked=False)
        (outcome,) = self.run([changed])
        assert outcome.code == RejectionCode.id_already_used_with_different_fields

    @rule(
        data=st.data(),
        corruption=st.sampled_from(
            [
                ("amount_minor", "12"),
                ("amount_minor", -3),
                ("amount_minor", 1.5),
                ("id", "not-a-uuid"),
                ("flags", {"pending": "yes"}),
                ("ledger", 42),
                ("surprise", 1),
                ("metadata", {"k": 1}),
                ("code", None),
            ]
        ),
    )
    def invalid_input_is_rejected_where_it_is_wrong(
        self, data: st.DataObject, corruption: tuple[str, object]
    ) -> None:
        field, value = corruption
        payload = command_to_data(self.transfer(data))
        payload[field] = value
        before = self.state.copy()
        try:
            parse_command(payload)
        except CommandRejected as rejection:
            assert rejection.code == RejectionCode.invalid_field
            assert f"at $.{field}" in rejection.detail
        else:
            raise AssertionError(f"{payload} was accepted")
        assert self.state == before

    @rule(data=st.data())
    def parsing_and_deciding_agree_on_invalid_fields(self, data: st.DataObject) -> None:
        """A command either survives its data round trip unchanged, or both parse_command
        and decide reject it as invalid_field."""
        command = self.any_command(data)
        try:
            parsed = parse_command(command_to_data(command))
        except CommandRejected as rejection:
            assert rejection.code == RejectionCode.invalid_field
            with pytest.raises(CommandRejected) as decided:
                decide(self.state, command, self.now_us)
            assert decided.value.code == RejectionCode.invalid_field
        else:
            assert parsed == command

    # --- invariants ---------------------------------------------------------------

    @invariant()
    def double_entry_balances_per_ledger(self) -> None:
        sums: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
        for account in self.state.accounts.values():
            for i, value in enumerate(account.balances()):
                sums[account.ledger][i] += value
        for ledger, (d_pending, d_posted, c_pending, c_posted) in sums.items():
            assert d_posted == c_posted, ledger
            assert d_pending == c_pending, ledger

    @invariant()
    def no_account_breaks_its_limits(self) -> None:
        for account in self.state.accounts.values():
            account.check()
            debits = account.debits_pending + account.debits_posted
            credits = account.credits_pending + account.credits_posted
            if account.flags.debits_must_not_exceed_credits:
                assert debits <= account.credits_posted
            if account.flags.credits_must_not_exceed_debits:
                assert credits <= account.debits_posted
        for transfer in self.state.transfers.values():
            transfer.check()

    @invariant()
    def replaying_the_log_reproduces_the_state(self) -> None:
        """``self.replayed`` has seen every event of the log, in order, from an empty state,
        after a trip through its stored data form (incremental, so shrinking stays fast)."""
        for event in self.log[self.replayed_count :]:
            stored = event_from_data(event.type, event.schema_version, event_to_data(event))
            assert stored == event
            evolve(self.replayed, stored)
        self.replayed_count = len(self.log)
        assert self.replayed == self.state


LedgerMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestLedgerAgainstReferenceModel = LedgerMachine.TestCase
