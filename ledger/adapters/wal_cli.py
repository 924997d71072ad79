"""``ledger wal verify`` and ``ledger wal dump``: read-only inspection of a WAL directory.

Neither command changes the log, even when it is damaged: a torn tail is reported as a
finding (exit 1), not truncated; only opening the log for writing (the node's start)
recovers it, so an operator can look before anything is moved. Exit codes follow
``ledger.cli``: 0 intact, 1 a finding located by segment file and byte offset, 2 usage.
A progress bar (on stderr) is shown for logs of at least ``PROGRESS_MIN_BYTES`` when
stderr is a terminal (or declares itself one: ``TTY_COMPATIBLE=1``, ``FORCE_COLOR``);
``--no-progress`` turns it off.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import orjson
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)

from ledger.adapters.wal import (
    TornTail,
    WalCorruption,
    is_open_for_writing,
    read_wal,
    segment_paths,
    verify_wal,
)

__all__ = ["PROGRESS_MIN_BYTES", "dump_command", "verify_command"]

EXIT_OK = 0
EXIT_FINDING = 1
EXIT_USAGE = 2
PROGRESS_MIN_BYTES = 8 * 1024 * 1024
_DUMP_PROGRESS_EVERY_RECORDS = 1000

Advance = Callable[[int], None]


def verify_command(args: argparse.Namespace) -> int:
    """Check framing, CRC32C, positions, batches and the hash chain of every record."""
    directory = Path(args.dir)
    usage = _usage_problem("verify", directory)
    if usage:
        return _fail(usage, EXIT_USAGE)
    total = _size_bytes(directory)
    try:
        with _progress("verifying", total, bytes_=True, enabled=not args.no_progress) as advance:
            summary = verify_wal(directory, progress=advance)
    except WalCorruption as exc:
        return _fail(
            f"ledger wal verify: {_where(directory, exc.segment)} at byte {exc.offset}: "
            f"{exc.reason}",
            EXIT_FINDING,
        )
    except OSError as exc:
        return _fail(f"ledger wal verify: cannot read {directory}: {exc}", EXIT_FINDING)
    torn = summary.torn_tail
    if torn is not None and _in_flight(directory, torn):
        print(_in_flight_note("verify", directory, torn), file=sys.stderr)
    elif torn is not None:
        return _fail(
            f"ledger wal verify: {_where(directory, torn.segment)} at byte {torn.offset}: "
            f"torn tail: {torn.reason}; opening the log would move {torn.bytes_removed} bytes "
            f"aside and truncate it there (the log would end at position {torn.last_position})",
            EXIT_FINDING,
        )
    print(
        f"ok: {_count(len(summary.segments), 'segment')}, "
        f"{_count(summary.record_count, 'record')}, "
        f"last position {summary.last_position}, head {summary.last_hash.hex()}"
    )
    return EXIT_OK


def dump_command(args: argparse.Namespace) -> int:
    """Print records ``--from``..``--to`` as JSON lines (``EventRecord.to_dict()``).

    The log is verified first; if it is damaged, the records before the damage are
    printed and the finding is reported on stderr with exit code 1.
    """
    directory = Path(args.dir)
    first: int = args.from_position
    last: int | None = args.to_position
    usage = _usage_problem("dump", directory)
    if not usage and first < 1:
        usage = f"ledger wal dump: --from must be at least 1, got {first}"
    if not usage and last is not None and last < first:
        usage = f"ledger wal dump: --to {last} is before --from {first}"
    if usage:
        return _fail(usage, EXIT_USAGE)
    finding: str | None = None
    enabled = not args.no_progress
    try:
        with _progress("checking", _size_bytes(directory), bytes_=True, enabled=enabled) as a:
            summary = verify_wal(directory, progress=a)
        readable = summary.last_position
        torn = summary.torn_tail
        if torn is not None and _in_flight(directory, torn):
            print(_in_flight_note("dump", directory, torn), file=sys.stderr)
        elif torn is not None:
            finding = (
                f"ledger wal dump: {_where(directory, torn.segment)} at byte {torn.offset}: "
                f"torn tail: {torn.reason}"
            )
    except WalCorruption as exc:
        readable = (exc.position or 1) - 1
        finding = (
            f"ledger wal dump: {_where(directory, exc.segment)} at byte {exc.offset}: {exc.reason}"
        )
    except OSError as exc:
        return _fail(f"ledger wal dump: cannot read {directory}: {exc}", EXIT_FINDING)
    end = readable if last is None else min(last, readable)
    try:
        _write_records(directory, first, end, enabled)
    except BrokenPipeError:
        # The reader went away (``| head``): stop quietly, as other Unix tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except WalCorruption as exc:
        finding = (
            f"ledger wal dump: {_where(directory, exc.segment)} at byte {exc.offset}: {exc.reason}"
        )
    if finding is not None:
        return _fail(finding, EXIT_FINDING)
    return EXIT_OK


def _write_records(directory: Path, first: int, end: int, progress_enabled: bool) -> None:
    out = _binary_stdout()
    count = max(0, end - first + 1)
    with _progress("dumping", count, bytes_=False, enabled=progress_enabled) as advance:
        lines: list[bytes] = []
        for record in read_wal(directory, first, end) if count else iter(()):
            lines.append(orjson.dumps(record.to_dict()))
            if len(lines) == _DUMP_PROGRESS_EVERY_RECORDS:
                out.write(b"\n".join(lines) + b"\n")
                lines.clear()
                if advance is not None:
                    advance(_DUMP_PROGRESS_EVERY_RECORDS)
        if lines:
            out.write(b"\n".join(lines) + b"\n")
        out.flush()


def _in_flight(directory: Path, torn: TornTail) -> bool:
    """A torn tail while a writer has the log open is the batch it is writing (opening
    the log removed any earlier torn tail), not damage: left unchecked, not reported."""
    return is_open_for_writing(directory)


def _in_flight_note(command: str, directory: Path, torn: TornTail) -> str:
    return (
        f"ledger wal {command}: note: the log is open for writing; the batch being written "
        f"at {_where(directory, torn.segment)} byte {torn.offset} was not checked"
    )


def _binary_stdout() -> BinaryIO:
    buffer: BinaryIO | None = getattr(sys.stdout, "buffer", None)
    if buffer is None:  # pragma: no cover - stdout replaced by a text-only object
        raise RuntimeError("ledger wal dump needs a binary standard output")
    sys.stdout.flush()
    return buffer


def _usage_problem(command: str, directory: Path) -> str | None:
    if not directory.exists():
        return f"ledger wal {command}: no such directory: {directory}"
    if not directory.is_dir():
        return f"ledger wal {command}: not a directory: {directory}"
    try:
        if not segment_paths(directory):
            return f"ledger wal {command}: no WAL segment files (*.wal) in {directory}"
    except OSError as exc:
        return f"ledger wal {command}: cannot list {directory}: {exc}"
    return None


def _size_bytes(directory: Path) -> int:
    return sum(path.stat().st_size for path in segment_paths(directory))


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _where(directory: Path, segment: Path) -> str:
    return str(directory / segment.name)


def _fail(message: str, code: int) -> int:
    print(message, file=sys.stderr)
    return code


@contextlib.contextmanager
def _progress(
    description: str, total: int, *, bytes_: bool, enabled: bool
) -> Iterator[Advance | None]:
    """A transient rich progress bar on stderr, or ``None`` when it should not show."""
    console = Console(stderr=True)
    threshold = PROGRESS_MIN_BYTES if bytes_ else PROGRESS_MIN_BYTES // 512
    if not enabled or not console.is_terminal or total < max(threshold, 1):
        yield None
        return
    amount = DownloadColumn() if bytes_ else MofNCompleteColumn()
    columns = (TextColumn("{task.description}"), BarColumn(), amount, TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda done: bar.advance(task, done)
