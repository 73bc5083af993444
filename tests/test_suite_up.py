"""`awareness up` starts every service as its own process; each reports SERVING with reflection, over
mTLS with the certificates `awareness up` issued under its data directory, and refuses plaintext."""

from __future__ import annotations

import signal
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.runtime.config import SERVICES, load_settings
from services.runtime.identity import channel_options
from tests.support.suite import SQLITE, Backend, UpSuite, awareness_up

pytestmark = pytest.mark.e2e

START_UP_ONLY = {"AWARENESS_SCORING_BOOTSTRAP_MODEL": "0"}  # the model has its own tests

EXPECTED = {
    "ingest": "awareness.ingest.v1.IngestService",
    "policy": "awareness.policy.v1.PolicyService",
    "scoring": "awareness.scoring.v1.ScoringService",
    "signing": "awareness.signing.v1.SigningService",
    "gdpr": "awareness.gdpr.v1.GdprService",
    "analytics": "awareness.analytics.v1.AnalyticsService",
}


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory, suite_backend: Backend) -> Iterator[UpSuite]:
    data_dir = tmp_path_factory.mktemp(f"suite-{suite_backend.name}")
    with awareness_up(data_dir, suite_backend, extra_env=START_UP_ONLY) as running:
        yield running


def test_gateway_live_answers_200(suite: UpSuite) -> None:
    with urllib.request.urlopen(suite.url + "/health/live", timeout=5) as response:
        assert response.status == 200


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_is_serving_and_reflects_its_methods(suite: UpSuite, service: str) -> None:
    # The gateway's certificate, as `awareness up` issued it under the suite's data directory.
    gateway = load_settings("gateway", suite.env).identity
    assert gateway.cert_file.is_relative_to(suite.data_dir)
    address = suite.addresses[service]
    with grpc.insecure_channel(address) as plaintext:
        with pytest.raises(grpc.RpcError) as refused:
            health_pb2_grpc.HealthStub(plaintext).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    with grpc.secure_channel(
        address, gateway.channel_credentials(), options=channel_options(service)
    ) as channel:
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
    # Signals, not storage: SQLite only. The fixture stops by SIGTERM; Ctrl-C is checked here.
    with awareness_up(tmp_path, SQLITE, extra_env=START_UP_ONLY) as running:
        code, rest = running.stop(signal.SIGINT)
    assert code == 0
    assert "stopped" in rest
