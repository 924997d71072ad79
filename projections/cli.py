"""``ledger project``, ``ledger projections rebuild`` and ``ledger projections status``.

Exit codes follow ``ledger.cli``: 0 success, 1 a finding (a projection invariant
violated), 2 usage or configuration (no database, no broker, unknown projection).
Workers stop cleanly on SIGINT/SIGTERM: the batch in hand is finished and its offsets
committed, so a restart continues where this one stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

import orjson

from ledger.config import get_settings
from projections import ProjectionInvariantViolated, UnknownProjection, get_projections

__all__ = ["project_command", "rebuild_command", "status_command"]

_log = logging.getLogger(__name__)


def _fail(message: str, code: int) -> int:
    print(message, file=sys.stderr)
    return code


def _url(args: argparse.Namespace, command: str) -> str | None:
    url: str | None = getattr(args, "database_url", None) or get_settings().database_url
    if not url:
        print(
            f"ledger {command}: no database: set LEDGER_DATABASE_URL or --database-url",
            file=sys.stderr,
        )
    return url


def project_command(args: argparse.Namespace) -> int:
    """Run one projection worker until SIGINT/SIGTERM."""
    from projections.worker import ProjectionWorker, worker_config

    settings = get_settings()
    url = _url(args, "project")
    if not url:
        return 2
    if not settings.kafka_bootstrap:
        return _fail("ledger project: no broker: set LEDGER_KAFKA_BOOTSTRAP", 2)
    try:
        projections = get_projections(args.names)
    except UnknownProjection as exc:
        return _fail(f"ledger project: {exc}", 2)
    config = worker_config(settings, settings.kafka_bootstrap, projections)
    if args.group:
        from dataclasses import replace

        config = replace(config, group_id=args.group)
    worker = ProjectionWorker(url, projections, config)
    print(
        f"projecting {', '.join(p.name for p in projections)} from topic {config.topic!r} "
        f"as group {config.group_id!r}",
        flush=True,
    )
    try:
        asyncio.run(_run_until_signal(worker.run))
    except ProjectionInvariantViolated as exc:
        return _fail(f"ledger project: invariant violated, worker stopped: {exc}", 1)
    s = worker.stats
    print(
        f"stopped: {s.batches} batches, {s.messages} messages, {s.applied} events applied, "
        f"{s.skipped} skipped, {s.backfilled} backfilled"
    )
    return 0


async def _run_until_signal(run: object) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await run(stop)  # type: ignore[operator]


def rebuild_command(args: argparse.Namespace) -> int:
    """Rebuild one projection from the event store; print what it did."""
    from projections.rebuild import rebuild, rich_progress

    url = _url(args, "projections rebuild")
    if not url:
        return 2
    try:
        get_projections([args.name])
    except UnknownProjection as exc:
        return _fail(f"ledger projections rebuild: {exc}", 2)
    try:
        with rich_progress(enabled=not args.no_progress) as progress:
            report = rebuild(url, args.name, progress=progress)
    except ProjectionInvariantViolated as exc:
        return _fail(f"ledger projections rebuild: invariant violated: {exc}", 1)
    positions = ", ".join(f"{book} at {pos}" for book, pos in sorted(report.positions.items()))
    print(
        f"rebuilt {report.projection}: {report.events} events replayed in "
        f"{report.duration_s:.2f} s, swapped in {report.swap_ms:.0f} ms; "
        f"{report.books} {'book' if report.books == 1 else 'books'} ({positions or 'none'})"
    )
    return 0


def status_command(args: argparse.Namespace) -> int:
    """Print position and lag per projection (and relay) and book."""
    from projections.status import collect, format_status

    url = _url(args, "projections status")
    if not url:
        return 2
    rows = collect(url)
    if args.json:
        for r in rows:
            line = {
                "kind": r.kind,
                "name": r.name,
                "book_id": r.book_id,
                "position": r.position,
                "head": r.head,
                "lag_events": r.lag_events,
                "lag_seconds": r.lag_seconds,
            }
            print(orjson.dumps(line).decode())
    elif rows:
        print(format_status(rows))
    else:
        print("no events yet: nothing to project")
    return 0
