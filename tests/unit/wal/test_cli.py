"""``ledger wal verify`` and ``ledger wal dump``, through ``ledger.cli.main`` (and once
through the installed ``ledger`` script)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ledger.adapters import wal_cli
from ledger.adapters.wal import is_open_for_writing, open_wal
from ledger.cli import main

from .support import flip_bit, frames, make_records, segments, write_log


def test_verify_prints_a_summary_and_exits_0_on_an_intact_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    records = write_log(tmp_path, [3] * 20, segment_size_bytes=4096)
    assert main(["wal", "verify", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert out == (
        f"ok: {len(segments(tmp_path))} segments, 60 records, last position 60, "
        f"head {records[-1].hash.hex()}\n"
    )


def test_verify_names_the_segment_and_offset_of_damage_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_log(tmp_path, [1] * 8)
    (segment,) = segments(tmp_path)
    bad = frames(segment)[3]
    flip_bit(segment, bad.offset + 70)
    assert main(["wal", "verify", str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        f"ledger wal verify: {segment} at byte {bad.offset}: crc32c mismatch "
        "(record position 4), followed by valid records\n"
    )


def test_verify_reports_a_torn_tail_as_a_finding_and_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_log(tmp_path, [1] * 8)
    (segment,) = segments(tmp_path)
    last = frames(segment)[-1]
    segment.write_bytes(segment.read_bytes()[: last.end - 5])
    size = segment.stat().st_size
    assert main(["wal", "verify", str(tmp_path), "--no-progress"]) == 1
    _, err = capsys.readouterr()
    assert err.startswith(f"ledger wal verify: {segment} at byte {last.offset}: torn tail: ")
    assert "opening the log would move" in err and "end at position 7" in err
    assert segment.stat().st_size == size
    assert not list(tmp_path.glob("torn-*"))


@pytest.mark.parametrize("command", ["verify", "dump"])
def test_a_missing_directory_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    assert main(["wal", command, str(tmp_path / "nope")]) == 2
    assert f"ledger wal {command}: no such directory: " in capsys.readouterr().err


def test_a_directory_without_segments_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["wal", "verify", str(tmp_path)]) == 2
    assert "no WAL segment files" in capsys.readouterr().err


def test_missing_arguments_are_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["wal", "verify"]) == 2
    capsys.readouterr()


def test_dump_prints_one_json_object_per_record(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    records = write_log(tmp_path, [2] * 10, segment_size_bytes=4096)
    assert main(["wal", "dump", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line) for line in lines] == [r.to_dict() for r in records]


def test_dump_prints_an_inclusive_range(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    records = write_log(tmp_path, [2] * 10, segment_size_bytes=4096)
    assert main(["wal", "dump", str(tmp_path), "--from", "7", "--to", "12"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["position"] for line in lines] == [7, 8, 9, 10, 11, 12]
    assert json.loads(lines[0]) == records[6].to_dict()
    assert main(["wal", "dump", str(tmp_path), "--from", "19", "--to", "99"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2


@pytest.mark.parametrize(("first", "last"), [("0", None), ("5", "4")])
def test_dump_rejects_a_bad_range(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], first: str, last: str | None
) -> None:
    write_log(tmp_path, [2])
    argv = ["wal", "dump", str(tmp_path), "--from", first] + (["--to", last] if last else [])
    assert main(argv) == 2
    assert "ledger wal dump: --" in capsys.readouterr().err


def test_dump_prints_the_records_before_damage_then_reports_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_log(tmp_path, [1] * 8)
    (segment,) = segments(tmp_path)
    bad = frames(segment)[5]
    flip_bit(segment, bad.offset + 90)
    assert main(["wal", "dump", str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    assert [json.loads(line)["position"] for line in out.splitlines()] == [1, 2, 3, 4, 5]
    assert err.startswith(f"ledger wal dump: {segment} at byte {bad.offset}: crc32c mismatch")


def test_dump_stops_before_a_torn_tail_and_reports_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_log(tmp_path, [1] * 4)
    (segment,) = segments(tmp_path)
    flip_bit(segment, frames(segment)[-1].offset + 33)
    assert main(["wal", "dump", str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 3
    assert "torn tail" in err


def test_a_progress_bar_shows_on_a_terminal_unless_disabled(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    write_log(tmp_path, [3] * 5)
    monkeypatch.setattr(wal_cli, "PROGRESS_MIN_BYTES", 1)
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    assert main(["wal", "verify", str(tmp_path)]) == 0
    assert "\x1b[" in capsys.readouterr().err  # drawn (and erased) on stderr
    assert main(["wal", "verify", str(tmp_path), "--no-progress"]) == 0
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("TTY_COMPATIBLE", "0")
    assert main(["wal", "verify", str(tmp_path)]) == 0
    assert capsys.readouterr().err == ""


def test_the_installed_ledger_command_verifies_and_dumps(tmp_path: Path) -> None:
    write_log(tmp_path, [2] * 3)
    ledger = Path(sys.executable).parent / "ledger"
    verified = subprocess.run(
        [str(ledger), "wal", "verify", str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout.startswith("ok: 1 segment, 6 records, last position 6, head ")
    dumped = subprocess.run(
        [str(ledger), "wal", "dump", str(tmp_path), "--from", "5"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert dumped.returncode == 0, dumped.stderr
    assert [json.loads(line)["position"] for line in dumped.stdout.splitlines()] == [5, 6]


def test_verify_of_a_log_being_written_leaves_the_batch_in_flight_unchecked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The node holds the log open while an auditor verifies it: the batch it is writing
    (here: half-written) is not reported as damage."""
    records = write_log(tmp_path, [2, 3])
    wal, _ = open_wal(tmp_path)
    (segment,) = segments(tmp_path)
    in_flight = make_records(6, records[-1].hash, 4)
    wal.append_batch(in_flight)
    segment.write_bytes(segment.read_bytes()[: frames(segment)[-2].offset + 30])
    try:
        assert is_open_for_writing(tmp_path)
        assert main(["wal", "verify", str(tmp_path)]) == 0
        out, err = capsys.readouterr()
        assert out.startswith("ok: 1 segment, 5 records, last position 5, ")
        assert "the log is open for writing; the batch being written at " in err
    finally:
        wal.close()
    assert not is_open_for_writing(tmp_path)
    assert main(["wal", "verify", str(tmp_path)]) == 1
    assert "torn tail" in capsys.readouterr().err


def test_an_invalid_setting_is_a_usage_error_naming_the_variable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``wal replay`` without --database-url reads the settings; a bad LEDGER_* variable
    there exits 2 with its name, as for every command."""
    from ledger.config import get_settings

    write_log(tmp_path, [2] * 3)
    monkeypatch.setenv("LEDGER_BATCH_SIZE_MAX", "many")
    get_settings.cache_clear()
    try:
        assert main(["wal", "replay", str(tmp_path), "--no-progress"]) == 2
    finally:
        get_settings.cache_clear()
    err = capsys.readouterr().err
    assert err.startswith("ledger: invalid configuration:")
    assert "LEDGER_BATCH_SIZE_MAX" in err


def test_replay_with_its_url_and_book_given_starts_without_the_settings(tmp_path: Path) -> None:
    """``ledger wal replay DIR --database-url URL --book ID`` loads neither the settings
    (pydantic) nor the read models' SQLAlchemy tables: a fresh interpreter shows it."""
    write_log(tmp_path, [2] * 3)
    code = (
        "import sys\n"
        "from ledger.cli import main\n"
        f"rc = main(['wal', 'replay', {str(tmp_path)!r}, '--database-url',"
        " 'postgresql://nobody@127.0.0.1:1/none', '--book', 'b', '--no-progress'])\n"
        "heavy = sorted(m for m in ('pydantic', 'sqlalchemy', 'projections') if m in sys.modules)\n"
        "print(rc, heavy)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    rc, heavy = out.strip().splitlines()[-1].split(" ", 1)
    assert heavy == "[]"
    assert rc in {"1", "2"}  # these records are no book's, and no server answers there
