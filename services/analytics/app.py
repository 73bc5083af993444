"""Wiring of the analytics service: the store, consent through gdpr, settings and the servicer.

Settings: AWARENESS_ANALYTICS_K (k of k-anonymity, default 5), AWARENESS_ANALYTICS_RISK_HALF_LIFE_DAYS
(default 30), AWARENESS_ANALYTICS_CONSENT_CACHE_SECONDS (how long a consent answer is reused, default 30),
AWARENESS_ANALYTICS_CONSENT_SWEEP_SECONDS (how often every person held is re-checked against gdpr's consent
records, so that an objection takes effect without a new event; default 60).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from awareness.analytics.v1 import analytics_pb2, analytics_pb2_grpc
from awareness.gdpr.v1 import gdpr_pb2_grpc
from awareness.ingest.v1 import ingest_pb2_grpc
from awareness.scoring.v1 import scoring_pb2_grpc
from awareness.signing.v1 import signing_pb2_grpc

from services.analytics.api import AnalyticsServicer
from services.analytics.convert import FACTS_FIELD
from services.analytics.domain.anonymity import DEFAULT_K
from services.analytics.domain.risk import DEFAULT_HALF_LIFE_DAYS
from services.analytics.metrics import AnalyticsMetrics
from services.analytics.report_api import ReportingServicer
from services.analytics.reports import ReportIssuer
from services.analytics.service import AnalyticsOperations, Settings
from services.runtime import db
from services.runtime.config import env_float, env_int
from services.runtime.consent import ANALYTICS, PROFILING, ConsentChecker
from services.runtime.paging import PageTokens
from services.runtime.server import ServiceApp, ServiceContext

SERVICE_NAME = analytics_pb2.DESCRIPTOR.services_by_name["AnalyticsService"].full_name
log = logging.getLogger("awareness.analytics")


@dataclass(frozen=True)
class AnalyticsService:
    """The assembled service: what the runtime runs, plus its parts for in-process tests and tools."""

    app: ServiceApp
    servicer: AnalyticsServicer
    operations: AnalyticsOperations
    reports: ReportIssuer | None = None


def create_app(context: ServiceContext) -> ServiceApp:
    return build_service(context).app


def build_service(context: ServiceContext) -> AnalyticsService:
    settings, env = context.settings, context.settings.env
    engine, sessions = context.engine, context.sessions
    assert engine is not None and sessions is not None, "the analytics service needs its database"
    consent_ttl = env_float(env, "AWARENESS_ANALYTICS_CONSENT_CACHE_SECONDS", 30.0)

    def gdpr() -> gdpr_pb2_grpc.GdprServiceStub:
        return gdpr_pb2_grpc.GdprServiceStub(context.channels.channel("gdpr"))

    operations = AnalyticsOperations(
        sessions=sessions,
        analytics_consent=ConsentChecker(gdpr=gdpr, purpose=ANALYTICS, ttl_seconds=consent_ttl),
        profiling_consent=ConsentChecker(gdpr=gdpr, purpose=PROFILING, ttl_seconds=consent_ttl),
        settings=Settings(
            k=env_int(env, "AWARENESS_ANALYTICS_K", DEFAULT_K, minimum=1),
            half_life_days=env_float(
                env, "AWARENESS_ANALYTICS_RISK_HALF_LIFE_DAYS", DEFAULT_HALF_LIFE_DAYS, minimum=0.5
            ),
            consent_sweep_seconds=env_float(
                env, "AWARENESS_ANALYTICS_CONSENT_SWEEP_SECONDS", 60.0, minimum=0.1
            ),
        ),
        metrics=AnalyticsMetrics.create(context.metrics),
    )
    # Weekly reports as evidence (services/analytics/reports.py): signing time-stamps each file's
    # digest, ingest logs it as a report.issued event.
    reports = ReportIssuer(
        operations=operations,
        sessions=sessions,
        ingest=lambda: ingest_pb2_grpc.IngestServiceStub(context.channels.channel("ingest")),
        signing=lambda: signing_pb2_grpc.SigningServiceStub(context.channels.channel("signing")),
        scoring=lambda: scoring_pb2_grpc.ScoringServiceStub(context.channels.channel("scoring")),
    )
    servicer = ReportingServicer(
        operations=operations, page_tokens=PageTokens.from_secret(settings.service_secret), reports=reports
    )
    app = ServiceApp(
        name="analytics",
        service_names=[SERVICE_NAME],
        register=lambda server: analytics_pb2_grpc.add_AnalyticsServiceServicer_to_server(servicer, server),
        ready=lambda: db.ping(engine),
        on_start=operations.prepare,
        background=[operations.sweep_consent_forever],
        validated_fields=frozenset({FACTS_FIELD}),
    )
    log.debug("analytics wired", extra={"service": settings.service, "k": operations.settings.k})
    return AnalyticsService(app=app, servicer=servicer, operations=operations, reports=reports)
