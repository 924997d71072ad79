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


def _cmd_serve(args: argparse.Namespace) -> int:
    from ledger.api.server import serve
    from ledger.config import get_settings

    return serve(get_settings(), args.host, args.port)


def _cmd_coordinator(args: argparse.Namespace) -> int:
    from ledger.config import get_settings
    from ledger.sagas.app import serve_coordinator

    return serve_coordinator(get_settings(), args.host, args.port)


def _cmd_demo(args: argparse.Namespace) -> int:
    from ledger.demo import run_demo

    return run_demo(keep=args.keep)


def _cmd_wal_verify(args: argparse.Namespace) -> int:
    from ledger.adapters.wal_cli import verify_command

    return int(verify_command(args))


def _cmd_wal_dump(args: argparse.Namespace) -> int:
    from ledger.adapters.wal_cli import dump_command

    return int(dump_command(args))


def _cmd_wal_replay(args: argparse.Namespace) -> int:
    from ledger.audit import replay_command

    return int(replay_command(args))


def _cmd_relay(args: argparse.Namespace) -> int:
    from ledger.relay import relay_command

    return int(relay_command(args))


def _cmd_project(args: argparse.Namespace) -> int:
    from projections.cli import project_command

    return int(project_command(args))


def _cmd_projections(args: argparse.Namespace) -> int:
    from projections.cli import rebuild_command, status_command

    if args.projections_command == "rebuild":
        return int(rebuild_command(args))
    return int(status_command(args))


def _database_url(args: argparse.Namespace, command: str) -> str | None:
    from ledger.config import get_settings

    url: str | None = getattr(args, "database_url", None) or get_settings().database_url
    if not url:
        print(
            f"ledger {command}: no database: set LEDGER_DATABASE_URL or --database-url",
            file=sys.stderr,
        )
    return url


def _cmd_keys(args: argparse.Namespace) -> int:
    from ledger.api.auth import KeyStore

    url = _database_url(args, "keys")
    if not url:
        return EXIT_USAGE
    keys = KeyStore(url)
    try:
        if args.keys_command == "create":
            try:
                key, token = keys.create(args.name, args.scope)
            except ValueError as exc:
                print(f"ledger keys create: {exc}", file=sys.stderr)
                return EXIT_USAGE
            print(f"created key {key.key_id} ({key.scope}) for {key.name!r}")
            print(f"token (shown once, store it now): {token}")
        elif args.keys_command == "list":
            for k in keys.list():
                state = f"revoked {k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "active"
                print(f"{k.key_id}\t{k.scope}\t{state}\t{k.created_at:%Y-%m-%d %H:%M}\t{k.name}")
        else:
            if not keys.revoke(args.key_id):
                print(f"ledger keys revoke: no active key {args.key_id!r}", file=sys.stderr)
                return EXIT_FINDING
            print(f"revoked {args.key_id}")
    finally:
        keys.close()
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ledger", description="eventledger: event-sourced ledger")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("migrate", help="apply database migrations (Alembic)")
    p.add_argument("--database-url", default=None, help="default: $LEDGER_DATABASE_URL")
    p.add_argument("--revision", default="head")
    p.set_defaults(handler=_cmd_migrate)

    p = sub.add_parser("serve", help="run the HTTP API and the ledger node of one book")
    p.add_argument("--host", default=None, help="default: $LEDGER_HTTP_HOST or 127.0.0.1")
    p.add_argument("--port", type=int, default=None, help="default: $LEDGER_HTTP_PORT or 8080")
    p.set_defaults(handler=_cmd_serve)

    p = sub.add_parser("coordinator", help="run the TCC and saga coordinator (HTTP API)")
    p.add_argument("--host", default=None, help="default: $LEDGER_HTTP_HOST or 127.0.0.1")
    p.add_argument(
        "--port", type=int, default=None, help="default: $LEDGER_COORDINATOR_HTTP_PORT or 8090"
    )
    p.set_defaults(handler=_cmd_coordinator)

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
    p = wal.add_parser("replay", help="re-derive balances; check the store and read models")
    p.add_argument("dir", help="WAL directory of the book")
    p.add_argument("--database-url", default=None, help="default: $LEDGER_DATABASE_URL")
    p.add_argument("--book", default=None, help="default: $LEDGER_BOOK_ID")
    p.add_argument("--domain", action="store_true", help="also replay through domain.evolve")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=_cmd_wal_replay)
    p = sub.add_parser("relay", help="publish the event store to Kafka")
    p.add_argument("--database-url", default=None, help="default: $LEDGER_DATABASE_URL")
    p.set_defaults(handler=_cmd_relay)
    p = sub.add_parser("project", help="run projection workers (a Kafka consumer group)")
    p.add_argument("names", nargs="*", metavar="NAME", help="projections (default: all)")
    p.add_argument("--database-url", default=None, help="default: $LEDGER_DATABASE_URL")
    p.add_argument("--group", default=None, help="consumer group (default: derived)")
    p.set_defaults(handler=_cmd_project)
    projections = sub.add_parser("projections", help="rebuild or inspect read models")
    projections_sub = projections.add_subparsers(
        dest="projections_command", required=True, metavar="PROJECTIONS_COMMAND"
    )
    p = projections_sub.add_parser("rebuild", help="replay into a shadow table and swap it in")
    p.add_argument("name", help="projection name")
    p.add_argument("--database-url", default=None, help="default: $LEDGER_DATABASE_URL")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=_cmd_projections)
    p = projections_sub.add_parser("status", help="position and lag of every projection")
    p.add_argument("--database-url", default=None, help="default: $LEDGER_DATABASE_URL")
    p.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    p.set_defaults(handler=_cmd_projections)
    keys = sub.add_parser("keys", help="manage API keys").add_subparsers(
        dest="keys_command", required=True, metavar="KEYS_COMMAND"
    )
    p = keys.add_parser("create", help="create a key and print its token once")
    p.add_argument("--name", required=True)
    p.add_argument("--scope", required=True, choices=["read", "write", "admin"])
    p.add_argument("--database-url", default=None)
    p.set_defaults(handler=_cmd_keys)
    p = keys.add_parser("list", help="list keys (never secrets)")
    p.add_argument("--database-url", default=None)
    p.set_defaults(handler=_cmd_keys)
    p = keys.add_parser("revoke", help="revoke a key by id")
    p.add_argument("key_id")
    p.add_argument("--database-url", default=None)
    p.set_defaults(handler=_cmd_keys)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    handler: Handler = args.handler
    try:
        return handler(args)
    except ValueError as exc:
        # A ConfigError comes only from ledger.config, so it is looked up only once that
        # is loaded: a command that needs no settings starts without pydantic (0.2 s).
        config = sys.modules.get("ledger.config")
        if config is None or not isinstance(exc, config.ConfigError):
            raise
        print(f"ledger: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
