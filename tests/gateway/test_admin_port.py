"""A real gateway process: /metrics and /health/dependencies answer on the admin port only."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import httpx
import pytest

from tests.gateway.processes import GatewayProcess, gateway_process


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    with gateway_process(tmp_path_factory.mktemp("admin-port")) as running:
        yield running


@pytest.mark.parametrize("path", ["/metrics", "/health/dependencies"])
def test_operator_endpoints_are_not_on_the_public_port(gateway: GatewayProcess, path: str) -> None:
    assert httpx.get(gateway.public + path, timeout=10).status_code == 404
    assert httpx.get(gateway.admin + path, timeout=10).status_code == 200


def test_the_admin_port_serves_the_gateway_metrics_and_probes_but_no_api(gateway: GatewayProcess) -> None:
    httpx.get(gateway.public + "/v1/events", timeout=10)  # unauthenticated: counted by the public app
    metrics = httpx.get(gateway.admin + "/metrics", timeout=10).text
    assert 'awareness_gateway_http_requests_total{method="GET",route="/v1/events",status="401"}' in metrics
    assert httpx.get(gateway.admin + "/health/ready", timeout=10).status_code == 200
    assert httpx.get(gateway.admin + "/v1/events", timeout=10).status_code == 404
    assert httpx.get(gateway.admin + "/openapi.json", timeout=10).status_code == 404


def test_sigterm_stops_both_servers(gateway: GatewayProcess) -> None:
    gateway.proc.send_signal(signal.SIGTERM)
    assert gateway.proc.wait(timeout=30) == 0
    for url in (gateway.public, gateway.admin):
        with pytest.raises(httpx.TransportError):
            httpx.get(url + "/health/live", timeout=2)
