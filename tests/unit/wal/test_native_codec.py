"""The native WAL codec (``ledger.adapters._walcodec``) against the Python reference.

Goal: the C framing and checking can never drift from the documented format or from the
reference implementation in ``wal.py``. Method: the same inputs through both, compared
byte for byte (framing) and verdict for verdict (checking), on examples and on
Hypothesis-generated batches; plus the cases where the codec must decline and leave the
reference to re-hash and explain.
"""

from __future__ import annotations

import dataclasses
import random
import uuid
from pathlib import Path

import google_crc32c
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.adapters import wal as wal_module
from ledger.adapters.wal import WalInvariantViolated, open_wal
from ledger.application.records import GENESIS_HASH, EventRecord, PendingRecord, chain_records
from tests.unit.wal.support import HEADER_BYTES, Frame, edited, frames, make_records, write_log

native = vars(wal_module)["_native"]  # the module's private handle on the native codec


def test_the_native_codec_is_built() -> None:
    # The package build compiles it (setup.py); without it the WAL silently falls back to
    # the reference encoder, which is several times slower on the hot path.
    assert native is not None
    assert native.crc32c(b"123456789") == 0xE3069283  # the CRC32C check value


@pytest.mark.parametrize("length", [*range(0, 40), 63, 64, 65, 255, 256, 1000, 4097, 70_000])
def test_crc32c_matches_google_crc32c_on_both_paths(length: int) -> None:
    assert native is not None
    data = random.Random(length).randbytes(length)
    expected = google_crc32c.value(data)
    assert native.crc32c(data) == expected
    assert native.crc32c_portable(data) == expected
    cut = length // 3
    assert native.crc32c(data[cut:], native.crc32c(data[:cut])) == expected
    assert native.crc32c_portable(data[cut:], native.crc32c_portable(data[:cut])) == expected


def _pending(i: int, data: dict[str, object]) -> PendingRecord:
    return PendingRecord(
        event_id=uuid.UUID(int=i + 1),
        stream_id=f"transfer-{i}",
        stream_version=1,
        type="TransferCreated",
        schema_version=1,
        recorded_at_us=1_700_000_000_000_000 + i,
        data=data,
    )


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(
    datas=st.lists(st.dictionaries(st.text(max_size=10), json_values), min_size=1, max_size=20),
    last_position=st.integers(0, 2**40),
    last_hash=st.binary(min_size=32, max_size=32),
)
def test_framing_is_byte_identical_to_the_reference(
    datas: list[dict[str, object]], last_position: int, last_hash: bytes
) -> None:
    assert native is not None
    records = chain_records(
        [_pending(i, d) for i, d in enumerate(datas)], last_position + 1, last_hash
    )
    reference = wal_module._encode_batch_checked(records, last_position, last_hash)
    assert native.encode_batch(records, last_position, last_hash) == reference
    assert native.encode_batch(tuple(records), last_position, last_hash) == reference
    buffer = bytearray(b"\xff" * 3)
    framed = native.encode_batch(records, last_position, last_hash, buffer)
    assert framed is not None
    length, last = framed
    assert (bytes(buffer[:length]), last) == reference


def test_a_reused_buffer_grows_and_is_overwritten_from_its_start() -> None:
    assert native is not None
    big = make_records(1, GENESIS_HASH, 50)
    buffer = bytearray()
    framed = native.encode_batch(big, 0, GENESIS_HASH, buffer)
    assert framed is not None and len(buffer) == framed[0]
    small = make_records(51, big[-1].hash, 2)
    framed = native.encode_batch(small, 50, big[-1].hash, buffer)
    assert framed is not None
    length, _ = framed
    assert length < len(buffer)  # kept its size: no reallocation for smaller batches
    assert bytes(buffer[:length]) == wal_module._encode_batch_checked(small, 50, big[-1].hash)[0]


def test_the_frames_follow_the_documented_layout(tmp_path: Path) -> None:
    assert native is not None
    records = make_records(7, bytes(range(32)), 5)
    framed = native.encode_batch(records, 6, bytes(range(32)))
    assert framed is not None
    segment = tmp_path / "frames.bin"
    segment.write_bytes(bytes(HEADER_BYTES) + framed[0])
    parsed = frames(segment)
    assert [f.position for f in parsed] == [7, 8, 9, 10, 11]
    assert all(f.batch_first == 7 and f.batch_count == 5 for f in parsed)
    data = segment.read_bytes()
    assert all(f.crc == google_crc32c.value(data[f.offset + 8 : f.end]) for f in parsed)
    assert [f.canonical for f in parsed] == [r.canonical() for r in records]
    assert [f.hash for f in parsed] == [r.hash for r in records]


@pytest.mark.parametrize(
    "case", ["gap", "wrong_prev_hash", "no_cached_bytes", "not_a_record", "empty", "short_hash"]
)
def test_declines_what_the_reference_must_check(case: str) -> None:
    assert native is not None
    records: list[object] = list(make_records(1, GENESIS_HASH, 3))
    last_hash = GENESIS_HASH
    if case == "gap":
        records = list(make_records(2, GENESIS_HASH, 3))
    elif case == "wrong_prev_hash":
        last_hash = bytes([1]) * 32
    elif case == "no_cached_bytes":
        records[1] = edited(records[1])  # type: ignore[arg-type]
    elif case == "not_a_record":
        records[2] = "record"
    elif case == "empty":
        records = []
    else:
        last_hash = bytes(31)
    assert native.encode_batch(records, 0, last_hash) is None


def test_a_record_without_cached_bytes_is_rehashed_and_refused_when_edited(
    tmp_path: Path,
) -> None:
    wal, _ = open_wal(tmp_path)
    batch = make_records(1, GENESIS_HASH, 3)
    batch[1] = edited(batch[1], data={"amount_minor": 1})
    with pytest.raises(WalInvariantViolated, match="does not match its content"):
        wal.append_batch(batch)
    assert wal.last_position == 0
    wal.close()


def test_replace_never_carries_cached_bytes_to_a_changed_record(tmp_path: Path) -> None:
    # The cached canonical bytes let the WAL skip re-hashing; dataclasses.replace must not
    # copy them onto a record whose fields (here the hash) were changed.
    wal, _ = open_wal(tmp_path)
    batch = make_records(1, GENESIS_HASH, 2)
    forged = dataclasses.replace(batch[1], hash=bytes(32))
    assert forged.canonical_cache is None and forged.data_json is None
    with pytest.raises(WalInvariantViolated, match="does not match its content"):
        wal.append_batch([batch[0], forged])
    wal.close()


def _segment(directory: Path) -> tuple[bytes, list[EventRecord], list[Frame]]:
    records = write_log(directory, [3, 1, 5, 2])
    segments = sorted(directory.glob("*.wal"))
    assert len(segments) == 1
    return segments[0].read_bytes(), records, frames(segments[0])


def test_verify_span_accepts_a_whole_segment(tmp_path: Path) -> None:
    assert native is not None
    data, records, _ = _segment(tmp_path)
    off, position, prev, count, status = native.verify_span(
        data, HEADER_BYTES, len(data), 0, GENESIS_HASH, 1000
    )
    assert (off, position, prev, count) == (len(data), 11, records[-1].hash, 11)
    assert status == native.SPAN_END


def test_verify_span_stops_after_records_max_and_resumes(tmp_path: Path) -> None:
    assert native is not None
    data, records, _ = _segment(tmp_path)
    off, position, prev, count, status = native.verify_span(
        data, HEADER_BYTES, len(data), 0, GENESIS_HASH, 4
    )
    assert (position, prev, count, status) == (4, records[3].hash, 4, native.SPAN_MORE)
    rest = native.verify_span(data, off, len(data), position, prev, 100)
    assert rest[1:] == (11, records[-1].hash, 7, native.SPAN_END)


def test_verify_span_stops_at_a_flipped_bit_in_every_record(tmp_path: Path) -> None:
    assert native is not None
    data, _, parsed = _segment(tmp_path)
    for index, frame in enumerate(parsed):
        for at in (frame.offset, frame.offset + 4, frame.offset + 40, frame.end - 1):
            damaged = bytearray(data)
            damaged[at] ^= 0x10
            off, position, _, count, status = native.verify_span(
                damaged, HEADER_BYTES, len(damaged), 0, GENESIS_HASH, 1000
            )
            assert (off, position, count) == (frame.offset, index, index), (index, at)
            assert status == native.SPAN_STOPPED_AT_BAD


def test_verify_span_stops_at_a_broken_chain_or_a_position_gap(tmp_path: Path) -> None:
    assert native is not None
    data, _, _ = _segment(tmp_path)
    wrong_prev = native.verify_span(data, HEADER_BYTES, len(data), 0, bytes([7]) * 32, 100)
    assert wrong_prev[2:] == (bytes([7]) * 32, 0, native.SPAN_STOPPED_AT_BAD)
    wrong_position = native.verify_span(data, HEADER_BYTES, len(data), 5, GENESIS_HASH, 100)
    assert wrong_position[3:] == (0, native.SPAN_STOPPED_AT_BAD)


def test_verify_span_stops_at_an_incomplete_last_record(tmp_path: Path) -> None:
    assert native is not None
    data, _, parsed = _segment(tmp_path)
    last = parsed[-1]
    for cut in (last.offset + 3, last.offset + 20, last.end - 1):
        off, position, _, count, status = native.verify_span(
            data[:cut], HEADER_BYTES, cut, 0, GENESIS_HASH, 100
        )
        assert (off, position, count, status) == (
            last.offset,
            10,
            10,
            native.SPAN_STOPPED_AT_BAD,
        )
    padded = data + bytes(64)  # preallocated space: zeros end the data
    assert native.verify_span(padded, HEADER_BYTES, len(padded), 0, GENESIS_HASH, 100)[3:] == (
        11,
        native.SPAN_END,
    )


def test_verify_span_refuses_arguments_outside_the_buffer() -> None:
    assert native is not None
    with pytest.raises(ValueError):
        native.verify_span(bytes(100), 0, 200, 0, GENESIS_HASH, 1)
    with pytest.raises(ValueError):
        native.verify_span(bytes(100), 0, 100, 0, bytes(5), 1)


def _verdict(directory: Path) -> object:
    try:
        return wal_module.verify_wal(directory)
    except wal_module.WalCorruption as exc:
        return ("corrupt", exc.segment.name, exc.offset, exc.reason, exc.position)


def _verdicts(directory: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[object, object]:
    with_native = _verdict(directory)
    monkeypatch.setattr(wal_module, "_native", None)
    reference = _verdict(directory)
    monkeypatch.setattr(wal_module, "_native", native)
    return with_native, reference


def test_scanning_gives_the_reference_verdict_for_each_damage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every record of a small multi-segment log damaged in turn (a bit of the length, the
    # CRC, the position, the batch fields, the canonical bytes and the hash), and every
    # truncation inside the last record: the scan with the native codec and the pure
    # reference scan must reach the same verdict, torn tail and index included.
    source = tmp_path / "source"
    write_log(source, [3, 1, 4, 1, 5, 9, 2, 6], segment_size_bytes=4096)
    segments = sorted(source.glob("*.wal"))
    assert len(segments) > 2
    with_native, reference = _verdicts(source, monkeypatch)
    assert with_native == reference
    cases = 0
    for segment in segments:
        for frame in frames(segment):
            for at in (0, 4, 8, 16, 24, 28, 40, frame.length + 7):
                work = tmp_path / f"case-{cases}"
                work.mkdir()
                for other in segments:
                    data = bytearray(other.read_bytes())
                    if other == segment:
                        data[frame.offset + at] ^= 0x04
                    (work / other.name).write_bytes(bytes(data))
                with_native, reference = _verdicts(work, monkeypatch)
                assert with_native == reference, (segment.name, frame.position, at)
                cases += 1
    last = segments[-1]
    tail = frames(last)[-1]
    for cut in range(tail.offset, tail.end, 3):
        work = tmp_path / f"cut-{cut}"
        work.mkdir()
        for other in segments:
            content = other.read_bytes()
            (work / other.name).write_bytes(content[:cut] if other == last else content)
        with_native, reference = _verdicts(work, monkeypatch)
        assert with_native == reference, cut
    assert cases > 100


def test_reading_gives_the_reference_records_and_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    records = write_log(tmp_path, [700, 1, 900, 300], segment_size_bytes=1 << 20)
    wal, _ = open_wal(tmp_path)
    native_index = [list(i) for i in wal._indexes]
    native_read = list(wal.read(5, 1800))
    wal.close()
    monkeypatch.setattr(wal_module, "_native", None)
    wal, _ = open_wal(tmp_path)
    assert [list(i) for i in wal._indexes] == native_index
    assert list(wal.read(5, 1800)) == native_read == records[4:1800]
    wal.close()
    assert len(native_index[0]) > 1  # the index has entries beyond the segment start


class _WithoutRecordParts:
    """The native codec minus ``record_parts``: scanning natively, slicing in Python."""

    def __getattr__(self, name: str) -> object:
        if name == "record_parts":
            raise AttributeError(name)
        return getattr(native, name)


@pytest.mark.parametrize(("first", "last"), [(1, None), (5, 1800), (701, 702), (1901, None)])
def test_scan_records_gives_the_same_parts_natively_and_in_python(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, first: int, last: int | None
) -> None:
    records = write_log(tmp_path, [700, 1, 900, 300], segment_size_bytes=1 << 18)
    assert len(sorted(tmp_path.glob("*.wal"))) > 2  # the scan crosses segments
    native_parts = list(wal_module.scan_records(tmp_path, first, last))
    monkeypatch.setattr(wal_module, "_native", _WithoutRecordParts())
    sliced = list(wal_module.scan_records(tmp_path, first, last))
    expected = [(r.position, r.canonical(), r.hash) for r in records[first - 1 : last]]
    assert native_parts == sliced == expected


def test_record_parts_refuses_offsets_outside_the_buffer(tmp_path: Path) -> None:
    assert native is not None
    data, records, parsed = _segment(tmp_path)
    offsets = [frame.offset for frame in parsed]
    assert native.record_parts(data, offsets, 1, 3) == [
        (r.position, r.canonical(), r.hash) for r in records[2:]
    ]
    assert native.record_parts(data, offsets, 1, 99) == []
    for bad in (len(data) - 8, -8, parsed[-1].offset + 8):
        with pytest.raises(ValueError, match="does not fit"):
            native.record_parts(data, [*offsets[:-1], bad], 1, 1)
