"""Run the inventory example: ``python -m examples.inventory --database-url URL --port N``."""

from __future__ import annotations

import argparse
import sys

import uvicorn

from examples.inventory.service import create_app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.inventory")
    parser.add_argument("--database-url", required=True, help="its own PostgreSQL database")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8070)
    args = parser.parse_args(argv)
    uvicorn.run(
        create_app(args.database_url),
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
