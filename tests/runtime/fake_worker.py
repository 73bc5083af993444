"""A stand-in worker, and a supervisor of stand-ins, for tests/runtime/test_workers.py.

``python -m tests.runtime.fake_worker worker DIR``: writes ``DIR/worker-<index>.pid``, then waits for
SIGTERM and exits 0; ``FAKE_EXIT_<index>=CODE`` makes that worker exit with CODE after a moment instead,
``FAKE_IGNORE_TERM=1`` makes every worker ignore SIGTERM.

``python -m tests.runtime.fake_worker supervise DIR COUNT GRACE``: ``run_workers`` over such workers.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from services.runtime.config import WORKER_INDEX_VAR
from services.runtime.workers import run_workers


def worker(directory: Path) -> int:
    index = os.environ[WORKER_INDEX_VAR]
    stop = False

    def on_term(_signum: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, signal.SIG_IGN if os.environ.get("FAKE_IGNORE_TERM") else on_term)
    (directory / f"worker-{index}.pid").write_text(str(os.getpid()))
    exit_code = os.environ.get(f"FAKE_EXIT_{index}")
    if exit_code is not None:
        time.sleep(0.5)
        return int(exit_code)
    while not stop:
        time.sleep(0.05)
    return 0


def supervise(directory: Path, count: int, grace: float) -> int:
    return run_workers(
        "ingest",
        count,
        command=[sys.executable, "-m", "tests.runtime.fake_worker", "worker", str(directory)],
        env=os.environ,
        grace_seconds=grace,
        poll_seconds=0.05,
    )


if __name__ == "__main__":
    if sys.argv[1] == "worker":
        sys.exit(worker(Path(sys.argv[2])))
    sys.exit(supervise(Path(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])))
