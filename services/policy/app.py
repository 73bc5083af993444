"""Wiring of the policy service: its servicer, store and health probe."""

from __future__ import annotations

from awareness.policy.v1 import policy_pb2, policy_pb2_grpc

from services.runtime import db
from services.runtime.server import ServiceApp, ServiceContext

SERVICE_NAME = policy_pb2.DESCRIPTOR.services_by_name["PolicyService"].full_name


def create_app(context: ServiceContext) -> ServiceApp:
    # Until its issue lands, every RPC answers UNIMPLEMENTED (the generated base class).
    servicer = policy_pb2_grpc.PolicyServiceServicer()  # type: ignore[abstract]
    engine = context.engine
    assert engine is not None
    return ServiceApp(
        name="policy",
        service_names=[SERVICE_NAME],
        register=lambda server: policy_pb2_grpc.add_PolicyServiceServicer_to_server(servicer, server),
        ready=lambda: db.ping(engine),
    )
