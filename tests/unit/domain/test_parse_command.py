"""parse_command: untrusted, JSON-decoded input becomes a command or an invalid_field
rejection that says where."""

from __future__ import annotations

from typing import Any

import pytest

from ledger.domain import (
    AccountFlags,
    CloseAccount,
    CommandRejected,
    CreateTransfer,
    ExpirePendingTransfers,
    OpenAccount,
    RejectionCode,
    TransferFlags,
    command_to_data,
    parse_command,
)
from tests.unit.domain.support import uid


def transfer_data(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "type": "CreateTransfer",
        "id": str(uid(1)),
        "debit_account_id": str(uid(2)),
        "credit_account_id": str(uid(3)),
        "amount_minor": 100,
        "ledger": "USD",
        "code": 1,
    }
    data.update(changes)
    return data


def rejection(data: Any, **kwargs: Any) -> str:
    with pytest.raises(CommandRejected) as caught:
        parse_command(data, **kwargs)
    assert caught.value.code == RejectionCode.invalid_field
    return caught.value.detail


@pytest.mark.parametrize(
    "command",
    [
        OpenAccount(uid(1), "USD", 1),
        OpenAccount(uid(1), "BTC_SAT", 9, AccountFlags(True, False), {"a": "b"}, True, 8),
        CloseAccount(uid(1), linked=True),
        CreateTransfer(uid(1), uid(2), uid(3), 5, "USD", 1, TransferFlags(pending=True), None, 30),
        CreateTransfer(uid(1), pending_id=uid(2), flags=TransferFlags(post_pending_transfer=True)),
        ExpirePendingTransfers(now_us=123, limit=10),
    ],
)
def test_every_command_round_trips_through_its_data(command: Any) -> None:
    assert parse_command(command_to_data(command)) == command


def test_omitted_fields_take_their_defaults() -> None:
    command = parse_command({"type": "CreateTransfer", "id": str(uid(1))})
    assert command == CreateTransfer(uid(1))


def test_the_type_may_come_from_the_caller() -> None:
    data = transfer_data()
    del data["type"]
    assert isinstance(parse_command(data, kind="CreateTransfer"), CreateTransfer)


@pytest.mark.parametrize(
    ("data", "where"),
    [
        (transfer_data(amount_minor=-1), "at $.amount_minor: must be greater than or equal to 0"),
        (transfer_data(amount_minor="100"), "at $.amount_minor: must be a valid integer"),
        (transfer_data(amount_minor=1.5), "at $.amount_minor:"),
        (transfer_data(amount_minor=100.0), "at $.amount_minor:"),
        (transfer_data(amount_minor=True), "at $.amount_minor:"),
        (transfer_data(id="nope"), "at $.id: must be a valid UUID"),
        (transfer_data(ledger="usd"), "at $.ledger: must match pattern"),
        (transfer_data(code=70_000), "at $.code:"),
        (transfer_data(timeout_s=-5), "at $.timeout_s:"),
        (transfer_data(flags={"pending": "yes"}), "at $.flags.pending:"),
        (transfer_data(flags={"pendng": True}), "at $.flags.pendng: unexpected field"),
        (transfer_data(amount=5), "at $.amount: unexpected field"),
        (transfer_data(metadata={"k": 5}), "at $.metadata.k:"),
        (transfer_data(metadata={str(i): "v" for i in range(17)}), "at $.metadata:"),
        ({"type": "CreateTransfer"}, "at $.id: field required"),
        ({"type": "Teleport"}, "at $.type: must be one of"),
        ({"id": str(uid(1))}, "at $.type: must be one of"),
        ([1, 2], "at $: must be an object"),
    ],
)
def test_bad_input_is_rejected_with_where_and_why(data: Any, where: str) -> None:
    assert where in rejection(data)


def test_the_location_is_prefixed_with_the_callers_path() -> None:
    detail = rejection(transfer_data(amount_minor=-1), path="$.transfers[3]")
    assert detail.startswith("at $.transfers[3].amount_minor:")


def test_every_problem_is_listed() -> None:
    detail = rejection(transfer_data(amount_minor=-1, code=-1))
    assert "at $.amount_minor:" in detail and "at $.code:" in detail


def test_a_conflicting_type_is_rejected() -> None:
    assert "must be 'OpenAccount'" in rejection(transfer_data(), kind="OpenAccount")


def test_values_beyond_the_structure_are_left_to_the_rules() -> None:
    command = parse_command(transfer_data(amount_minor=2**70, code=0))
    assert isinstance(command, CreateTransfer) and command.amount_minor == 2**70
