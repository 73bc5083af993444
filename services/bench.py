"""``python -m services.bench NAME [OPTIONS]``: the benchmarks behind ``make bench-*``.

Each service keeps its own benchmark in ``services/<name>/bench.py`` with a ``main()``
that prints a table (p50, p99, throughput, and ratios against a baseline measured in
the same run).
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import sys
from collections.abc import Sequence
from datetime import UTC, datetime

BENCHMARKS = ("signing", "policy", "scoring", "ingest")


def _machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.bench", description=__doc__)
    parser.add_argument("name", choices=(*BENCHMARKS, "all"))
    args, rest = parser.parse_known_args(argv)
    names = BENCHMARKS if args.name == "all" else (args.name,)
    print(f"# Awareness benchmarks, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {_machine()}", flush=True)
    failed = []
    for name in names:
        print(f"\n## {name}", flush=True)
        module = importlib.import_module(f"services.{name}.bench")
        result = module.main(list(rest))  # each benchmark's own options, e.g. --seconds
        if result:
            failed.append(name)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
