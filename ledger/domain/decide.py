"""decide, evolve, and the batch API the node calls.

``decide(state, command, now_us) -> list[Event]`` is pure: it reads the state and raises
:class:`CommandRejected` or returns the events the command causes. ``evolve(state,
event)`` applies one event. For speed it **mutates ``state`` in place and returns the same
object**: copying the book for every transfer would cost more than deciding it. Callers
that need the state before an event keep a :meth:`BookState.copy`.

``decide_batch(state, commands, now_us)`` is what the ledger node runs for each batch: it
decides the commands in arrival order, applying each accepted command's events to
``state`` before deciding the next, so later commands see earlier ones. Linked chains are
atomic: the events of a chain are applied as it is decided (a chain's second transfer may
spend what its first one credited), and if any member fails, an undo log restores every
record the chain touched, so the state is exactly as before the chain. Following
TigerBeetle, the failing member gets its own code, the other members
``linked_event_failed``, and a chain still open at the end of the batch gets
``linked_event_chain_open`` on its last member.

Time and ids arrive as data: ``now_us`` is the batch time (microseconds since the epoch),
stamped on every event and used for pending deadlines; the domain never reads a clock.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final, Literal, NamedTuple
from uuid import UUID

from ledger.domain.account import decide_close_account, decide_open_account
from ledger.domain.commands import (
    CancelPendingTransfer,
    CloseAccount,
    Command,
    CreateTransfer,
    ExpirePendingTransfers,
    OpenAccount,
)
from ledger.domain.errors import CommandRejected, InvariantViolated, RejectionCode
from ledger.domain.events import Event
from ledger.domain.evolve import EVOLVERS, evolve
from ledger.domain.hold import decide_cancel_pending_transfer, decide_expire_pending_transfers
from ledger.domain.money import TIMESTAMP_MAX_US
from ledger.domain.state import Account, BookState, Transfer
from ledger.domain.transfer import create_transfer, decide_create_transfer

__all__ = ["CommandOutcome", "OutcomeStatus", "decide", "decide_batch", "evolve"]

OutcomeStatus = Literal["created", "exists", "rejected"]


class CommandOutcome(NamedTuple):
    """What became of one command of a batch.

    ``created``: accepted; ``events`` are what it caused (an ExpirePendingTransfers may
    cause none). ``exists``: the same id was already used with the same fields; nothing
    changed, and ``record`` is a copy of the stored account or transfer (the original
    outcome). ``rejected``: ``code`` and ``detail`` say why; nothing changed.
    """

    status: OutcomeStatus
    code: RejectionCode | None
    detail: str | None
    events: tuple[Event, ...]
    record: Account | Transfer | None


Decided = tuple[Event, ...] | Account | Transfer
"""Events to apply, or the stored record that an identical resubmission found."""

_DECIDERS: Final[dict[type[Any], Callable[[BookState, Any, int], Decided]]] = {
    CreateTransfer: decide_create_transfer,
    OpenAccount: decide_open_account,
    CloseAccount: decide_close_account,
    ExpirePendingTransfers: decide_expire_pending_transfers,
    CancelPendingTransfer: decide_cancel_pending_transfer,
}


def decide(state: BookState, command: Command, now_us: int) -> list[Event]:
    """The events ``command`` causes at batch time ``now_us``; raises CommandRejected.

    An identical resubmission causes no events (``decide_batch`` reports it as
    ``exists``). Does not change ``state``.
    """
    decider = _DECIDERS.get(type(command))
    if decider is None:
        raise InvariantViolated(f"{type(command).__name__} is not a ledger command")
    decided = decider(state, command, now_us)
    return list(decided) if isinstance(decided, tuple) else []


# --- the batch ----------------------------------------------------------------------


def decide_batch(
    state: BookState, commands: Sequence[Command], now_us: int
) -> list[CommandOutcome]:
    """Decide ``commands`` in order against ``state``, applying accepted events to it;
    one outcome per command, in the same order. See the module docstring for chains."""
    if type(now_us) is not int or not 0 <= now_us <= TIMESTAMP_MAX_US:
        raise InvariantViolated(f"batch time {now_us!r} is not a timestamp in microseconds")
    outcomes: list[CommandOutcome] = []
    append = outcomes.append
    chain_end = 0
    for index, command in enumerate(commands):
        if index < chain_end:
            continue
        decide_and_apply: Callable[[BookState, Any, int], Decided]
        if type(command) is CreateTransfer:  # first, and without the property: most common
            if command.flags.linked:
                chain_end = _decide_chain(state, commands, index, now_us, outcomes)
                continue
            decide_and_apply = _CREATE_TRANSFER
        elif type(command) not in _DECIDERS:
            raise InvariantViolated(f"{type(command).__name__} is not a ledger command")
        elif command.linked:
            chain_end = _decide_chain(state, commands, index, now_us, outcomes)
            continue
        else:
            decide_and_apply = _decide_and_apply
        try:
            decided = decide_and_apply(state, command, now_us)
        except CommandRejected as rejection:
            append(_new_outcome(CommandOutcome, _rejected(rejection)))
            continue
        if isinstance(decided, tuple):
            append(_new_outcome(CommandOutcome, ("created", None, None, decided, None)))
        else:
            append(CommandOutcome("exists", None, None, (), decided.copy()))
    return outcomes


_new_outcome = tuple.__new__
_CREATE_TRANSFER: Final[Callable[[BookState, Any, int], Decided]] = create_transfer


def _decide_and_apply(state: BookState, command: Command, now_us: int) -> Decided:
    decided = _DECIDERS[type(command)](state, command, now_us)
    if isinstance(decided, tuple):
        for event in decided:
            EVOLVERS[event.type](state, event)
    return decided


def _rejected(rejection: CommandRejected) -> tuple[str, RejectionCode, str, tuple[()], None]:
    return ("rejected", rejection.code, rejection.detail, (), None)


class _UndoLog:
    """Pre-images of the records a linked chain touched, to restore them if it fails."""

    __slots__ = ("entries", "state")

    def __init__(self, state: BookState) -> None:
        self.state = state
        self.entries: list[tuple[dict[Any, Any], UUID, Any, Any]] = []

    def save(self, event: Event) -> None:
        accounts, transfers = _touched(event)
        for table, ids in ((self.state.accounts, accounts), (self.state.transfers, transfers)):
            for record_id in ids:
                record = table.get(record_id)
                image = None if record is None else record.copy()
                self.entries.append((table, record_id, record, image))

    def rollback(self) -> None:
        for table, record_id, record, image in reversed(self.entries):
            if record is None:
                table.pop(record_id, None)
            else:
                record.restore(image)
                table[record_id] = record
        self.entries.clear()


def _touched(event: Event) -> tuple[tuple[UUID, ...], tuple[UUID, ...]]:
    e: Any = event
    if e.type == "TransferCreated":
        return (e.debit_account_id, e.credit_account_id), (e.transfer_id,)
    if e.type in ("PendingTransferPosted", "PendingTransferVoided"):
        return (e.debit_account_id, e.credit_account_id), (e.pending_id, e.transfer_id)
    if e.type in ("AccountOpened", "AccountClosed"):
        return (e.account_id,), ()
    raise InvariantViolated(f"{e.type} cannot be part of a linked chain")


def _decide_chain(
    state: BookState,
    commands: Sequence[Command],
    start: int,
    now_us: int,
    outcomes: list[CommandOutcome],
) -> int:
    """Decide the chain that starts at ``start``; append its outcomes; return the index
    of the first command after it."""
    end = start
    while end < len(commands) and commands[end].linked:
        end += 1
    terminated = end < len(commands) and type(commands[end]) is not ExpirePendingTransfers
    stop = end + 1 if terminated else end
    decidable = stop if terminated else stop - 1
    undo = _UndoLog(state)
    decided_all: list[Decided] = []
    # Keep the code and detail, not the exception: its traceback would hold this frame,
    # and the frame the exception, a reference cycle left for the garbage collector.
    failure: tuple[int, RejectionCode, str] | None = None
    for index in range(start, decidable):
        try:
            decided = _DECIDERS[type(commands[index])](state, commands[index], now_us)
        except CommandRejected as rejection:
            failure = (index, rejection.code, rejection.detail)
            break
        if isinstance(decided, tuple):
            for event in decided:
                undo.save(event)
                EVOLVERS[event.type](state, event)
        decided_all.append(decided)
    if failure is None and terminated:
        outcomes.extend(_accepted(decided) for decided in decided_all)
        return stop
    undo.rollback()
    outcomes.extend(_failed_chain(start, stop, terminated, failure))
    return stop


def _accepted(decided: Decided) -> CommandOutcome:
    if isinstance(decided, tuple):
        return CommandOutcome("created", None, None, decided, None)
    return CommandOutcome("exists", None, None, (), decided.copy())


def _failed_chain(
    start: int, stop: int, terminated: bool, failure: tuple[int, RejectionCode, str] | None
) -> list[CommandOutcome]:
    last = stop - 1
    open_detail = f"command {last} of the batch is linked but the chain never ends"
    cause = (
        f"command {failure[0]} of the batch failed: {failure[1]}"
        if failure is not None
        else f"command {last} of the batch left the chain open"
    )
    result = []
    for index in range(start, stop):
        if failure is not None and index == failure[0]:
            code, detail = failure[1], failure[2]
        elif index == last and not terminated:
            code, detail = RejectionCode.linked_event_chain_open, open_detail
        else:
            code, detail = RejectionCode.linked_event_failed, cause
        result.append(CommandOutcome("rejected", code, detail, (), None))
    return result
