"""``make bench``: run every benchmark in turn (pass ``--quick`` for a short smoke run)."""

from __future__ import annotations

import importlib
import sys

MODULES = [
    "benchmarks.bench_domain",
    "benchmarks.bench_wal",
    "benchmarks.bench_node",
    "benchmarks.bench_snapshot",
    "benchmarks.bench_api",
    "benchmarks.bench_projections",
    "benchmarks.bench_tcc",
]


def main(argv: list[str]) -> int:
    status = 0
    for name in MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError:
            print(f"== {name}: not present, skipped", flush=True)
            continue
        print(f"== {name}", flush=True)
        status |= int(module.main(argv) or 0)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
