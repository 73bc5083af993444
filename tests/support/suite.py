"""`awareness up` as a test fixture: the whole suite as real processes on free ports.

One start-up for every end-to-end test that goes through the gateway, on either backend:
SQLite files under the data directory (the default a new user gets), or PostgreSQL and Redis
(a fresh database and a Redis key prefix of its own per suite: ``postgres_backend``, which the
``suite_backend`` fixture of tests/conftest.py hands out).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from services.runtime.config import SERVICES
from tests.support.resources import free_port, temporary_database

REPO = Path(__file__).resolve().parents[2]
READY = "all services healthy"


def outside_environment() -> dict[str, str]:
    """This process's environment without what would point a child at another suite or store
    (``AWARENESS_*``, ``DATABASE_URL``, ``REDIS_URL``)."""
    return {
        key: value
        for key, value in os.environ.items()
        if key not in ("DATABASE_URL", "REDIS_URL") and not key.startswith("AWARENESS_")
    }


def run_module(
    *argv: str, env: Mapping[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``python -m <argv>`` from the repository root (where ``services``, ``bench`` and ``tests``
    are found uninstalled), its output as text; the caller checks the exit code."""
    return subprocess.run(
        [sys.executable, "-m", *argv],
        env=None if env is None else dict(env),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@dataclass(frozen=True)
class Backend:
    """Where a suite keeps its state: ``sqlite`` (files in the data directory) or ``postgres``."""

    name: str
    database_url: str = ""
    redis_url: str = ""
    redis_key_prefix: str = ""

    @property
    def postgres(self) -> bool:
        return bool(self.database_url)

    def env(self) -> dict[str, str]:
        if not self.postgres:
            return {}
        env = {"DATABASE_URL": self.database_url}
        if self.redis_url:
            env["REDIS_URL"] = self.redis_url
            env["AWARENESS_GATEWAY_RATE_KEY_PREFIX"] = self.redis_key_prefix
        return env


SQLITE = Backend("sqlite")


@contextlib.contextmanager
def postgres_backend(server_url: str, redis_url: str) -> Iterator[Backend]:
    """A fresh database on ``server_url`` and a Redis key prefix of its own, both gone afterwards
    (so suites running side by side share nothing)."""
    import redis

    prefix = f"awareness-test-{uuid.uuid4().hex[:12]}:ratelimit"
    with temporary_database(server_url, prefix="awareness_e2e") as database_url:
        yield Backend("postgres", database_url=database_url, redis_url=redis_url, redis_key_prefix=prefix)
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    try:
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            client.delete(key)
    finally:
        client.close()


@dataclass
class UpSuite:
    url: str
    env: dict[str, str]
    data_dir: Path
    addresses: dict[str, str]
    backend: Backend
    process: subprocess.Popen[str]
    output: list[str] = field(default_factory=list)

    @property
    def door(self) -> str:
        """The gateway's gRPC door, as a channel target."""
        return f"127.0.0.1:{self.env['AWARENESS_GATEWAY_GRPC_PORT']}"

    @property
    def door_ca(self) -> Path:
        """The development CA the door's certificate chains to (issued by `awareness up`)."""
        return self.data_dir / "door-tls" / "ca.crt"

    def cli(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return run_module("services.cli", *argv, env=self.env)

    def create_key(self, *roles: str, name: str = "e2e") -> str:
        argv = ["keys", "create", "--name", name]
        for role in roles:
            argv += ["--role", role]
        result = self.cli(*argv)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip().splitlines()[0].strip()

    def database_url(self, service: str) -> str:
        """The store ``service`` uses, as ``services.runtime.db.create_db_engine`` takes it."""
        return self.backend.database_url or f"sqlite:///{self.data_dir / f'{service}.db'}"

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
            for p in sorted((self.data_dir / "logs").glob("*.log"))
        )

    def stop(self, sig: signal.Signals = signal.SIGTERM, *, timeout: float = 40.0) -> tuple[int, str]:
        """Stop `awareness up` (which stops its children); its exit code and its remaining output."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait(timeout=10)
        rest = ""
        if self.process.stdout is not None and not self.process.stdout.closed:
            rest = self.process.stdout.read()
            self.process.stdout.close()
        return code, rest


def suite_env(
    data_dir: Path, backend: Backend, extra: Mapping[str, str]
) -> tuple[dict[str, str], dict[str, str]]:
    """The environment of one suite on free ports (nothing inherited that names another store)."""
    env = outside_environment()
    addresses = {service: f"127.0.0.1:{free_port()}" for service in SERVICES}
    for service, address in addresses.items():
        env[f"AWARENESS_{service.upper()}_TARGET"] = address
        env[f"AWARENESS_{service.upper()}_METRICS_PORT"] = str(free_port())
    env.update(
        {
            "AWARENESS_DATA_DIR": str(data_dir),
            "AWARENESS_GATEWAY_PORT": str(free_port()),
            "AWARENESS_GATEWAY_ADMIN_PORT": str(free_port()),
            "AWARENESS_GATEWAY_GRPC_PORT": str(free_port()),
            "PYTHONPATH": str(REPO),
            **backend.env(),
            **extra,
        }
    )
    return env, addresses


@contextlib.contextmanager
def awareness_up(
    data_dir: Path,
    backend: Backend = SQLITE,
    *,
    extra_env: Mapping[str, str] | None = None,
    ready_timeout: float = 120.0,
) -> Iterator[UpSuite]:
    """Run `awareness up` until every service is healthy; stop it (by its pid) afterwards."""
    env, addresses = suite_env(data_dir, backend, extra_env or {})
    process = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "up", "--timeout", str(ready_timeout)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
    )
    suite = UpSuite(
        url=f"http://127.0.0.1:{env['AWARENESS_GATEWAY_PORT']}",
        env=env,
        data_dir=data_dir,
        addresses=addresses,
        backend=backend,
        process=process,
    )
    try:
        assert process.stdout is not None
        # readline blocks, but `awareness up` gives up and exits by itself after ready_timeout.
        deadline = time.monotonic() + ready_timeout + 30
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            suite.output.append(line)
            if READY in line:
                break
        assert any(READY in line for line in suite.output), "".join(suite.output) + suite.logs()
        yield suite
    finally:
        suite.stop()
