"""awareness_client.connect: the bearer on every call, and retries for idempotent methods only.

A real gRPC server on 127.0.0.1 stands in for the door and answers UNAVAILABLE to the first call
of each method: gRPC's own retry policy, from the service config connect builds out of the wheel's
descriptors, must retry GetEvent (NO_SIDE_EFFECTS) and must not retry AppendEvent.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import awareness_client
import grpc
import pytest
from awareness.ingest.v1 import ingest_pb2, ingest_pb2_grpc

GET_EVENT = "/awareness.ingest.v1.IngestService/GetEvent"
APPEND_EVENT = "/awareness.ingest.v1.IngestService/AppendEvent"


class _FlakyDoor(grpc.GenericRpcHandler):  # type: ignore[misc]
    """Fails the first call of every method with UNAVAILABLE; records each call's authorization."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self.authorizations: list[str] = []

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = details.method

        def answer(request: bytes, context: grpc.ServicerContext) -> bytes:
            self.calls[method] = self.calls.get(method, 0) + 1
            self.authorizations += [v for k, v in context.invocation_metadata() if k == "authorization"]
            if self.calls[method] == 1:
                context.abort(grpc.StatusCode.UNAVAILABLE, "restarting")
            return b""

        return grpc.unary_unary_rpc_method_handler(answer)


@pytest.fixture
def door() -> Iterator[tuple[_FlakyDoor, str]]:
    handler = _FlakyDoor()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers([handler])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield handler, f"127.0.0.1:{port}"
    finally:
        server.stop(0)


def test_an_idempotent_method_is_retried_with_the_key_on_every_attempt(door: tuple[_FlakyDoor, str]) -> None:
    handler, target = door
    with awareness_client.connect(target, api_key="awk_test", tls=False) as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        stub.GetEvent(ingest_pb2.GetEventRequest(name="events/x"), timeout=10)
    assert handler.calls[GET_EVENT] == 2
    assert handler.authorizations == ["Bearer awk_test", "Bearer awk_test"]


def test_an_append_is_not_retried(door: tuple[_FlakyDoor, str]) -> None:
    handler, target = door
    with awareness_client.connect(target, token="a.jwt.token", tls=False) as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        with pytest.raises(grpc.RpcError) as failed:
            stub.AppendEvent(ingest_pb2.AppendEventRequest(), timeout=10)
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert handler.calls[APPEND_EVENT] == 1
    assert handler.authorizations == ["Bearer a.jwt.token"]


@pytest.mark.asyncio
async def test_the_asyncio_channel_retries_and_authenticates_too(door: tuple[_FlakyDoor, str]) -> None:
    handler, target = door
    async with awareness_client.connect_aio(target, api_key="awk_test", tls=False) as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        await stub.GetEvent(ingest_pb2.GetEventRequest(name="events/x"), timeout=10)
    assert handler.calls[GET_EVENT] == 2
    assert handler.authorizations == ["Bearer awk_test", "Bearer awk_test"]


def test_the_retry_policy_names_idempotent_methods_only() -> None:
    config: dict[str, Any] = json.loads(awareness_client.retry_service_config())
    names = {(n["service"], n["method"]) for n in config["methodConfig"][0]["name"]}
    assert ("awareness.ingest.v1.IngestService", "GetEvent") in names
    assert ("awareness.ingest.v1.IngestService", "AppendEvent") not in names
    assert ("awareness.ingest.v1.IngestService", "StreamAppendEvents") not in names


def test_exactly_one_credential_is_required() -> None:
    with pytest.raises(ValueError):
        awareness_client.connect("127.0.0.1:1", tls=False)
    with pytest.raises(ValueError):
        awareness_client.connect("127.0.0.1:1", api_key="awk_x", token="a.b.c", tls=False)
