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
from services.runtime.config import load_settings
from services.runtime.metrics import ServiceMetrics
from services.runtime.server import build_context
from tests.support.servers import Clients, service_env, serving, start_server

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
    """Ingest as gdpr sees it: subject records as ciphertext, ForgetSubject, AppendEvent, and
    AppendEvents (where the service's access records go)."""

    records: dict[str, list[ingest_pb2.SubjectRecord]] = field(default_factory=dict)
    appended: list[ingest_pb2.Event] = field(default_factory=list)
    forgotten: list[str] = field(default_factory=list)
    listed_pages: int = 0
    down: bool = False
    forget_delay: float = 0.0  # seconds each ForgetSubject takes (to observe concurrency)
    forget_in_flight: int = 0
    forget_max_in_flight: int = 0
    access_records: list[ingest_pb2.Event] = field(default_factory=list)

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

    async def AppendEvents(self, request: Any, context: Any) -> ingest_pb2.AppendEventsResponse:
        self.access_records.extend(request.events)
        return ingest_pb2.AppendEventsResponse(
            results=[ingest_pb2.AppendEventResult(index=index) for index in range(len(request.events))]
        )

    async def settled(self, count: int) -> list[ingest_pb2.Event]:
        """The access records once ``count`` arrived (appended in batches, off the request path)."""
        for _ in range(300):
            if len(self.access_records) >= count:
                break
            await asyncio.sleep(0.02)
        return list(self.access_records)


@dataclass
class Harness:
    data_dir: Path
    service: GdprService
    fake_ingest: FakeIngest
    address: str
    database_url: str
    metrics: ServiceMetrics
    clients: Clients

    def stub(self, principal: Principal) -> gdpr_pb2_grpc.GdprServiceStub:
        return gdpr_pb2_grpc.GdprServiceStub(self.clients.channel("gdpr", principal))

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


def gdpr_env(data_dir: Path, ingest_address: str, database_url: str, **extra: str) -> dict[str, str]:
    return service_env(
        data_dir,
        database_url=database_url,
        **{
            "AWARENESS_INGEST_TARGET": ingest_address,
            "AWARENESS_CALL_TIMEOUT_SECONDS": "5",
            "AWARENESS_BREAKER_FAIL_MAX": "100",
            **extra,
        },
    )


@asynccontextmanager
async def running_harness(data_dir: Path, database_url: str, **extra_env: str) -> AsyncIterator[Harness]:
    """The gdpr service (built by its own create_app wiring) and the ingest double, both on port 0.

    gdpr's background jobs do not run: the tests call the passes they need themselves."""
    fake = FakeIngest()  # type: ignore[abstract]  # only what gdpr calls; the rest is UNIMPLEMENTED
    async with serving(
        "ingest",
        lambda server: ingest_pb2_grpc.add_IngestServiceServicer_to_server(fake, server),
        ["awareness.ingest.v1.IngestService"],
    ) as ingest:
        settings = load_settings("gdpr", gdpr_env(data_dir, ingest.address, database_url, **extra_env))
        context = build_context(settings)
        service = build_service(context)
        gdpr = await start_server(service.app, context, background_jobs=False)
        running = Harness(
            data_dir=data_dir,
            service=service,
            fake_ingest=fake,
            address=gdpr.address,
            database_url=settings.database_url,
            metrics=context.metrics,
            clients=Clients({"gdpr": gdpr.address}),
        )
        try:
            yield running
        finally:
            await running.clients.close()
            await gdpr.stop()


@pytest.fixture
async def harness(tmp_path: Path, database_url: str) -> AsyncIterator[Harness]:
    async with running_harness(tmp_path / "var", database_url) as running:
        yield running
