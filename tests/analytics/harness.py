"""An in-process analytics server (the real create_app wiring on port 0), a gdpr double for consent,
and builders of facts."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from awareness.analytics.v1 import analytics_pb2, analytics_pb2_grpc
from awareness.gdpr.v1 import gdpr_pb2, gdpr_pb2_grpc

from services.analytics.app import AnalyticsService, build_service
from services.runtime import auth
from services.runtime.clients import ChannelFactory
from services.runtime.config import load_settings
from services.runtime.server import build_context
from services.runtime.timestamps import to_timestamp
from tests.support.servers import Served, client_factory, service_env, serving, start_server

ANALYST = auth.Principal(subject="test:analyst", roles=frozenset({"analyst"}))
AUDITOR = auth.Principal(subject="test:auditor", roles=frozenset({"auditor"}))
INGEST = auth.Principal.for_service("ingest")


class FakeGdpr(gdpr_pb2_grpc.GdprServiceServicer):
    """CheckConsent only: every purpose granted unless the pseudonym withdrew it."""

    def __init__(self) -> None:
        self.withdrawn: dict[str, set[str]] = {"analytics": set(), "profiling": set()}
        self.calls: list[str] = []
        self.down = False

    async def CheckConsent(
        self, request: gdpr_pb2.CheckConsentRequest, context: Any
    ) -> gdpr_pb2.CheckConsentResponse:
        self.calls.append(request.purpose)
        if self.down:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "down")
        withdrawn = self.withdrawn.get(request.purpose, set())
        return gdpr_pb2.CheckConsentResponse(
            results=[
                gdpr_pb2.ConsentStatus(pseudonym=p, granted=p not in withdrawn) for p in request.pseudonyms
            ]
        )


@asynccontextmanager
async def fake_gdpr() -> AsyncIterator[tuple[FakeGdpr, str]]:
    servicer = FakeGdpr()  # type: ignore[abstract]  # only CheckConsent is served
    async with serving(
        "gdpr",
        lambda server: gdpr_pb2_grpc.add_GdprServiceServicer_to_server(servicer, server),
        ["awareness.gdpr.v1.GdprService"],
    ) as gdpr:
        yield servicer, gdpr.address


@dataclass
class Analytics(Served):
    service: AnalyticsService
    clients: dict[str, ChannelFactory]

    def stub(self, principal: auth.Principal = ANALYST) -> analytics_pb2_grpc.AnalyticsServiceStub:
        factory = self.clients.get(principal.subject)
        if factory is None:
            factory = client_factory({"analytics": self.address}, principal, timeout_seconds=60.0)
            self.clients[principal.subject] = factory
        return analytics_pb2_grpc.AnalyticsServiceStub(factory.channel("analytics"))

    @property
    def feed(self) -> analytics_pb2_grpc.AnalyticsServiceStub:
        return self.stub(INGEST)


@asynccontextmanager
async def running_analytics(
    data_dir: Path, *, database_url: str, gdpr_address: str, **extra: str
) -> AsyncIterator[Analytics]:
    env = service_env(
        data_dir,
        database_url=database_url,
        AWARENESS_GDPR_TARGET=gdpr_address,
        AWARENESS_CALL_TIMEOUT_SECONDS="5",
        AWARENESS_RETRY_ATTEMPTS="1",
        **{"AWARENESS_ANALYTICS_CONSENT_CACHE_SECONDS": "0", **extra},
    )
    context = build_context(load_settings("analytics", env))
    service = build_service(context)
    running = await start_server(service.app, context)
    analytics = Analytics(running, service, {})
    try:
        yield analytics
    finally:
        for factory in analytics.clients.values():
            await factory.close()
        await running.stop()


def fact(
    event_id: str,
    kind: str,
    when: datetime,
    pseudonym: str,
    *,
    dimensions: Mapping[str, str] | None = None,
    department: str = "",
    risk: float | None = None,
    violations: Sequence[tuple[str, int]] = (),
    severity: int = 2,
) -> analytics_pb2.EventFact:
    return analytics_pb2.EventFact(
        event_id=event_id,
        type=kind,
        occurred_at=to_timestamp(when.astimezone(UTC)),
        subject_pseudonym=pseudonym,
        severity=severity,
        dimensions=dict(dimensions or {}),
        department=department,
        scored=risk is not None,
        risk_score=risk or 0.0,
        violations=[analytics_pb2.ViolatedPolicy(policy=p, severity=s) for p, s in violations],
    )
