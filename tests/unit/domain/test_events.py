"""Events: frozen, tagged, versioned; their data form and the upcaster registry."""

from __future__ import annotations

import json
from typing import Any, Literal
from uuid import UUID

import orjson
import pydantic
import pytest
from hypothesis import given
from hypothesis import strategies as st

import ledger.domain.events as events_module
from ledger.domain import (
    CURRENT_SCHEMA_VERSIONS,
    EVENT_TYPES,
    UPCASTERS,
    AccountOpened,
    CancelPendingTransfer,
    CloseAccount,
    CreateTransfer,
    Event,
    ExpirePendingTransfers,
    InvariantViolated,
    event_from_data,
    event_to_data,
    register_upcaster,
)
from ledger.domain.events import LEDGER_EVENT_ADAPTER
from tests.unit.domain.support import NOW_US, POST, VOID, Book, uid


@pytest.fixture(scope="module")
def events() -> list[Event]:
    """At least one event of every type, from a real book."""
    book = Book()
    a, b = book.open(), book.open()
    book.transfer(a, b, 5, metadata={"k": "v"})
    posted, voided = book.hold(a, b, 7, timeout_s=30), book.hold(a, b, 8)
    book.hold(a, b, 9, timeout_s=1)
    book.ok(CreateTransfer(uid(1), pending_id=posted, flags=POST, amount_minor=3))
    book.ok(CreateTransfer(uid(2), pending_id=voided, flags=VOID))
    book.ok(ExpirePendingTransfers(now_us=NOW_US + 1_000_000))
    book.ok(CloseAccount(b))
    book.ok(CancelPendingTransfer(uid(3), pending_id=uid(4)))  # cancel before try
    assert {e.type for e in book.log} == set(EVENT_TYPES)
    return book.log


def test_every_event_type_has_a_stable_tag_equal_to_its_class_name() -> None:
    for tag, cls in EVENT_TYPES.items():
        assert cls.__name__ == tag
        assert cls.model_fields["type"].default == tag
        assert cls.model_config.get("frozen") is True
        assert cls.__doc__


def test_events_are_frozen(events: list[Event]) -> None:
    with pytest.raises(pydantic.ValidationError):
        events[0].schema_version = 2  # type: ignore[misc]


def test_events_built_without_validation_pass_validation(events: list[Event]) -> None:
    for event in events:
        assert LEDGER_EVENT_ADAPTER.validate_python(event.model_dump()) == event


def test_data_is_json_compatible_and_round_trips(events: list[Event]) -> None:
    for event in events:
        data = event_to_data(event)
        assert json.loads(orjson.dumps(data)) == data
        restored = event_from_data(event.type, event.schema_version, json.loads(json.dumps(data)))
        assert restored == event
        assert type(restored) is type(event)


def test_validated_reading_gives_the_same_event(events: list[Event]) -> None:
    for event in events:
        data = json.loads(orjson.dumps(event_to_data(event)))
        assert event_from_data(event.type, 1, data, validate=True) == event


def test_data_matches_pydantics_own_json_form(events: list[Event]) -> None:
    for event in events:
        dumped = event.model_dump(mode="json")
        assert dumped.pop("type") == event.type
        assert dumped.pop("schema_version") == 1
        assert event_to_data(event) == dumped


def test_uuids_are_strings_and_amounts_are_ints(events: list[Event]) -> None:
    data = event_to_data(events[2])
    assert data["transfer_id"] == str(events[2].transfer_id)  # type: ignore[attr-defined]
    assert type(data["amount_minor"]) is int


def test_reading_an_unknown_type_or_a_newer_version_is_refused() -> None:
    with pytest.raises(InvariantViolated, match="unknown event type"):
        event_from_data("MoneyPrinted", 1, {})
    with pytest.raises(InvariantViolated, match="newer"):
        event_from_data("AccountOpened", 2, {})


def test_reading_data_with_a_missing_field_is_an_invariant_violation(events: list[Event]) -> None:
    data = event_to_data(events[2])
    del data["amount_minor"]
    with pytest.raises(InvariantViolated, match="amount_minor"):
        event_from_data(events[2].type, 1, data)


def test_validated_reading_rejects_bad_data(events: list[Event]) -> None:
    data = event_to_data(events[2])
    data["amount_minor"] = -1
    with pytest.raises(pydantic.ValidationError):
        event_from_data(events[2].type, 1, data, validate=True)


def upcast_v0_v1(data: dict[str, Any]) -> dict[str, Any]:
    """A made-up v0 of AccountOpened: the ledger code was called ``currency`` and there
    was no scale (every account had two decimals)."""
    upgraded = dict(data)
    upgraded["ledger"] = upgraded.pop("currency")
    upgraded.setdefault("scale", 2)
    return upgraded


def test_an_older_version_is_upcast_before_it_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("ledger.domain.events.UPCASTERS", dict(UPCASTERS))
    register_upcaster("AccountOpened", 0, upcast_v0_v1)
    v0 = {
        "account_id": str(uid(1)),
        "currency": "USD",
        "code": 1,
        "flags": {"debits_must_not_exceed_credits": False, "credits_must_not_exceed_debits": False},
        "metadata": {},
        "timestamp_us": NOW_US,
    }
    event = event_from_data("AccountOpened", 0, v0)
    assert isinstance(event, AccountOpened)
    assert (event.ledger, event.scale, event.schema_version) == ("USD", 2, 1)
    assert v0["currency"] == "USD", "the stored data is not modified"


def test_upcasters_run_in_version_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("ledger.domain.events.UPCASTERS", {})
    monkeypatch.setitem(CURRENT_SCHEMA_VERSIONS, "AccountClosed", 3)
    seen: list[int] = []

    def step(version: int) -> Any:
        def upcast(data: dict[str, Any]) -> dict[str, Any]:
            seen.append(version)
            return data

        return upcast

    register_upcaster("AccountClosed", 2, step(2))
    register_upcaster("AccountClosed", 1, step(1))
    data = {
        "account_id": str(uid(1)),
        "timestamp_us": 1,
        "account_after": {
            "debits_pending": 0,
            "debits_posted": 0,
            "credits_pending": 0,
            "credits_posted": 0,
        },
    }
    event = event_from_data("AccountClosed", 1, data)
    assert seen == [1, 2]
    assert event.schema_version == 3


def test_a_missing_upcaster_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("ledger.domain.events.UPCASTERS", {})
    with pytest.raises(InvariantViolated, match="no upcaster"):
        event_from_data("AccountOpened", 0, {})


def test_an_upcaster_is_registered_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("ledger.domain.events.UPCASTERS", {})
    register_upcaster("AccountOpened", 0, upcast_v0_v1)
    with pytest.raises(ValueError, match="already registered"):
        register_upcaster("AccountOpened", 0, upcast_v0_v1)


def test_model_copy_works_on_events_built_without_validation(events: list[Event]) -> None:
    event = events[2]
    changed = event.model_copy(update={"code": 9})
    assert changed.code == 9 and event.code != 9  # type: ignore[attr-defined]
    assert event.model_fields_set == set(type(event).model_fields)


def test_the_json_schema_describes_balances_as_objects() -> None:
    modes: tuple[Literal["validation"], Literal["serialization"]] = ("validation", "serialization")
    for mode in modes:
        schema = LEDGER_EVENT_ADAPTER.json_schema(mode=mode)
        balances = schema["$defs"]["TransferCreated"]["properties"]["debit_account_after"]
        assert balances["type"] == "object"
        assert balances["required"] == [
            "debits_pending",
            "debits_posted",
            "credits_pending",
            "credits_posted",
        ]


def test_stream_ids_use_the_canonical_uuid_form(events: list[Event]) -> None:
    for event in events:
        kind, _, raw = event.stream_id.partition("-")
        assert kind in ("account", "transfer")
        assert str(UUID(raw)) == raw


@given(st.uuids(allow_nil=True))
def test_the_fast_id_conversions_agree_with_uuid_py(value: UUID) -> None:
    text = str(value)
    assert events_module._id_str(value) == text == events_module._account_str(value)
    parsed = events_module._uuid(text)
    assert parsed == value and parsed.int == value.int and str(parsed) == text
    assert events_module._account_uuid(text) == value
    assert events_module._uuid(text.upper()) == value
    assert events_module._uuid("{" + value.hex + "}") == value


@pytest.mark.parametrize("text", ["", "nope", "12345678-1234-5678-1234-56781234567g"])
def test_a_malformed_id_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        events_module._uuid(text)
