"""A real gateway process: /metrics and /health/dependencies answer on the admin port only."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import INTERNAL_SECRET, free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
START_SECONDS = 60.0


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


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, subprocess.Popen[bytes]]]:
    data_dir = tmp_path_factory.mktemp("admin-port")
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
        AWARENESS_INTERNAL_SECRET=INTERNAL_SECRET.decode(),
        AWARENESS_SHUTDOWN_GRACE_SECONDS="2",
    )
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
        _wait_live(f"http://127.0.0.1:{public_port}/health/live", proc, log)
        _wait_live(f"http://127.0.0.1:{admin_port}/health/live", proc, log)
        yield f"http://127.0.0.1:{public_port}", f"http://127.0.0.1:{admin_port}", proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


@pytest.mark.parametrize("path", ["/metrics", "/health/dependencies"])
def test_operator_endpoints_are_not_on_the_public_port(
    gateway: tuple[str, str, subprocess.Popen[bytes]], path: str
) -> None:
    public, admin, _ = gateway
    assert httpx.get(public + path, timeout=10).status_code == 404
    assert httpx.get(admin + path, timeout=10).status_code == 200


def test_the_admin_port_serves_the_gateway_metrics_and_probes_but_no_api(
    gateway: tuple[str, str, subprocess.Popen[bytes]],
) -> None:
    public, admin, _ = gateway
    httpx.get(public + "/v1/events", timeout=10)  # unauthenticated: counted by the public app
    metrics = httpx.get(admin + "/metrics", timeout=10).text
    assert 'awareness_gateway_http_requests_total{method="GET",route="/v1/events",status="401"}' in metrics
    assert httpx.get(admin + "/health/ready", timeout=10).status_code == 200
    assert httpx.get(admin + "/v1/events", timeout=10).status_code == 404
    assert httpx.get(admin + "/openapi.json", timeout=10).status_code == 404


def test_sigterm_stops_both_servers(gateway: tuple[str, str, subprocess.Popen[bytes]]) -> None:
    public, admin, proc = gateway
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    for url in (public, admin):
        with pytest.raises(httpx.TransportError):
            httpx.get(url + "/health/live", timeout=2)
