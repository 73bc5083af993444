"""In-process gdpr service over real sockets, on SQLite or PostgreSQL, with a test double of ingest.

The double stands in for ingest only in these unit tests of the gdpr module: it keeps subject records
(sealed with keys the real gdpr service issued) in memory, counts them for ForgetSubject and records the
erasure events appended to it. The end-to-end test (tests/test_e2e_gdpr.py) runs the real ingest.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from awareness.gdpr.v1 import gdpr_pb2, gdpr_pb2_grpc
from awareness.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from google.protobuf import timestamp_pb2

from services.evidence.envelope import seal_personal
from services.gdpr.app import GdprService, build_service
from services.runtime.auth import Principal
from services.runtime.clients import ChannelFactory
from services.runtime.config import load_settings
from services.runtime.metrics import ServiceMetrics
from services.runtime.server import ServiceApp, build_context, create_server
from tests.conftest import INTERNAL_SECRET

DPO = Principal(subject="dpo:dana", roles=frozenset({"dpo"}))
ADMIN = Principal(subject="admin:ada", roles=frozenset({"admin"}))
ANALYST = Principal(subject="analyst:alan", roles=frozenset({"analyst"}))
INGEST_SERVICE = Principal.for_service("ingest")
SCORING_SERVICE = Principal.for_service("scoring")


def timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


@dataclass
class FakeIngest(ingest_pb2_grpc.IngestServiceServicer):
    """Ingest as gdpr sees it: subject records as ciphertext, ForgetSubject and AppendEvent."""

    records: dict[str, list[ingest_pb2.SubjectRecord]] = field(default_factory=dict)
    appended: list[ingest_pb2.Event] = field(default_factory=list)
    forgotten: list[str] = field(default_factory=list)
    listed_pages: int = 0
    down: bool = False
    forget_delay: float = 0.0  # seconds each ForgetSubject takes (to observe concurrency)
    forget_in_flight: int = 0
    forget_max_in_flight: int = 0

    async def _refuse_if_down(self, context: Any) -> None:
        if self.down:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "ingest is down (test)")

    async def ListSubjectRecords(self, request: Any, context: Any) -> ingest_pb2.ListSubjectRecordsResponse:
        await self._refuse_if_down(context)
        self.listed_pages += 1
        records = self.records.get(request.pseudonym, [])
        start = int(request.page_token or 0)
        size = request.page_size or 100
        page = records[start : start + size]
        token = str(start + size) if start + size < len(records) else ""
        return ingest_pb2.ListSubjectRecordsResponse(records=page, next_page_token=token)

    async def ForgetSubject(self, request: Any, context: Any) -> ingest_pb2.ForgetSubjectResponse:
        await self._refuse_if_down(context)
        self.forget_in_flight += 1
        self.forget_max_in_flight = max(self.forget_max_in_flight, self.forget_in_flight)
        try:
            if self.forget_delay:
                await asyncio.sleep(self.forget_delay)
            self.forgotten.append(request.pseudonym)
        finally:
            self.forget_in_flight -= 1
        return ingest_pb2.ForgetSubjectResponse(event_count=len(self.records.get(request.pseudonym, [])))

    async def AppendEvent(self, request: Any, context: Any) -> ingest_pb2.AppendEventResponse:
        await self._refuse_if_down(context)
        if any(event.event_id == request.event.event_id for event in self.appended):
            return ingest_pb2.AppendEventResponse(replayed=True)
        self.appended.append(request.event)
        return ingest_pb2.AppendEventResponse()


@dataclass
class Harness:
    data_dir: Path
    service: GdprService
    fake_ingest: FakeIngest
    address: str
    database_url: str
    metrics: ServiceMetrics
    _factories: list[ChannelFactory] = field(default_factory=list)

    def stub(self, principal: Principal) -> gdpr_pb2_grpc.GdprServiceStub:
        factory = ChannelFactory(
            targets={"gdpr": self.address},
            identity=principal,
            internal_secret=INTERNAL_SECRET,
            timeout_seconds=20.0,
            attempts=1,
            breaker_fail_max=100,
            breaker_reset_seconds=1.0,
        )
        self._factories.append(factory)
        return gdpr_pb2_grpc.GdprServiceStub(factory.channel("gdpr"))

    @property
    def dpo(self) -> gdpr_pb2_grpc.GdprServiceStub:
        return self.stub(DPO)

    @property
    def internal(self) -> gdpr_pb2_grpc.GdprServiceStub:
        return self.stub(INGEST_SERVICE)

    async def ingest_event(
        self,
        *,
        subject: str,
        occurred_at: datetime,
        event_type: str = "phishing.clicked",
        summary: str = "",
        details: dict[str, str] | None = None,
        risk_score: float = 0.0,
    ) -> ingest_pb2.SubjectRecord:
        """What real ingest does on append, in short: get the key, seal, store the record."""
        reply = await self.internal.GetSubjectKeys(
            gdpr_pb2.GetSubjectKeysRequest(
                lookups=[
                    gdpr_pb2.SubjectKeyLookup(
                        subject=subject, occurred_at=timestamp(occurred_at), event_type=event_type
                    )
                ]
            )
        )
        key = reply.keys[0]
        event_id = str(uuid.uuid4())
        sealed = seal_personal(
            key=key.data_key,
            key_id=key.key_id,
            event_id=event_id,
            subject=subject,
            summary=summary,
            details=details or {},
        )
        record = ingest_pb2.SubjectRecord(
            event_id=event_id,
            type=event_type,
            source="test",
            occurred_at=timestamp(occurred_at),
            severity=ingest_pb2.SEVERITY_HIGH,
            key_period=key.key_period,
            nonce=sealed.nonce,
            ciphertext=sealed.ciphertext,
            receive_time=timestamp(datetime.now(UTC)),
            metadata=ingest_pb2.EventMetadata(risk_score=risk_score, label=ingest_pb2.LABEL_TRUE_POSITIVE),
        )
        self.fake_ingest.records.setdefault(key.pseudonym, []).append(record)
        return record

    async def close(self) -> None:
        for factory in self._factories:
            await factory.close()


def gdpr_env(data_dir: Path, ingest_address: str, database_url: str, **extra: str) -> dict[str, str]:
    env = {
        "AWARENESS_DATA_DIR": str(data_dir),
        "AWARENESS_INTERNAL_SECRET": INTERNAL_SECRET.decode(),
        "AWARENESS_INGEST_TARGET": ingest_address,
        "AWARENESS_HEALTH_PROBE_SECONDS": "0.2",
        "AWARENESS_CALL_TIMEOUT_SECONDS": "5",
        "AWARENESS_BREAKER_FAIL_MAX": "100",
        **extra,
    }
    if database_url:
        env["DATABASE_URL"] = database_url
    return env


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str:
    if request.param == "postgres":
        url: str = request.getfixturevalue("fresh_postgres_db")
        return url
    return ""


@asynccontextmanager
async def running_harness(data_dir: Path, database_url: str, **extra_env: str) -> AsyncIterator[Harness]:
    """The gdpr service (built by its own create_app wiring) and the ingest double, both on port 0."""
    fake = FakeIngest()  # type: ignore[abstract]  # only what gdpr calls; the rest is UNIMPLEMENTED
    ingest_context = build_context(
        load_settings("ingest", {"AWARENESS_INTERNAL_SECRET": INTERNAL_SECRET.decode()}), with_database=False
    )
    ingest_app = ServiceApp(
        name="ingest",
        service_names=["awareness.ingest.v1.IngestService"],
        register=lambda server: ingest_pb2_grpc.add_IngestServiceServicer_to_server(fake, server),
    )
    ingest_server, ingest_health, ingest_port = create_server(ingest_app, ingest_context, port=0)
    await ingest_server.start()
    settings = load_settings(
        "gdpr", gdpr_env(data_dir, f"127.0.0.1:{ingest_port}", database_url, **extra_env)
    )
    context = build_context(settings)
    try:
        service = build_service(context)
        server, health, port = create_server(service.app, context, port=0)
        await server.start()
        running = Harness(
            data_dir=data_dir,
            service=service,
            fake_ingest=fake,
            address=f"127.0.0.1:{port}",
            database_url=settings.database_url,
            metrics=context.metrics,
        )
        try:
            yield running
        finally:
            await running.close()
            await server.stop(0)
            await health.shutdown()
            if service.app.on_stop is not None:  # as the runtime does after the server stopped
                await service.app.on_stop()
    finally:
        await context.channels.close()
        await ingest_server.stop(0)
        await ingest_health.shutdown()
        assert context.engine is not None
        context.engine.dispose()


@pytest.fixture
async def harness(tmp_path: Path, database_url: str) -> AsyncIterator[Harness]:
    async with running_harness(tmp_path / "var", database_url) as running:
        yield running
