"""Wiring of the signing service: its servicer, store and health probe."""

from __future__ import annotations

from awareness.signing.v1 import signing_pb2, signing_pb2_grpc

from services.runtime import db
from services.runtime.server import ServiceApp, ServiceContext

SERVICE_NAME = signing_pb2.DESCRIPTOR.services_by_name["SigningService"].full_name


def create_app(context: ServiceContext) -> ServiceApp:
    # Until its issue lands, every RPC answers UNIMPLEMENTED (the generated base class).
    servicer = signing_pb2_grpc.SigningServiceServicer()  # type: ignore[abstract]
    engine = context.engine
    assert engine is not None
    return ServiceApp(
        name="signing",
        service_names=[SERVICE_NAME],
        register=lambda server: signing_pb2_grpc.add_SigningServiceServicer_to_server(servicer, server),
        ready=lambda: db.ping(engine),
    )
