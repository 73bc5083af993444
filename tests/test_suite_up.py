"""`awareness up` starts every service as its own process; each reports SERVING with reflection."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.runtime.config import SERVICES
from tests.conftest import free_port

pytestmark = pytest.mark.e2e

EXPECTED = {
    "ingest": "awareness.ingest.v1.IngestService",
    "policy": "awareness.policy.v1.PolicyService",
    "scoring": "awareness.scoring.v1.ScoringService",
    "signing": "awareness.signing.v1.SigningService",
    "gdpr": "awareness.gdpr.v1.GdprService",
}


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    data_dir = tmp_path_factory.mktemp("suite")
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env["AWARENESS_SCORING_BOOTSTRAP_MODEL"] = "0"  # start-up only; the model has its own tests
    addresses = {service: f"127.0.0.1:{free_port()}" for service in SERVICES}
    for service, address in addresses.items():
        env[f"AWARENESS_{service.upper()}_TARGET"] = address
        env[f"AWARENESS_{service.upper()}_METRICS_PORT"] = str(free_port())
    gateway_port = free_port()
    env.update({"AWARENESS_DATA_DIR": str(data_dir), "AWARENESS_GATEWAY_PORT": str(gateway_port)})
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "up"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 90
        lines: list[str] = []
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "all services healthy" in line:
                break
        assert any("all services healthy" in line for line in lines), "".join(lines) + _logs(data_dir)
        yield {"gateway": f"http://127.0.0.1:{gateway_port}", **addresses}
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _logs(data_dir: Path) -> str:
    out = []
    for path in sorted((data_dir / "logs").glob("*.log")):
        out.append(f"--- {path.name}\n{path.read_text()[-3000:]}")
    return "\n".join(out)


def test_gateway_live_answers_200(suite: dict[str, str]) -> None:
    with urllib.request.urlopen(suite["gateway"] + "/health/live", timeout=5) as response:
        assert response.status == 200


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_is_serving_and_reflects_its_methods(suite: dict[str, str], service: str) -> None:
    with grpc.insecure_channel(suite[service]) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", EXPECTED[service]):
            reply = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        requests = iter(
            [
                reflection_pb2.ServerReflectionRequest(list_services=""),
                reflection_pb2.ServerReflectionRequest(file_containing_symbol=EXPECTED[service]),
            ]
        )
        responses = list(reflection.ServerReflectionInfo(requests, timeout=5))
        listed = {s.name for s in responses[0].list_services_response.service}
        assert EXPECTED[service] in listed
        from google.protobuf import descriptor_pb2

        files = [
            descriptor_pb2.FileDescriptorProto.FromString(raw)
            for raw in responses[1].file_descriptor_response.file_descriptor_proto
        ]
        methods = {
            m.name
            for f in files
            for s in f.service
            if f"{f.package}.{s.name}" == EXPECTED[service]
            for m in s.method
        }
        assert len(methods) >= 6, methods


def test_suite_stops_cleanly_on_interrupt(tmp_path: Path) -> None:
    # Covered by the fixture's teardown too; here we check the exit code of a short-lived suite.
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env["AWARENESS_SCORING_BOOTSTRAP_MODEL"] = "0"
    for service in SERVICES:
        env[f"AWARENESS_{service.upper()}_TARGET"] = f"127.0.0.1:{free_port()}"
        env[f"AWARENESS_{service.upper()}_METRICS_PORT"] = str(free_port())
    env.update({"AWARENESS_DATA_DIR": str(tmp_path), "AWARENESS_GATEWAY_PORT": str(free_port())})
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "up"], env=env, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line or "all services healthy" in line:
            break
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=40) == 0
    rest = proc.stdout.read()
    assert "stopped" in rest
