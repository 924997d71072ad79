"""WAL throughput: appends at batch sizes 1/10/100/1000 next to a raw write+fdatasync loop,
and verify/read speed.

For each batch size the same events (about 200 bytes of ``data`` each) are appended with
``FileWal.append_batch`` (one ``pwrite`` + one ``fdatasync`` per batch, after checking the
chain and framing every record), and then the very bytes the WAL wrote are written again
by a bare write (``os.pwrite``) + ``os.fdatasync`` loop with the same batch boundaries and
the same pace: the ratio is what the WAL costs on top of the disk. As in the node, each
batch is chained (``chain_records``: positions, canonical bytes, sha256) just before it is
appended, and only ``append_batch`` is timed: the records arrive warm in the CPU cache, as
they do from the node's decider thread, rather than being read back from a heap of
records made at the start. The raw loop chains each batch too, untimed, so both loops
write at the same pace (see :func:`raw_append`), and each timed loop starts on a flushed
filesystem with the previous loop's files removed (see :func:`settle`). Runs alternate
(WAL, raw, WAL, raw, ...) so both see the same noise on a shared machine; each figure is
the median of the runs, and the "paired" column is the median of each run's own ratio.
The same comparison is made for preallocated segments (zero-filled in advance) against a
raw loop that overwrites a zero-filled file. Read speed is measured on a log written in
batches of 1000, with the file in the page cache: ``verify_wal`` (framing, CRC32C,
positions, batches and the hash chain: one CRC and one sha256 per record, no JSON),
``scan_records`` (the same checks, yielding each record's canonical bytes and hash) and
``FileWal.read`` (the same checks plus decoding every record into an ``EventRecord``).

Files go to a temporary directory under ``var/`` in the project (the project's
filesystem, not tmpfs), removed at the end.

    python -m benchmarks.bench_wal [--quick] [--runs N] [--dir PATH]
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from ledger.adapters import wal as wal_module
from ledger.adapters.wal import HEADER_BYTES, FileWal, open_wal, scan_records, verify_wal
from ledger.application.records import (
    GENESIS_HASH,
    EventRecord,
    PendingRecord,
    chain_records,
)
from ledger.bootstrap import tune_gc

BATCH_SIZES = (1, 10, 100, 1000)
DATA_BYTES_TARGET = 200
PROJECT_ROOT = Path(__file__).resolve().parents[1]
T = TypeVar("T")


@dataclass(frozen=True)
class Plan:
    runs: int
    events: dict[int, int]  # events appended per run, by batch size
    read_records: int


FULL = Plan(runs=5, events={1: 3000, 10: 20_000, 100: 60_000, 1000: 100_000}, read_records=400_000)
QUICK = Plan(runs=3, events={1: 600, 10: 4000, 100: 12_000, 1000: 20_000}, read_records=100_000)


def make_events(count: int, first: int = 1, prev: bytes = GENESIS_HASH) -> list[EventRecord]:
    """Records like a transfer's: about ``DATA_BYTES_TARGET`` bytes of JSON ``data``."""
    return chain_records(make_pending(count, first), first, prev)


def make_pending(count: int, first: int = 1) -> list[PendingRecord]:
    """The unchained events of :func:`make_events`."""
    pending = []
    for i in range(count):
        data = {
            "transfer_id": str(uuid.UUID(int=first + i)),
            "debit_account_id": str(uuid.UUID(int=(first + i) * 7919)),
            "credit_account_id": str(uuid.UUID(int=(first + i) * 104729)),
            "amount_minor": 1000 + i,
            "ledger": "USD",
            "code": 1,
        }
        pending.append(
            PendingRecord(
                event_id=uuid.UUID(int=(1 << 64) + first + i),
                stream_id=f"transfer-{first + i}",
                stream_version=1,
                type="TransferCreated",
                schema_version=1,
                recorded_at_us=1_700_000_000_000_000 + i,
                data=data,
            )
        )
    return pending


def batches_of(records: Sequence[T], size: int) -> list[Sequence[T]]:
    return [records[i : i + size] for i in range(0, len(records), size)]


def wal_append(
    directory: Path, batches: list[Sequence[PendingRecord]], preallocate: bool
) -> tuple[float, list[bytes]]:
    """Seconds spent in ``append_batch`` for every batch (each chained just before, not
    timed); and the bytes each batch put on disk."""
    wal, _ = open_wal(directory, preallocate=preallocate)
    offsets = [HEADER_BYTES]
    elapsed = 0.0
    clock = time.perf_counter
    for batch in batches:
        records = chain_records(batch, wal.last_position + 1, wal.last_hash)
        started = clock()
        wal.append_batch(records)
        elapsed += clock() - started
        offsets.append(wal._write_offset)
    segments = wal.segments()
    wal.close()
    assert len(segments) == 1, "the benchmark keeps each run within one segment"
    data = segments[0].read_bytes()
    return elapsed, [data[a:b] for a, b in itertools.pairwise(offsets)]


def raw_append(
    path: Path,
    chunks: list[bytes],
    preallocated_bytes: int,
    batches: list[Sequence[PendingRecord]],
) -> float:
    """Seconds for the bare loop: one write and one fdatasync per batch.

    Between two writes the loop chains the next batch (not timed), exactly as the WAL
    loop does: both loops then issue their writes at the same pace. Without this the
    raw loop would sync back to back while the WAL loop syncs after a pause of the CPU,
    and on a virtual disk an ``fdatasync`` after a pause measures slower (about a third,
    here): the ratio would show the pause, not what the WAL adds.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        if preallocated_bytes:
            zeros = bytes(1 << 20)
            for offset in range(0, preallocated_bytes, len(zeros)):
                os.pwrite(fd, zeros, offset)
            os.fsync(fd)
        offset = HEADER_BYTES
        position, last_hash = 1, GENESIS_HASH
        elapsed = 0.0
        clock = time.perf_counter
        for chunk, batch in zip(chunks, batches, strict=True):
            records = chain_records(batch, position, last_hash)
            position, last_hash = position + len(records), records[-1].hash
            started = clock()
            written = os.pwrite(fd, chunk, offset)
            assert written == len(chunk)
            offset += written
            os.fdatasync(fd)
            elapsed += clock() - started
        return elapsed
    finally:
        os.close(fd)


def settle(work: Path) -> None:
    """Before each timed loop: remove what the loop before it wrote and flush the
    filesystem (not timed), so no loop pays for the writeback or the journal commit of
    another's files: deleting tens of megabytes just before a loop slowed its first
    ``fdatasync`` calls, and always the same loop's (the WAL's, which came first)."""
    for entry in work.iterdir():
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    os.sync()


def encode_only(batches: list[Sequence[PendingRecord]]) -> float:
    """Seconds to check and frame every batch, no I/O: the WAL's CPU cost."""
    position, last = 0, GENESIS_HASH
    elapsed = 0.0
    clock = time.perf_counter
    for batch in batches:
        records = chain_records(batch, position + 1, last)
        started = clock()
        _, last = wal_module._encode_batch(records, position, last)
        elapsed += clock() - started
        position += len(batch)
    return elapsed


@dataclass(frozen=True)
class AppendResult:
    batch_size: int
    wal_eps: float
    raw_eps: float
    wal_prealloc_eps: float
    raw_prealloc_eps: float
    encode_eps: float
    frame_bytes: float
    paired_ratio: float  # median over runs of (raw time / WAL time) within the run
    run_ratios: tuple[float, ...]


def bench_appends(root: Path, plan: Plan) -> list[AppendResult]:
    results = []
    for size in BATCH_SIZES:
        count = plan.events[size]
        batches = batches_of(make_pending(count), size)
        # The collector as the node runs it: raised thresholds, and the events made up
        # front frozen out of its sight. Otherwise a full collection (walking every
        # event of the run) now and then lands inside a timed WAL append, which
        # allocates a few objects, and never inside the raw loop, which allocates none.
        tune_gc()
        prealloc_bytes = 64 * 1024 * 1024
        times: dict[str, list[float]] = {k: [] for k in ("wal", "raw", "walp", "rawp", "enc")}
        frame_bytes = 0.0
        for run in range(plan.runs):
            work = root / f"b{size}-r{run}"
            work.mkdir()
            settle(work)
            elapsed, chunks = wal_append(work / "wal", batches, preallocate=False)
            times["wal"].append(elapsed)
            frame_bytes = sum(map(len, chunks)) / count
            settle(work)
            times["raw"].append(raw_append(work / "raw.bin", chunks, 0, batches))
            settle(work)
            elapsed, chunks = wal_append(work / "walp", batches, preallocate=True)
            times["walp"].append(elapsed)
            settle(work)
            times["rawp"].append(raw_append(work / "rawp.bin", chunks, prealloc_bytes, batches))
            times["enc"].append(encode_only(batches))
            shutil.rmtree(work)
        eps = {k: count / statistics.median(v) for k, v in times.items()}
        ratios = tuple(raw / wal for wal, raw in zip(times["wal"], times["raw"], strict=True))
        results.append(
            AppendResult(
                size,
                eps["wal"],
                eps["raw"],
                eps["walp"],
                eps["rawp"],
                eps["enc"],
                frame_bytes,
                statistics.median(ratios),
                ratios,
            )
        )
        print(f"  batch {size:>4}: done", file=sys.stderr, flush=True)
    return results


def bench_reads(root: Path, plan: Plan) -> tuple[float, float, float, int]:
    """(verify, scan_records and read records/s, segments) on a log in the page cache."""
    directory = root / "read"
    wal, _ = open_wal(directory)
    for start in range(0, plan.read_records, 1000):
        batch = make_events(min(1000, plan.read_records - start), start + 1, wal.last_hash)
        wal.append_batch(batch)
    wal.close()
    verify_wal(directory)  # warm the page cache
    verify_s, scan_s, read_s = [], [], []
    for _ in range(plan.runs):
        verify_s.append(timed(verify_wal, directory))
        scan_s.append(timed(scan_all, directory))
        wal, _ = open_wal(directory)
        read_s.append(timed(read_all, wal))
        wal.close()
    segments = len(verify_wal(directory).segments)
    count = plan.read_records
    return (
        count / statistics.median(verify_s),
        count / statistics.median(scan_s),
        count / statistics.median(read_s),
        segments,
    )


def timed(work: Callable[[T], object], argument: T) -> float:
    started = time.perf_counter()
    work(argument)
    return time.perf_counter() - started


def read_all(wal: FileWal) -> int:
    return sum(1 for _ in wal.read())


def scan_all(directory: Path) -> int:
    return sum(1 for _ in scan_records(directory))


def filesystem_of(path: Path) -> str:
    """The type of the filesystem holding ``path`` (from /proc/mounts), e.g. ``ext4``."""
    best, kind = "", "unknown"
    try:
        with open("/proc/mounts") as mounts:
            for line in mounts:
                fields = line.split()
                mount_point, fs_type = fields[1], fields[2]
                inside = str(path).startswith(mount_point.rstrip("/") + "/")
                if inside and len(mount_point) > len(best):
                    best, kind = mount_point, fs_type
    except OSError:
        pass
    return kind


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_wal", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer events (about 20 s)")
    parser.add_argument("--runs", type=int, default=None, help="runs per figure (median)")
    parser.add_argument("--dir", type=Path, default=PROJECT_ROOT / "var", help="parent dir")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.runs is not None:
        plan = Plan(max(1, args.runs), plan.events, plan.read_records)
    args.dir.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="bench-wal-", dir=args.dir))
    cached = getattr(make_events(1)[0], "canonical_cache", None) is not None
    print(
        f"WAL benchmark: Python {platform.python_version()}, {os.cpu_count()} CPUs "
        f"(load {os.getloadavg()[0]:.2f}), {filesystem_of(root)} at {root}, "
        f"medians of {plan.runs} runs; records carry cached canonical bytes: "
        f"{'yes' if cached else 'no'}",
        flush=True,
    )
    try:
        appends = bench_appends(root, plan)
        verify_rps, scan_rps, read_rps, segments = bench_reads(root, plan)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"\nappend (events/s; ~{appends[0].frame_bytes:.0f} bytes per record on disk)")
    header = (
        f"{'batch':>5} | {'WAL':>10} {'raw':>10} {'ratio':>6} {'paired':>6} | "
        f"{'WAL prealloc':>12} {'raw prealloc':>12} {'ratio':>6} | {'encode only':>11}"
    )
    print(header)
    print("-" * len(header))
    for r in appends:
        print(
            f"{r.batch_size:>5} | {r.wal_eps:>10,.0f} {r.raw_eps:>10,.0f} "
            f"{r.wal_eps / r.raw_eps:>6.0%} {r.paired_ratio:>6.0%} | {r.wal_prealloc_eps:>12,.0f} "
            f"{r.raw_prealloc_eps:>12,.0f} {r.wal_prealloc_eps / r.raw_prealloc_eps:>6.0%} | "
            f"{r.encode_eps:>11,.0f}"
        )
    print(
        "ratio: of the medians; paired: median of each run's ratio (WAL and raw ran "
        "back to back)\nruns at batch 1000, WAL/raw: "
        + " ".join(f"{x:.0%}" for x in appends[-1].run_ratios)
    )
    print(
        f"\nread ({plan.read_records:,} records, {segments} segment(s), page cache warm)\n"
        f"  verify_wal (framing, CRC32C, positions, batches, hash chain): "
        f"{verify_rps:>10,.0f} records/s\n"
        f"  scan_records (same checks, yields canonical bytes + hash):  "
        f"{scan_rps:>10,.0f} records/s\n"
        f"  FileWal.read (same checks + decode to EventRecord):         "
        f"{read_rps:>10,.0f} records/s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
