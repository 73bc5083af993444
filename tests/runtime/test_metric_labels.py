"""The runtime's gRPC metrics label a method only from the contracts' method table."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import empty_pb2

from services.runtime.config import load_settings
from services.runtime.metrics import OTHER
from services.runtime.server import ServiceApp, build_context, create_server
from tests.conftest import IDENTITY_ENV
from tests.support.servers import mtls_channel

KNOWN = "/awareness.ingest.v1.IngestService/GetEvent"


class CatchAll(grpc.GenericRpcHandler):  # type: ignore[misc]
    """Serves any method name: the worst case for a label taken from the call."""

    def service(self, handler_call_details: Any) -> Any:
        async def echo(request: empty_pb2.Empty, _context: Any) -> empty_pb2.Empty:
            return request

        return grpc.unary_unary_rpc_method_handler(
            echo,
            request_deserializer=empty_pb2.Empty.FromString,
            response_serializer=empty_pb2.Empty.SerializeToString,
        )


async def test_unknown_method_names_are_labelled_other(tmp_path: Path) -> None:
    settings = load_settings("test", {"AWARENESS_DATA_DIR": str(tmp_path), **IDENTITY_ENV})
    context = build_context(settings, with_database=False)
    app = ServiceApp(
        name="test", service_names=[], register=lambda s: s.add_generic_rpc_handlers((CatchAll(),))
    )
    server, health, port = create_server(app, context, port=0)
    await server.start()
    token = uuid.uuid4().hex
    unknown = [f"/awareness.ingest.v1.IngestService/X{token}", f"/evil{token}.Svc/Get", f"/{token}/{token}"]
    try:
        async with mtls_channel(f"127.0.0.1:{port}", server="test", caller="test") as channel:
            for method in [KNOWN, *unknown]:
                call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
                assert await call(b"", timeout=5) == b""
    finally:
        await health.shutdown()
        await server.stop(0)
    labels = [
        dict(sample.labels)
        for family in context.metrics.registry.collect()
        for sample in family.samples
        if family.name.startswith("awareness_test_grpc_server_")
    ]
    methods = {values["method"] for values in labels}
    assert methods == {KNOWN, OTHER}
    assert not any(token in value for values in labels for value in values.values())
