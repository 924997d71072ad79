"""The ``ledger`` command line.

Exit codes: 0 success, 1 a finding (corruption, mismatch), 2 usage or configuration error.
Each subcommand imports its implementation lazily so that ``ledger --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

__all__ = ["EXIT_FINDING", "EXIT_OK", "EXIT_USAGE", "build_parser", "main"]

EXIT_OK = 0
EXIT_FINDING = 1
EXIT_USAGE = 2

Handler = Callable[[argparse.Namespace], int]


def _cmd_migrate(args: argparse.Namespace) -> int:
    from ledger.adapters.migrate import upgrade
    from ledger.config import get_settings

    url = args.database_url or get_settings().database_url
    if not url:
        print(
            "ledger migrate: no database: set LEDGER_DATABASE_URL or --database-url",
            file=sys.stderr,
        )
        return EXIT_USAGE
    upgrade(url, args.revision)
    print(f"migrated to {args.revision}")
    return EXIT_OK


def _cmd_demo(args: argparse.Namespace) -> int:
    from ledger.demo import run_demo

    return run_demo(keep=args.keep)


def _cmd_wal_verify(args: argparse.Namespace) -> int:
    from ledger.adapters.wal_cli import verify_command

    return int(verify_command(args))


def _cmd_wal_dump(args: argparse.Namespace) -> int:
    from ledger.adapters.wal_cli import dump_command

    return int(dump_command(args))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ledger", description="eventledger: event-sourced ledger")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("migrate", help="apply database migrations (Alembic)")
    p.add_argument("--database-url", default=None, help="default: $LEDGER_DATABASE_URL")
    p.add_argument("--revision", default="head")
    p.set_defaults(handler=_cmd_migrate)

    p = sub.add_parser("demo", help="start embedded services and run the guided story")
    p.add_argument("--keep", action="store_true", help="leave services running at the end")
    p.set_defaults(handler=_cmd_demo)

    wal = sub.add_parser("wal", help="inspect the write-ahead log").add_subparsers(
        dest="wal_command", required=True, metavar="WAL_COMMAND"
    )
    p = wal.add_parser("verify", help="check framing, checksums, positions and hash chain")
    p.add_argument("dir", help="WAL directory")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=_cmd_wal_verify)
    p = wal.add_parser("dump", help="print records as JSON lines")
    p.add_argument("dir", help="WAL directory")
    p.add_argument("--from", dest="from_position", type=int, default=1)
    p.add_argument("--to", dest="to_position", type=int, default=None)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=_cmd_wal_dump)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    from ledger.config import ConfigError

    handler: Handler = args.handler
    try:
        return handler(args)
    except ConfigError as exc:
        print(f"ledger: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
