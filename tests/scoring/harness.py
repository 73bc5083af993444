"""In-process scoring replicas (the real create_app wiring on port 0) and a gdpr double for consent."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any

from awareness.gdpr.v1 import gdpr_pb2, gdpr_pb2_grpc
from awareness.scoring.v1 import scoring_pb2, scoring_pb2_grpc
from google.protobuf import timestamp_pb2

from services.runtime import auth
from services.runtime.clients import ChannelFactory
from services.runtime.config import load_settings
from services.runtime.db import transaction
from services.runtime.server import build_context
from services.scoring.app import ScoringService, build_service
from services.scoring.domain.features import FeatureInput
from services.scoring.domain.training import TrainingResult
from services.scoring.models import ModelStatus
from services.scoring.training_job import register_result
from tests.support.resources import free_port
from tests.support.servers import Served, client_factory, service_env, serving, start_server

ML_ENGINEER = auth.Principal(subject="test:ml", roles=frozenset({"ml_engineer"}))


class FakeGdpr(gdpr_pb2_grpc.GdprServiceServicer):
    """CheckConsent only: profiling granted unless withdrawn, training_data only when granted."""

    def __init__(self) -> None:
        self.withdrawn: set[str] = set()
        self.training_granted: set[str] = set()
        self.calls = 0

    async def CheckConsent(
        self, request: gdpr_pb2.CheckConsentRequest, context: Any
    ) -> gdpr_pb2.CheckConsentResponse:
        self.calls += 1
        if request.purpose == "training_data":
            granted = [p in self.training_granted for p in request.pseudonyms]
        else:
            granted = [p not in self.withdrawn for p in request.pseudonyms]
        return gdpr_pb2.CheckConsentResponse(
            results=[
                gdpr_pb2.ConsentStatus(pseudonym=p, granted=g)
                for p, g in zip(request.pseudonyms, granted, strict=True)
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


def scoring_env(
    data_dir: Path, *, database_url: str, gdpr_address: str, ingest_address: str = "", **extra: str
) -> dict[str, str]:
    return service_env(
        data_dir,
        database_url=database_url,
        **{
            "AWARENESS_GDPR_TARGET": gdpr_address,
            # Nothing listens there unless a test says otherwise: ingest is down.
            "AWARENESS_INGEST_TARGET": ingest_address or f"127.0.0.1:{free_port()}",
            "AWARENESS_CALL_TIMEOUT_SECONDS": "5",
            "AWARENESS_RETRY_ATTEMPTS": "1",
            "AWARENESS_SCORING_BOOTSTRAP_MODEL": "0",
            "AWARENESS_SCORING_RELOAD_SECONDS": "0.2",
            **extra,
        },
    )


@dataclass
class Replica(Served):
    """One running scoring server and its parts."""

    service: ScoringService
    client: ChannelFactory

    @property
    def stub(self) -> scoring_pb2_grpc.ScoringServiceStub:
        return scoring_pb2_grpc.ScoringServiceStub(self.client.channel("scoring"))

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        value = self.context.metrics.registry.get_sample_value(f"awareness_scoring_{name}", labels or {})
        return float(value or 0.0)


def client_for(address: str, principal: auth.Principal = ML_ENGINEER) -> ChannelFactory:
    return client_factory({"scoring": address}, principal, timeout_seconds=120.0)


async def start_replica(env: dict[str, str]) -> Replica:
    """Like `awareness serve scoring`, in this process: migrations, wiring, on_start, background tasks."""
    context = build_context(load_settings("scoring", env))
    service = build_service(context)
    running = await start_server(service.app, context)
    return Replica(running, service, client_for(running.address))


async def stop_replica(replica: Replica) -> None:
    await replica.client.close()
    await replica.running.stop()


@asynccontextmanager
async def running_replica(env: dict[str, str]) -> AsyncIterator[Replica]:
    replica = await start_replica(env)
    try:
        yield replica
    finally:
        await stop_replica(replica)


def register(
    replica: Replica, result: TrainingResult, *, status: ModelStatus = ModelStatus.CHALLENGER
) -> str:
    """Register a trained model straight in the replica's registry; returns its version."""
    assert replica.context.sessions is not None
    with transaction(replica.context.sessions) as session:
        row, created = register_result(session, result=result, status=status)
        assert created
        return row.version


def scoring_input(item: FeatureInput, *, event_id: str, pseudonym: str) -> scoring_pb2.ScoringInput:
    occurred = timestamp_pb2.Timestamp()
    occurred.FromDatetime(item.occurred_at.astimezone(UTC))
    return scoring_pb2.ScoringInput(
        event_id=event_id,
        subject_pseudonym=pseudonym,
        type=item.event_type,
        source=item.source,
        severity=item.severity,  # type: ignore[arg-type]
        occurred_at=occurred,
        summary_length=item.summary_length,
        detail_count=item.detail_count,
        history=scoring_pb2.SubjectHistory(
            events_24h=item.events_24h,
            events_7d=item.events_7d,
            violations_30d=item.violations_30d,
            distinct_sources_24h=item.distinct_sources_24h,
            source_is_new=item.source_is_new,
            failed_logins_24h=item.failed_logins_24h,
            seconds_since_previous_event=item.seconds_since_previous_event,
        ),
    )


def scoring_inputs(
    items: Sequence[FeatureInput], *, pseudonyms: Sequence[str] = ("psn-a", "psn-b", "psn-c")
) -> list[scoring_pb2.ScoringInput]:
    return [
        scoring_input(item, event_id=f"evt-{index:05d}", pseudonym=pseudonyms[index % len(pseudonyms)])
        for index, item in enumerate(items)
    ]


async def wait_for(predicate: Any, *, timeout: float = 30.0, interval: float = 0.1) -> Any:
    """Poll an async predicate until it returns something truthy (bounded)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)
