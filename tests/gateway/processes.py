"""A real ``awareness serve gateway`` process on free loopback ports, for tests of its sockets."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import IDENTITY_ENV, free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
START_SECONDS = 60.0


@dataclass(frozen=True)
class GatewayProcess:
    public: str
    admin: str
    proc: subprocess.Popen[bytes]


def _wait_live(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the gateway exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    pytest.fail(f"the gateway did not answer {url} within {START_SECONDS:.0f} s:\n{log.read_text()}")


@contextmanager
def gateway_process(data_dir: Path, **extra_env: str) -> Iterator[GatewayProcess]:
    """Start the gateway (SQLite key store under ``data_dir``, no backends); stop it by pid afterwards."""
    public_port, admin_port = free_port(), free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("AWARENESS_") and k not in {"DATABASE_URL", "REDIS_URL"}
    }
    env.update(
        AWARENESS_DATA_DIR=str(data_dir),
        AWARENESS_GATEWAY_PORT=str(public_port),
        AWARENESS_GATEWAY_ADMIN_PORT=str(admin_port),
        AWARENESS_GATEWAY_GRPC_PORT=str(free_port()),
        AWARENESS_SHUTDOWN_GRACE_SECONDS="2",
    )
    env.update(IDENTITY_ENV)
    env.update(extra_env)
    data_dir.mkdir(parents=True, exist_ok=True)
    log = data_dir / "gateway.log"
    with log.open("wb") as output:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "serve", "gateway"],
            env=env,
            cwd=REPO_ROOT,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        public, admin = f"http://127.0.0.1:{public_port}", f"http://127.0.0.1:{admin_port}"
        _wait_live(f"{public}/health/live", proc, log)
        _wait_live(f"{admin}/health/live", proc, log)
        yield GatewayProcess(public=public, admin=admin, proc=proc)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
