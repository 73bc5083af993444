"""Worker processes (services/runtime/workers.py): the variables, the ports of each worker, and the
supervisor's life with stand-in workers (tests/runtime/fake_worker.py); the real suite with workers
is tests/test_workers_up.py."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.gateway.config import load_gateway_config
from services.runtime.config import (
    DEFAULT_GATEWAY_ADMIN_PORT,
    DEFAULT_METRICS_PORTS,
    DEFAULT_WORKERS,
    WORKER_INDEX_VAR,
    WORKER_PORT_STRIDE,
    ConfigError,
    load_settings,
    parse_workers,
    worker_port,
)
from services.runtime.workers import exit_status, is_supervisor, reuse_port_socket, run_workers
from tests.support.suite import REPO, SQLITE, outside_environment, run_module, suite_env

POSTGRES = "postgresql+psycopg2://nobody@127.0.0.1:1/none"  # never connected to here


def _env(tmp_path: Path, **variables: str) -> dict[str, str]:
    return {"AWARENESS_DATA_DIR": str(tmp_path), **variables}


# --- AWARENESS_<SERVICE>_WORKERS -----------------------------------------------------------


@pytest.mark.parametrize("service", ["gateway", "ingest"])
def test_the_default_is_one_worker(service: str) -> None:
    assert DEFAULT_WORKERS == 1
    assert parse_workers({}, service) == 1
    assert parse_workers({f"AWARENESS_{service.upper()}_WORKERS": " "}, service) == 1


@pytest.mark.parametrize(("raw", "expected"), [("1", 1), ("3", 3), (" 2 ", 2)])
def test_a_positive_integer_is_the_count(raw: str, expected: int) -> None:
    assert parse_workers({"AWARENESS_INGEST_WORKERS": raw}, "ingest") == expected


@pytest.mark.parametrize("raw", ["auto", "AUTO", " Auto "])
def test_auto_is_one_per_cpu(raw: str) -> None:
    assert parse_workers({"AWARENESS_GATEWAY_WORKERS": raw}, "gateway") == (os.cpu_count() or 1)


@pytest.mark.parametrize("raw", ["0", "-1", "two", "1.5", "2x"])
def test_anything_else_is_refused_naming_the_variable(raw: str) -> None:
    with pytest.raises(ConfigError, match="AWARENESS_GATEWAY_WORKERS must be a positive integer or auto"):
        parse_workers({"AWARENESS_GATEWAY_WORKERS": raw}, "gateway")


def test_other_services_have_no_workers(tmp_path: Path) -> None:
    env = _env(tmp_path, AWARENESS_SCORING_WORKERS="4", DATABASE_URL=POSTGRES)
    assert parse_workers(env, "scoring") == 1
    assert load_settings("scoring", env).workers == 1


@pytest.mark.parametrize("service", ["gateway", "ingest"])
def test_several_workers_on_sqlite_are_refused(tmp_path: Path, service: str) -> None:
    variable = f"AWARENESS_{service.upper()}_WORKERS"
    with pytest.raises(ConfigError, match=f"{variable}=2 needs PostgreSQL"):
        load_settings(service, _env(tmp_path, **{variable: "2"}))
    with pytest.raises(ConfigError, match="needs PostgreSQL"):
        load_settings(service, _env(tmp_path, **{variable: "2", "DATABASE_URL": "sqlite:///x.db"}))
    # Only the service's own store matters: a PostgreSQL URL for another service does not count.
    with pytest.raises(ConfigError, match="needs PostgreSQL"):
        load_settings(service, _env(tmp_path, **{variable: "2", "AWARENESS_GDPR_DATABASE_URL": POSTGRES}))
    assert load_settings(service, _env(tmp_path, **{variable: "1"})).workers == 1


def test_several_workers_on_postgresql_make_a_supervisor(tmp_path: Path) -> None:
    settings = load_settings("ingest", _env(tmp_path, AWARENESS_INGEST_WORKERS="2", DATABASE_URL=POSTGRES))
    assert (settings.workers, settings.worker_index) == (2, None)
    assert is_supervisor(settings)
    per_service = _env(tmp_path, AWARENESS_INGEST_WORKERS="2", AWARENESS_INGEST_DATABASE_URL=POSTGRES)
    assert load_settings("ingest", per_service).workers == 2
    worker = load_settings("ingest", {**per_service, WORKER_INDEX_VAR: "1"})
    assert (worker.workers, worker.worker_index) == (2, 1)
    assert not is_supervisor(worker)
    assert not is_supervisor(load_settings("ingest", _env(tmp_path)))


@pytest.mark.parametrize("raw", ["2", "-1", "x"])
def test_a_worker_index_out_of_range_is_refused(tmp_path: Path, raw: str) -> None:
    env = _env(tmp_path, AWARENESS_INGEST_WORKERS="2", DATABASE_URL=POSTGRES, **{WORKER_INDEX_VAR: raw})
    with pytest.raises(ConfigError, match=WORKER_INDEX_VAR):
        load_settings("ingest", env)


def test_the_cli_refuses_workers_on_sqlite_with_exit_78(tmp_path: Path) -> None:
    env = {**outside_environment(), **_env(tmp_path, AWARENESS_INGEST_WORKERS="2", PYTHONPATH=str(REPO))}
    result = run_module("services.cli", "serve", "ingest", env=env, timeout=60)
    assert result.returncode == 78, result.stderr
    assert "AWARENESS_INGEST_WORKERS=2 needs PostgreSQL" in result.stderr
    assert not list(tmp_path.glob("*.db"))  # refused before any store was opened


def test_awareness_up_refuses_workers_on_sqlite_before_starting_anything(tmp_path: Path) -> None:
    env, _ = suite_env(tmp_path, SQLITE, {"AWARENESS_GATEWAY_WORKERS": "2"})
    result = run_module("services.cli", "up", "--timeout", "5", env=env, timeout=120)
    assert result.returncode == 78, result.stdout + result.stderr
    assert "AWARENESS_GATEWAY_WORKERS=2 needs PostgreSQL" in result.stderr
    assert "starting the suite" not in result.stdout


# --- ports ---------------------------------------------------------------------------------------


def test_a_workers_own_port_is_the_base_plus_a_stride_per_index() -> None:
    assert WORKER_PORT_STRIDE == 100
    assert worker_port(9401, None) == 9401
    assert worker_port(9401, 0) == 9401
    assert worker_port(9401, 1) == 9501
    assert worker_port(9400, 3) == 9700
    assert worker_port(0, 2) == 0  # none stays none
    with pytest.raises(ConfigError):
        worker_port(65500, 1)


def test_each_ingest_worker_has_its_metrics_port_and_shares_the_others(tmp_path: Path) -> None:
    base = _env(tmp_path, AWARENESS_INGEST_WORKERS="2", DATABASE_URL=POSTGRES, AWARENESS_HEALTH_PORT="8090")
    first = load_settings("ingest", {**base, WORKER_INDEX_VAR: "0"})
    second = load_settings("ingest", {**base, WORKER_INDEX_VAR: "1"})
    assert first.metrics_port == DEFAULT_METRICS_PORTS["ingest"] == 9401
    assert second.metrics_port == 9501
    assert first.grpc_port == second.grpc_port  # shared through SO_REUSEPORT
    assert first.health_port == second.health_port == 8090
    unmetered = load_settings("ingest", {**base, WORKER_INDEX_VAR: "1", "AWARENESS_METRICS_PORT": "0"})
    assert unmetered.metrics_port == 0


def test_each_gateway_worker_has_its_admin_port_and_shares_the_public_ones(tmp_path: Path) -> None:
    base = _env(tmp_path, AWARENESS_GATEWAY_WORKERS="2", DATABASE_URL=POSTGRES)
    first = load_settings("gateway", {**base, WORKER_INDEX_VAR: "0"})
    second = load_settings("gateway", {**base, WORKER_INDEX_VAR: "1"})
    assert load_gateway_config(first).admin_port == DEFAULT_GATEWAY_ADMIN_PORT == 9400
    assert load_gateway_config(second).admin_port == 9500
    assert load_gateway_config(first).grpc_port == load_gateway_config(second).grpc_port
    assert first.grpc_port == second.grpc_port
    off = load_settings("gateway", {**base, WORKER_INDEX_VAR: "1", "AWARENESS_GATEWAY_ADMIN_PORT": "0"})
    assert load_gateway_config(off).admin_port == 0


def test_reuse_port_sockets_share_one_port() -> None:
    first = reuse_port_socket("127.0.0.1", 0)
    try:
        port = first.getsockname()[1]
        second = reuse_port_socket("127.0.0.1", port)
        second.close()
        with socket.socket() as plain, pytest.raises(OSError):
            plain.bind(("127.0.0.1", port))  # without SO_REUSEPORT the port is taken
    finally:
        first.close()


# --- the supervisor ------------------------------------------------------------------------------


def test_exit_status_is_never_zero_and_shows_a_signal_as_the_shell_does() -> None:
    assert exit_status(0) == 1
    assert exit_status(3) == 3
    assert exit_status(78) == 78
    assert exit_status(-signal.SIGKILL) == 137


def _fake_command(directory: Path) -> list[str]:
    return [sys.executable, "-m", "tests.runtime.fake_worker", "worker", str(directory)]


def _pids(directory: Path, count: int, *, timeout: float = 30.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        files = [directory / f"worker-{i}.pid" for i in range(count)]
        if all(f.exists() and f.read_text() for f in files):
            return [int(f.read_text()) for f in files]
        time.sleep(0.05)
    raise AssertionError(f"the workers did not start: {list(directory.iterdir())}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is not alive (its parent, the supervisor, may not have reaped it yet).
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _test_env(**variables: str) -> dict[str, str]:
    return {**outside_environment(), "PYTHONPATH": str(REPO), **variables}


@pytest.mark.parametrize(("code", "status"), [(3, 3), (0, 1)])
def test_a_worker_that_exits_stops_the_others_and_gives_its_status(
    tmp_path: Path, code: int, status: int
) -> None:
    env = _test_env(FAKE_EXIT_1=str(code))
    result = run_workers(
        "ingest", 3, command=_fake_command(tmp_path), env=env, grace_seconds=10, poll_seconds=0.05
    )
    assert result == status
    pids = _pids(tmp_path, 3)
    assert not any(_alive(pid) for pid in pids)


@pytest.fixture
def supervisor(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[subprocess.Popen[bytes]]:
    """A supervisor of two stand-ins, as its own process (signals reach it as they would in a pod)."""
    extra: dict[str, str] = getattr(request, "param", {})
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.runtime.fake_worker", "supervise", str(tmp_path), "2", "1.0"],
        env=_test_env(**extra),
        cwd=REPO,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        for pid_file in tmp_path.glob("worker-*.pid"):  # stop only the stand-ins this test started
            pid = int(pid_file.read_text() or 0)
            if pid and _alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_reaches_every_worker(
    supervisor: subprocess.Popen[bytes], tmp_path: Path, sig: signal.Signals
) -> None:
    pids = _pids(tmp_path, 2)
    supervisor.send_signal(sig)
    assert supervisor.wait(timeout=20) == 0
    assert not any(_alive(pid) for pid in pids)


def test_a_killed_worker_takes_the_supervisor_and_the_other_worker_down(
    supervisor: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    first, second = _pids(tmp_path, 2)
    os.kill(second, signal.SIGKILL)
    assert supervisor.wait(timeout=20) == 128 + signal.SIGKILL
    assert not _alive(first)


@pytest.mark.parametrize("supervisor", [{"FAKE_IGNORE_TERM": "1"}], indirect=True)
def test_a_worker_that_ignores_sigterm_is_killed_after_the_grace(
    supervisor: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    pids = _pids(tmp_path, 2)
    started = time.monotonic()
    supervisor.send_signal(signal.SIGTERM)
    assert supervisor.wait(timeout=20) == 128 + signal.SIGKILL
    assert time.monotonic() - started >= 1.0  # the grace first
    assert not any(_alive(pid) for pid in pids)


def test_workers_do_not_outlive_a_killed_supervisor(
    supervisor: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    pids = _pids(tmp_path, 2)
    supervisor.kill()
    supervisor.wait(timeout=10)
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in pids)
