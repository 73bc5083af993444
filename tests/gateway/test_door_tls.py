"""The door's TLS: it serves the certificate files it is given, and a renewed pair (as cert-manager
writes into a mounted Secret) at the next handshake, without a restart. Real sockets, real TLS."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.gateway.door import GrpcDoor, create_door_server
from services.runtime.devtls import ensure_server_certificate
from services.runtime.metrics import ServiceMetrics


def _door() -> GrpcDoor:
    # No methods: every call answers UNIMPLEMENTED, which proves the TLS handshake went through.
    return GrpcDoor(
        methods=[],
        channels=cast(Any, None),
        admission=cast(Any, None),
        timeout_seconds=5,
        method_timeouts={},
        metrics=ServiceMetrics("gateway"),
    )


async def _code(port: int, ca: bytes) -> grpc.StatusCode:
    credentials = grpc.ssl_channel_credentials(ca)
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
        try:
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        except grpc.aio.AioRpcError as error:
            return error.code()
    return grpc.StatusCode.OK


@pytest.mark.asyncio
async def test_the_door_serves_its_certificate_and_picks_up_a_renewed_one(tmp_path: Path) -> None:
    first = ensure_server_certificate(tmp_path / "first", "door")
    second = ensure_server_certificate(tmp_path / "second", "door")  # another CA, as after a re-issue
    served = tmp_path / "mounted"
    served.mkdir()
    chain, key = served / "tls.crt", served / "tls.key"
    shutil.copy(first.chain_file, chain)
    shutil.copy(first.key_file, key)
    server, port = create_door_server(_door(), host="127.0.0.1", port=0, tls=(chain, key))
    await server.start()
    try:
        assert await _code(port, first.ca_file.read_bytes()) == grpc.StatusCode.UNIMPLEMENTED
        assert await _code(port, second.ca_file.read_bytes()) == grpc.StatusCode.UNAVAILABLE
        # The renewal: new files in place (newer modification times), no restart.
        for source, target in ((second.chain_file, chain), (second.key_file, key)):
            target.write_bytes(source.read_bytes())
            os.utime(target, ns=(target.stat().st_atime_ns, target.stat().st_mtime_ns + 1_000_000_000))
        await asyncio.sleep(0)
        assert await _code(port, second.ca_file.read_bytes()) == grpc.StatusCode.UNIMPLEMENTED
        assert await _code(port, first.ca_file.read_bytes()) == grpc.StatusCode.UNAVAILABLE
    finally:
        await server.stop(0)
