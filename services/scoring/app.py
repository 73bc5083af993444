"""Wiring of the scoring service: its servicer, store and health probe."""

from __future__ import annotations

from awareness.scoring.v1 import scoring_pb2, scoring_pb2_grpc

from services.runtime import db
from services.runtime.server import ServiceApp, ServiceContext

SERVICE_NAME = scoring_pb2.DESCRIPTOR.services_by_name["ScoringService"].full_name


def create_app(context: ServiceContext) -> ServiceApp:
    # Until its issue lands, every RPC answers UNIMPLEMENTED (the generated base class).
    servicer = scoring_pb2_grpc.ScoringServiceServicer()  # type: ignore[abstract]
    engine = context.engine
    assert engine is not None
    return ServiceApp(
        name="scoring",
        service_names=[SERVICE_NAME],
        register=lambda server: scoring_pb2_grpc.add_ScoringServiceServicer_to_server(servicer, server),
        ready=lambda: db.ping(engine),
    )
