"""A failure inside the door is INTERNAL with a reference, never the exception's text, and counted."""

from __future__ import annotations

from typing import Any, cast

import grpc
import pytest

from services.gateway.admission import Admitted
from services.gateway.domain.descriptors import DoorMethod
from services.gateway.domain.ratelimit import Decision
from services.gateway.door import GrpcDoor, create_door_server
from services.runtime import auth
from services.runtime.metrics import ServiceMetrics

LIST_EVENTS = "/awareness.ingest.v1.IngestService/ListEvents"


class _AdmitsEveryone:
    async def admit(self, *, authorization: str | None, ip: str, permission: str) -> Admitted:
        principal = auth.Principal(subject="key:test", roles=frozenset({"analyst"}))
        return Admitted(principal=principal, decision=Decision(True, 0, 0, 0, 0, None, None))


class _BrokenChannels:
    def channel(self, name: str) -> Any:
        raise RuntimeError("secret internals: /var/lib/awareness")


@pytest.mark.asyncio
async def test_a_bug_in_the_door_is_internal_with_a_reference_and_counted() -> None:
    metrics = ServiceMetrics("gateway")
    door = GrpcDoor(
        methods=[
            DoorMethod(LIST_EVENTS, "ingest", "events:read", client_streaming=False, server_streaming=False)
        ],
        channels=cast(Any, _BrokenChannels()),
        admission=cast(Any, _AdmitsEveryone()),
        timeout_seconds=5,
        method_timeouts={},
        metrics=metrics,
    )
    server, port = create_door_server(door, host="127.0.0.1", port=0, tls=None)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await channel.unary_unary(LIST_EVENTS)(b"", timeout=5)
    finally:
        await server.stop(0)
    assert failed.value.code() == grpc.StatusCode.INTERNAL
    assert "reference" in (failed.value.details() or "")
    assert "secret internals" not in (failed.value.details() or "")
    counted = metrics.registry.get_sample_value(
        "awareness_gateway_door_requests_total", {"method": LIST_EVENTS, "code": "INTERNAL"}
    )
    assert counted == 1
