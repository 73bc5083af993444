"""``python -m bench NAME [OPTIONS]``: the benchmarks behind ``make bench*``.

Each service's benchmark is ``bench/<name>.py`` with a ``main()`` that prints a table
(p50, p99, throughput, and ratios against a baseline measured in the same run).
``suite`` is ``make bench``: every benchmark plus end-to-end load (bench/suite.py).
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import sys
from collections.abc import Sequence
from datetime import UTC, datetime

BENCHMARKS = ("signing", "policy", "scoring", "ingest", "analytics")


def _machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("name", choices=(*BENCHMARKS, "all", "suite"))
    arguments = list(sys.argv[1:] if argv is None else argv)
    # Only the name is ours: everything after it, --help included, is the benchmark's own.
    args, rest = parser.parse_args(arguments[:1]), arguments[1:]
    if args.name == "suite":  # prints its own header and table
        from bench import suite

        return suite.main(rest)
    names = BENCHMARKS if args.name == "all" else (args.name,)
    print(f"# Awareness benchmarks, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {_machine()}", flush=True)
    failed = []
    for name in names:
        print(f"\n## {name}", flush=True)
        module = importlib.import_module(f"bench.{name}")
        result = module.main(list(rest))  # each benchmark's own options, e.g. --seconds
        if result:
            failed.append(name)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
