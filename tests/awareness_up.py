"""`awareness up` as a test fixture: the whole suite as real processes on free ports.

One start-up for every end-to-end test that goes through the gateway, on either backend:
SQLite files under the data directory (the default a new user gets), or PostgreSQL and Redis
(a fresh database and a Redis key prefix of its own per suite, see ``suite_backend`` in
tests/conftest.py).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from services.runtime.config import SERVICES
from tests.resilience.harness import free_port

REPO = Path(__file__).resolve().parent.parent
READY = "all services healthy"


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


@dataclass
class UpSuite:
    url: str
    env: dict[str, str]
    data_dir: Path
    addresses: dict[str, str]
    backend: Backend
    process: subprocess.Popen[str]
    output: list[str] = field(default_factory=list)

    def cli(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "services.cli", *argv],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
        )

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
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "REDIS_URL") and not k.startswith("AWARENESS_")
    }
    addresses = {service: f"127.0.0.1:{free_port()}" for service in SERVICES}
    for service, address in addresses.items():
        env[f"AWARENESS_{service.upper()}_TARGET"] = address
        env[f"AWARENESS_{service.upper()}_METRICS_PORT"] = str(free_port())
    env.update(
        {
            "AWARENESS_DATA_DIR": str(data_dir),
            "AWARENESS_GATEWAY_PORT": str(free_port()),
            "AWARENESS_GATEWAY_ADMIN_PORT": str(free_port()),
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
