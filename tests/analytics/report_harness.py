"""A reporting suite: the real signing, gdpr and ingest (tests/ingest/harness.py) and the real analytics
service (its create_app wiring), with consent from a gdpr double for the synthetic pseudonyms, a small
programme folded in, and the published keys an auditor verifies with."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from awareness.analytics.v1 import analytics_pb2, analytics_pb2_grpc
from awareness.signing.v1 import signing_pb2, signing_pb2_grpc
from google.protobuf import json_format

from services.analytics.app import build_service
from services.analytics.domain.report import parse_iso_week
from services.analytics.reports import ReportIssuer, last_complete_week
from services.runtime import auth
from services.runtime.config import load_settings
from services.runtime.server import build_context
from tests.analytics.harness import ANALYST, fact, fake_gdpr
from tests.ingest.harness import Running, Suite
from tests.support.resources import free_port
from tests.support.servers import client_factory, start_server

INGEST = auth.Principal.for_service("ingest")
WEEK = last_complete_week(datetime.now(UTC))
MONDAY, _ = parse_iso_week(WEEK)
IT = [f"psn_it{i}" for i in range(6)]
SALES = [f"psn_sales{i}" for i in range(6)]


@dataclass
class Reporting:
    suite: Suite
    issuer: ReportIssuer
    keys: Path

    @property
    def address(self) -> str:
        return self.suite.services["analytics"].address

    def stub(self, principal: auth.Principal = ANALYST) -> analytics_pb2_grpc.AnalyticsServiceStub:
        factory = client_factory({"analytics": self.address}, principal, timeout_seconds=120.0)
        self.suite.factories.append(factory)
        return analytics_pb2_grpc.AnalyticsServiceStub(factory.channel("analytics"))


def programme() -> list[analytics_pb2.EventFact]:
    """Campaign wk-c1 in the report's week (12 sent, 3 clicked, 4 reported) and wk-c0 the week before."""
    t0 = datetime.combine(MONDAY, datetime.min.time(), UTC) + timedelta(days=1, hours=9)
    facts: list[analytics_pb2.EventFact] = []

    def add(kind: str, who: str, when: datetime, campaign: str) -> None:
        facts.append(
            fact(
                f"evt-{len(facts):04d}",
                kind,
                when,
                who,
                dimensions={"campaign_id": campaign},
                department="it" if who in IT else "sales",
                risk=0.9 if kind == "phishing.clicked" else None,
            )
        )

    for who in IT + SALES:
        add("phishing.email_sent", who, t0, "wk-c1")
    for who in (IT[0], IT[1], SALES[0]):
        add("phishing.clicked", who, t0 + timedelta(minutes=5), "wk-c1")
    for who in (IT[2], IT[3], SALES[1], SALES[2]):
        add("phishing.reported", who, t0 + timedelta(minutes=30), "wk-c1")
    earlier = t0 - timedelta(days=7)
    for who in IT:
        add("phishing.email_sent", who, earlier, "wk-c0")
    add("phishing.clicked", IT[5], earlier + timedelta(minutes=1), "wk-c0")
    return facts


@contextlib.asynccontextmanager
async def reporting_suite(tmp_path: Path, database_url: str) -> AsyncIterator[Reporting]:
    ports = {name: free_port() for name in ("signing", "gdpr", "ingest", "scoring", "policy", "analytics")}
    suite = Suite(data_dir=tmp_path, database_url=database_url or None, ports=ports)
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(suite.close)
        await suite.start("signing", "gdpr", "ingest")
        # Consent for the synthetic pseudonyms (the real gdpr knows none of them): every purpose granted.
        _, gdpr_address = await stack.enter_async_context(fake_gdpr())
        env = suite.env(AWARENESS_ANALYTICS_CONSENT_CACHE_SECONDS="0", AWARENESS_GDPR_TARGET=gdpr_address)
        context = build_context(load_settings("analytics", env))
        service = build_service(context)
        suite.services["analytics"] = Running(
            await start_server(service.app, context, port=ports["analytics"])
        )
        assert service.reports is not None
        reporting = Reporting(suite, service.reports, tmp_path / "keys.json")
        folded = await reporting.stub(INGEST).RecordEvents(
            analytics_pb2.RecordEventsRequest(facts=programme())
        )
        assert folded.folded == len(programme())
        keys = signing_pb2_grpc.SigningServiceStub(suite.channel("signing"))
        listed = await keys.ListPublicKeys(signing_pb2.ListPublicKeysRequest(page_size=100))
        reporting.keys.write_text(json_format.MessageToJson(listed))
        yield reporting
