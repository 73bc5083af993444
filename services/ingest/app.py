"""Wiring of the ingest service: its servicer, store and health probe."""

from __future__ import annotations

from awareness.ingest.v1 import ingest_pb2, ingest_pb2_grpc

from services.runtime import db
from services.runtime.server import ServiceApp, ServiceContext

SERVICE_NAME = ingest_pb2.DESCRIPTOR.services_by_name["IngestService"].full_name


def create_app(context: ServiceContext) -> ServiceApp:
    # Until its issue lands, every RPC answers UNIMPLEMENTED (the generated base class).
    servicer = ingest_pb2_grpc.IngestServiceServicer()  # type: ignore[abstract]
    engine = context.engine
    assert engine is not None
    return ServiceApp(
        name="ingest",
        service_names=[SERVICE_NAME],
        register=lambda server: ingest_pb2_grpc.add_IngestServiceServicer_to_server(servicer, server),
        ready=lambda: db.ping(engine),
    )
