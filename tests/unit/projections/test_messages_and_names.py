"""Pure parts of the projections package and the relay: no database, no broker."""

from __future__ import annotations

import datetime as dt

import orjson
import pytest

from ledger.application.records import record_from_dict
from ledger.relay import decode_message, encode_message
from projections import PROJECTION_NAMES, UnknownProjection, all_projections, get_projections
from projections.status import ProjectionStatus, format_status
from projections.tables import READ_MODEL_TABLES, shadow_names
from projections.worker import group_id_for
from projections.workload import SyntheticBook


def test_a_message_carries_the_stored_envelope_and_the_book() -> None:
    [record, *_] = SyntheticBook(seed=1).open_accounts()
    envelope = record.to_dict()
    row = (
        record.position,
        envelope["event_id"],
        record.stream_id,
        record.stream_version,
        record.type,
        record.schema_version,
        orjson.dumps(record.data).decode(),
        record.recorded_at_us,
        envelope["prev_hash"],
        envelope["hash"],
    )
    book_id, decoded = decode_message(encode_message("main", row))
    assert book_id == "main"
    assert decoded == envelope
    assert record_from_dict(decoded) == record


def test_projections_are_found_by_name_and_unknown_names_are_listed() -> None:
    assert [p.name for p in all_projections()] == list(PROJECTION_NAMES)
    assert [p.name for p in get_projections(["entries", "balances", "entries"])] == [
        "entries",
        "balances",
    ]
    assert [p.name for p in get_projections([])] == list(PROJECTION_NAMES)
    with pytest.raises(UnknownProjection, match=r"unknown projection 'x'; known: balances"):
        get_projections(["x"])


def test_each_set_of_projections_has_its_own_consumer_group() -> None:
    a = get_projections(["transfers", "balances"])
    b = get_projections(["balances", "transfers"])
    assert group_id_for("g", a) == group_id_for("g", b) == "g.balances+transfers"
    assert group_id_for("g", get_projections(["balances"])) != group_id_for("g", a)


def test_every_read_model_name_has_a_shadow_counterpart() -> None:
    for table in READ_MODEL_TABLES:
        names = shadow_names(table)
        assert names[table.name] == f"{table.name}__rebuild"
        assert names[f"pk_{table.name}"] == f"pk_{table.name}__rebuild"
        assert all(table.name in live and table.name in shadow for live, shadow in names.items())
        assert len(set(names.values())) == len(names)


def test_status_prints_an_aligned_table() -> None:
    when = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)
    text = format_status(
        [ProjectionStatus("projection", "balances", "main", 90, 100, 10, 1.5, when)]
    )
    header, line = text.splitlines()
    assert header.split() == [
        "KIND",
        "NAME",
        "BOOK",
        "POSITION",
        "HEAD",
        "LAG_EVENTS",
        "LAG_S",
        "UPDATED",
    ]
    assert line.split()[:7] == ["projection", "balances", "main", "90", "100", "10", "1.500"]
