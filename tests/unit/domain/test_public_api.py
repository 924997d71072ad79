"""The public surface of ``ledger.domain``: explicit, complete, documented, stable."""

from __future__ import annotations

import inspect
from pathlib import Path

import ledger.domain as domain
from ledger.domain import REJECTION_RULES, RejectionCode, render_rejection_table

DOCS = Path(__file__).resolve().parents[3] / "docs" / "rejection-codes.md"

EXPECTED = {
    "CancelPendingTransfer",
    "PendingTransferForbidden",
    "AMOUNT_MAX", "CODE_MAX", "CURRENT_SCHEMA_VERSIONS", "EVENT_TYPES", "EXPIRE_BATCH_MAX",
    "METADATA_ENTRIES_MAX", "METADATA_KEY_LENGTH_MAX", "METADATA_VALUE_LENGTH_MAX", "NIL_ID",
    "REJECTION_RULES", "SCALE_DEFAULT", "SCALE_MAX", "UPCASTERS", "Account", "AccountBalances",
    "AccountClosed", "AccountFlags", "AccountOpened", "BookState", "CloseAccount", "Command",
    "CommandOutcome", "CommandRejected", "CreateTransfer", "DomainError", "Event",
    "ExpirePendingTransfers", "InvariantViolated", "LedgerEvent", "OpenAccount",
    "OutcomeStatus", "PendingStatus", "PendingTransferExpired", "PendingTransferPosted",
    "PendingTransferVoided", "RejectionCode", "Transfer", "TransferCreated", "TransferFlags",
    "Upcaster", "command_to_data", "decide", "decide_batch", "event_from_data",
    "event_to_data", "evolve", "parse_command", "register_upcaster", "render_rejection_table",
}  # fmt: skip


def test_all_is_explicit_sorted_and_importable() -> None:
    assert set(domain.__all__) == EXPECTED
    assert domain.__all__ == sorted(domain.__all__, key=lambda n: (not n.isupper(), n))
    for name in domain.__all__:
        assert hasattr(domain, name), name


def test_every_public_class_and_function_has_a_docstring() -> None:
    for name in domain.__all__:
        value = getattr(domain, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            assert inspect.getdoc(value), name


def test_the_exception_tree_is_as_drawn() -> None:
    assert issubclass(domain.CommandRejected, domain.DomainError)
    assert issubclass(domain.DomainError, Exception)
    assert issubclass(domain.InvariantViolated, AssertionError)
    assert not issubclass(domain.InvariantViolated, domain.DomainError)
    assert "CommandRejected" in (domain.errors.__doc__ or "")


def test_a_rejection_prints_as_code_and_detail() -> None:
    error = domain.CommandRejected(RejectionCode.exceeds_credits, "credits_posted 40")
    assert str(error) == "exceeds_credits: credits_posted 40"
    assert (error.code, error.detail) == (RejectionCode.exceeds_credits, "credits_posted 40")


def test_rejection_codes_are_stable_snake_case_names_of_themselves() -> None:
    for code in RejectionCode:
        assert code.value == code.name
        assert code.value.islower() and " " not in code.value


def test_every_code_is_documented_in_the_table_in_precedence_order() -> None:
    assert list(REJECTION_RULES) == list(RejectionCode)
    assert render_rejection_table() in DOCS.read_text()
