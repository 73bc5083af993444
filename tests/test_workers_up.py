"""`awareness up` on PostgreSQL with two gateway and two ingest workers (AWARENESS_<SERVICE>_WORKERS):
each worker is a real process under its service's supervisor; new connections reach both gateway
workers through the shared port; one ingest worker leads integration and every event is
integrated; a stop reaches every worker, and a killed worker takes its supervisor down."""

from __future__ import annotations

import functools
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.runtime.config import WORKER_INDEX_VAR, WORKER_PORT_STRIDE
from tests.resilience.harness import metric_value, parse_metrics, wait_until
from tests.support.resources import free_port
from tests.support.suite import REPO, Backend, UpSuite, awareness_up, outside_environment, postgres_backend

pytestmark = pytest.mark.e2e

WORKERS = 2
EVENTS = 200
UNLIMITED = "1000000"


def _stride_free_port() -> int:
    """A free port whose second worker's port (+ WORKER_PORT_STRIDE) is free too."""
    for _ in range(100):
        port = free_port()
        if port + WORKER_PORT_STRIDE > 65535:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + WORKER_PORT_STRIDE))
            except OSError:
                continue
        return port
    raise AssertionError("no free port pair")


def _worker_ports(base: int) -> list[int]:
    return [base + WORKER_PORT_STRIDE * index for index in range(WORKERS)]


# --- processes, by /proc -------------------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state first, then the parent's pid)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None


def _alive(pid: int) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None and fields[1] == str(pid) and fields[0] != "Z":
                found.append(int(entry.name))
    return sorted(found)


def _command_line(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except FileNotFoundError:
        return []
    return [argument for argument in raw.split("\0") if argument]


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
    except FileNotFoundError:
        return {}
    return dict(item.split("=", 1) for item in raw.split("\0") if "=" in item)


def _serving(pid: int, service: str) -> bool:
    return _command_line(pid)[-2:] == ["serve", service]


def _supervisor_and_workers(suite: UpSuite, service: str) -> tuple[int, list[int]]:
    (supervisor,) = [pid for pid in _children(suite.process.pid) if _serving(pid, service)]
    return supervisor, _children(supervisor)


# --- HTTP ----------------------------------------------------------------------------------------


def _metrics(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return parse_metrics(response.read().decode())


def _answers(port: int, path: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _post_on_a_new_connection(port: int, key: str, event: dict[str, str]) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(
            "POST",
            "/v1/events",
            body=json.dumps(event),
            headers={
                "Authorization": f"Bearer {key}",
                "Content-Type": "application/json",
                "Connection": "close",
            },
        )
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def _receipt_state(port: int, key: str, event_id: str) -> str:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(
            "GET", f"/v1/events/{event_id}/receipt", headers={"Authorization": f"Bearer {key}"}
        )
        response = connection.getresponse()
        body = response.read()
        assert response.status == 200, body
        return str(json.loads(body)["state"])
    finally:
        connection.close()


# --- the suite with workers ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def postgres(postgres_url: str, redis_url: str) -> Iterator[Backend]:
    with postgres_backend(postgres_url, redis_url) as backend:
        yield backend


def test_the_suite_runs_and_stops_every_worker(tmp_path: Path, postgres: Backend) -> None:
    admin_base, ingest_metrics_base = _stride_free_port(), _stride_free_port()
    extra = {
        "AWARENESS_GATEWAY_WORKERS": str(WORKERS),
        "AWARENESS_INGEST_WORKERS": str(WORKERS),
        "AWARENESS_GATEWAY_ADMIN_PORT": str(admin_base),
        "AWARENESS_INGEST_METRICS_PORT": str(ingest_metrics_base),
        "AWARENESS_SCORING_BOOTSTRAP_MODEL": "0",
        "AWARENESS_GATEWAY_RATE_PRINCIPAL_PER_MIN": UNLIMITED,
        "AWARENESS_GATEWAY_RATE_IP_PER_MIN": UNLIMITED,
        "AWARENESS_GATEWAY_RATE_GLOBAL_PER_MIN": UNLIMITED,
        "AWARENESS_INGEST_CHECKPOINT_INTERVAL_MS": "200",
    }
    all_workers: list[int] = []
    with awareness_up(tmp_path, postgres, extra_env=extra, ready_timeout=150) as suite:
        output = "".join(suite.output)
        assert f"gateway runs {WORKERS} worker processes" in output, output
        assert f"ingest runs {WORKERS} worker processes" in output, output

        # (a) each supervisor has two workers, worker i with AWARENESS_WORKER_INDEX=i.
        supervisors = {}
        for service in ("gateway", "ingest"):
            supervisor, workers = _supervisor_and_workers(suite, service)
            assert len(workers) == WORKERS, (service, workers)
            assert all(_serving(pid, service) for pid in workers)
            assert sorted(_environ(pid)[WORKER_INDEX_VAR] for pid in workers) == ["0", "1"]
            supervisors[service] = supervisor
            all_workers += workers
        # Both gateway workers listen before the traffic starts (each on its own admin port too).
        for port in _worker_ports(admin_base):
            wait_until(
                functools.partial(_answers, port, "/health/ready"), timeout=60, what=f"admin port {port}"
            )
        for port in _worker_ports(ingest_metrics_base):
            wait_until(functools.partial(_answers, port, "/metrics"), timeout=60, what=f"metrics port {port}")

        # (b) new connections, one per event, reach both gateway workers through the shared port.
        key = suite.create_key("admin")
        gateway_port = int(suite.env["AWARENESS_GATEWAY_PORT"])
        event_ids = [str(uuid.uuid4()) for _ in range(EVENTS)]
        for event_id in event_ids:
            event = {
                "eventId": event_id,
                "type": "phishing.clicked",
                "source": "workers-test",
                "subject": f"{event_id[:8]}@example.org",
                "occurredAt": "2024-05-01T12:00:00Z",
            }
            status, body = _post_on_a_new_connection(gateway_port, key, event)
            assert status == 200, body
        served = [
            metric_value(_metrics(port), "awareness_gateway_http_requests_total", method="POST", status="200")
            for port in _worker_ports(admin_base)
        ]
        assert all(count > 0 for count in served), served
        assert sum(served) >= EVENTS, served

        # (c) exactly one ingest worker leads integration, and every event is integrated and checkpointed.
        def leaders() -> list[float]:
            return [
                metric_value(_metrics(port), "awareness_ingest_integrator_leader")
                for port in _worker_ports(ingest_metrics_base)
            ]

        wait_until(lambda: sum(leaders()) == 1, timeout=30, what="one integrator leader")
        assert sorted(leaders()) == [0.0, 1.0]
        pending = list(event_ids)

        def all_checkpointed() -> bool:
            nonlocal pending
            pending = [e for e in pending if _receipt_state(gateway_port, key, e) != "STATE_CHECKPOINTED"]
            return not pending

        wait_until(all_checkpointed, timeout=90, interval=1.0, what="every event checkpointed")
        verified = suite.cli("verify", "--quiet")
        assert verified.returncode == 0, verified.stdout + verified.stderr

        # (d) SIGTERM to `awareness up` stops the supervisors, which stop every worker.
        code, rest = suite.stop(signal.SIGTERM, timeout=60)
        assert code == 0, rest
    stopped = [*all_workers, *supervisors.values()]
    wait_until(lambda: not any(_alive(pid) for pid in stopped), timeout=10, what="every worker stopped")


def test_a_killed_ingest_worker_takes_its_supervisor_and_the_other_worker_down(
    tmp_path: Path, fresh_postgres_db: str
) -> None:
    metrics_base = _stride_free_port()
    env = {
        **outside_environment(),
        "PYTHONPATH": str(REPO),
        "AWARENESS_DATA_DIR": str(tmp_path),
        "DATABASE_URL": fresh_postgres_db,
        "AWARENESS_INGEST_WORKERS": str(WORKERS),
        "AWARENESS_GRPC_PORT": str(free_port()),
        "AWARENESS_METRICS_PORT": str(metrics_base),
        "AWARENESS_SHUTDOWN_GRACE_SECONDS": "2",
    }
    with (tmp_path / "ingest.log").open("wb") as log_file:
        supervisor = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "serve", "ingest"],
            env=env,
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=log_file,
        )
    workers: list[int] = []
    try:
        # Both workers migrated the fresh database together and serve (each on its own metrics port).
        for port in _worker_ports(metrics_base):
            wait_until(functools.partial(_answers, port, "/metrics"), timeout=90, what=f"worker on {port}")
        workers = _children(supervisor.pid)
        assert len(workers) == WORKERS
        killed, survivor = workers
        os.kill(killed, signal.SIGKILL)
        code = supervisor.wait(timeout=30)
        assert code == 128 + signal.SIGKILL
        wait_until(lambda: not _alive(survivor), timeout=10, what="the other worker stopped")
        log = (tmp_path / "ingest.log").read_text(errors="replace")
        assert "worker exited; stopping the others" in log, log[-3000:]
        assert sum('"message": "worker started"' in line for line in log.splitlines()) == WORKERS
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait(timeout=10)
        for pid in workers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
