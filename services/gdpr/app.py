"""Wiring of the gdpr service: its servicer, store and health probe."""

from __future__ import annotations

from awareness.gdpr.v1 import gdpr_pb2, gdpr_pb2_grpc

from services.runtime import db
from services.runtime.server import ServiceApp, ServiceContext

SERVICE_NAME = gdpr_pb2.DESCRIPTOR.services_by_name["GdprService"].full_name


def create_app(context: ServiceContext) -> ServiceApp:
    # Until its issue lands, every RPC answers UNIMPLEMENTED (the generated base class).
    servicer = gdpr_pb2_grpc.GdprServiceServicer()  # type: ignore[abstract]
    engine = context.engine
    assert engine is not None
    return ServiceApp(
        name="gdpr",
        service_names=[SERVICE_NAME],
        register=lambda server: gdpr_pb2_grpc.add_GdprServiceServicer_to_server(servicer, server),
        ready=lambda: db.ping(engine),
    )
