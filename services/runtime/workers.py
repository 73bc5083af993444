"""Several worker processes of one service on one machine: local replicas.

``awareness serve gateway|ingest`` with ``AWARENESS_<SERVICE>_WORKERS`` above 1 and no
``AWARENESS_WORKER_INDEX`` becomes a supervisor: it starts that many children
(``python -m services.cli serve <service>`` with ``AWARENESS_WORKER_INDEX=i``), which share its
stdout and stderr, and does nothing else (no database, no port). Each child is a replica as in
Kubernetes: the serving ports are shared through SO_REUSEPORT (the kernel spreads connections),
the metrics or admin port is the worker's own (base + 100 * index), and whatever must be single
(ingest's integrator leader) is decided through PostgreSQL, which is why SQLite refuses workers.

The supervisor forwards SIGTERM and SIGINT to its children and waits. A child that exits while no
stop was asked for stops the others (SIGTERM, then SIGKILL after the grace period) and the
supervisor exits with that child's status (1 if it was 0), so ``awareness up`` or the container
runtime notices. Only the pids it started are ever signalled.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from types import FrameType

from services.runtime.config import WORKER_INDEX_VAR, Settings, with_identity, workers_var
from services.runtime.logs import configure_logging

log = logging.getLogger("awareness.workers")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# A worker drains its calls for the shutdown grace, then closes its stores and channels: this much
# more before it is killed.
STOP_MARGIN_SECONDS = 5.0
POLL_SECONDS = 0.2
# prctl(2): deliver a signal to this process when its parent dies.
_PR_SET_PDEATHSIG = 1


def is_supervisor(settings: Settings) -> bool:
    """Whether this process should start the workers rather than serve (a worker has an index)."""
    return settings.workers > 1 and settings.worker_index is None


def supervise(settings: Settings) -> int:
    """Run ``settings.workers`` workers of ``settings.service`` until they stop; the exit status."""
    configure_logging(service=settings.service, level=settings.log_level)
    _prepare_first_run(settings)
    if settings.service == "gateway" and not settings.redis_url:
        log.warning(
            "without REDIS_URL each gateway worker keeps its own rate limits",
            extra={"workers": settings.workers},
        )
    return run_workers(
        settings.service,
        settings.workers,
        command=worker_command(settings.service),
        env=settings.env,
        grace_seconds=settings.shutdown_grace_seconds + STOP_MARGIN_SECONDS,
    )


def worker_command(service: str) -> list[str]:
    return [sys.executable, "-m", "services.cli", "serve", service]


def worker_env(env: Mapping[str, str], index: int) -> dict[str, str]:
    return {**env, WORKER_INDEX_VAR: str(index)}


def _prepare_first_run(settings: Settings) -> None:
    """The development files a worker would otherwise create on first run (its mTLS identity, the
    service's secrets), made once here so that workers starting together do not race for them.
    Files only; in Kubernetes nothing is generated (and pods run one worker)."""
    with_identity(settings)
    with contextlib.suppress(ModuleNotFoundError):
        module = importlib.import_module(f"services.{settings.service}.bootstrap")
        module.bootstrap_dev(settings.data_dir)


def run_workers(
    service: str,
    count: int,
    *,
    command: Sequence[str],
    env: Mapping[str, str],
    grace_seconds: float,
    poll_seconds: float = POLL_SECONDS,
) -> int:
    """Start ``count`` children running ``command`` (worker i with ``AWARENESS_WORKER_INDEX=i``), forward
    SIGTERM/SIGINT to them, and wait; the supervisor's exit status (see the module's docstring)."""
    children: list[subprocess.Popen[bytes]] = []
    stopping = False
    failed: int | None = None  # the exit status of the first worker that stopped unasked
    deadline = float("inf")

    def forward(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping, deadline
        if not stopping:
            stopping = True
            deadline = time.monotonic() + grace_seconds
            log.info("stopping workers", extra={"signal": signal.Signals(signum).name})
        _signal_all(children, signum)

    previous = {signum: signal.signal(signum, forward) for signum in STOP_SIGNALS}
    try:
        for index in range(count):
            if stopping:
                break
            child = subprocess.Popen(list(command), env=worker_env(env, index), preexec_fn=_die_with_parent())
            children.append(child)
            log.info(
                "worker started",
                extra={"worker": index, "pid": child.pid, "workers": count, "variable": workers_var(service)},
            )
        while True:
            codes = [child.poll() for child in children]
            if all(code is not None for code in codes):
                break
            if not stopping:
                exited = next((i for i, code in enumerate(codes) if code is not None), None)
                if exited is not None:
                    code = codes[exited]
                    assert code is not None
                    failed = exit_status(code)
                    log.error(
                        "worker exited; stopping the others",
                        extra={"worker": exited, "pid": children[exited].pid, "returncode": code},
                    )
                    stopping = True
                    deadline = time.monotonic() + grace_seconds
                    _signal_all(children, signal.SIGTERM)
            elif time.monotonic() > deadline:
                for index, child in enumerate(children):
                    if child.poll() is None:
                        log.warning("worker did not stop in time; killing it", extra={"worker": index})
                        child.kill()
                deadline = float("inf")
            time.sleep(poll_seconds)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if failed is not None:
        return failed
    return _stopped_status([child.returncode for child in children])


def exit_status(returncode: int) -> int:
    """A worker's exit as the supervisor's own status: never 0 (it stopped unasked), and a signal
    as the shell shows it (128 + signal number)."""
    if returncode < 0:
        return 128 - returncode
    return returncode or 1


def _stopped_status(returncodes: Sequence[int]) -> int:
    """After a requested stop: 0 when every worker stopped cleanly (or by the forwarded signal)."""
    clean = {0, -signal.SIGTERM, -signal.SIGINT}
    for code in returncodes:
        if code not in clean:
            return exit_status(code)
    return 0


def _signal_all(children: Sequence[subprocess.Popen[bytes]], signum: int) -> None:
    for child in children:
        if child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signum)


def _die_with_parent() -> Callable[[], None] | None:
    """On Linux, a worker gets SIGTERM when the supervisor dies (even by SIGKILL): no worker outlives
    it holding the shared ports."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def set_parent_death_signal() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # the supervisor died before the request took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return set_parent_death_signal


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` with SO_REUSEPORT, which every worker binds alike (the
    caller's server listens on it)."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock
