"""Scoring and policy after append, off the acknowledgement path; the reconciler back-fills.

Policy is the REAL service. Scoring is a test double here (a servicer recording what ingest sends),
because these tests check what ingest sends and stores, not how scoring scores.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from awareness.gdpr.v1 import gdpr_pb2, gdpr_pb2_grpc
from awareness.ingest.v1 import ingest_pb2
from awareness.scoring.v1 import scoring_pb2, scoring_pb2_grpc

from services.runtime.config import load_settings
from services.runtime.server import ServiceApp, build_context, create_server
from tests.ingest.harness import Suite, eventually, make_event, service_env, suite

Metadata = ingest_pb2.EventMetadata


class RecordingScoring(scoring_pb2_grpc.ScoringServiceServicer):
    def __init__(self) -> None:
        self.inputs: list[scoring_pb2.ScoringInput] = []

    async def ScoreEvents(
        self, request: scoring_pb2.ScoreEventsRequest, context: Any
    ) -> scoring_pb2.ScoreEventsResponse:
        self.inputs.extend(request.inputs)
        return scoring_pb2.ScoreEventsResponse(
            results=[
                scoring_pb2.ScoringResult(
                    event_id=item.event_id,
                    score=0.75,
                    level=scoring_pb2.RISK_LEVEL_HIGH,
                    model_version="double-1",
                    features={"clicks_30d": 2.0, "is_phishing": 1.0},
                )
                for item in request.inputs
            ]
        )


async def start_scoring(running: Suite) -> tuple[RecordingScoring, Any]:
    servicer = RecordingScoring()  # type: ignore[abstract]
    context = build_context(
        load_settings("scoring", service_env(data_dir=running.data_dir, ports=running.ports)),
        with_database=False,
    )
    app = ServiceApp(
        name="scoring",
        service_names=["awareness.scoring.v1.ScoringService"],
        register=lambda server: scoring_pb2_grpc.add_ScoringServiceServicer_to_server(servicer, server),
    )
    server, _health, _port = create_server(app, context, port=running.ports["scoring"])
    await server.start()
    return servicer, server


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Suite]:
    async with suite(tmp_path, services=("signing", "gdpr", "ingest")) as started:
        yield started


async def metadata_of(running: Suite, event_id: str) -> Metadata:
    event: ingest_pb2.Event = await running.client().GetEvent(
        ingest_pb2.GetEventRequest(name=f"events/{event_id}")
    )
    return event.metadata


async def test_new_events_are_scored_with_history_and_evaluated(running: Suite) -> None:
    scoring, server = await start_scoring(running)
    await running.start("policy")
    try:
        start = datetime.now(UTC) - timedelta(hours=3)
        events = [
            make_event(
                subject="gina@example.org",
                event_type=kind,
                source=source,
                occurred_at=start + timedelta(hours=i),
            )
            for i, (kind, source) in enumerate(
                [("login.failed", "okta"), ("login.failed", "okta"), ("phishing.clicked", "gophish")]
            )
        ]
        await running.client().AppendEvents(ingest_pb2.AppendEventsRequest(events=events))

        async def enriched() -> bool:
            states = [await metadata_of(running, e.event_id) for e in events]
            return all(
                m.scoring_state == Metadata.SCORING_STATE_SCORED
                and m.evaluation_state == Metadata.EVALUATION_STATE_EVALUATED
                for m in states
            )

        await eventually(enriched, what="scores and evaluations")
        stored = await metadata_of(running, events[2].event_id)
        assert (stored.risk_score, stored.risk_level, stored.model_version) == (
            0.75,
            ingest_pb2.RISK_LEVEL_HIGH,
            "double-1",
        )
        assert dict(stored.features) == {"clicks_30d": 2.0, "is_phishing": 1.0}  # what the model saw
        sent = {item.event_id: item.history for item in scoring.inputs}
        third = sent[events[2].event_id]
        assert (
            third.events_24h,
            third.failed_logins_24h,
            third.distinct_sources_24h,
            third.source_is_new,
        ) == (
            2,
            2,
            1,
            True,
        )
        assert third.seconds_since_previous_event == pytest.approx(3600)
        assert sent[events[0].event_id].seconds_since_previous_event == -1
    finally:
        await server.stop(0)


async def test_pending_rows_are_back_filled_and_an_erased_subject_cannot_be_evaluated(running: Suite) -> None:
    client = running.client()
    kept, erased = make_event(subject="hana@example.org"), make_event(subject="ivan@example.org")
    await client.AppendEvents(ingest_pb2.AppendEventsRequest(events=[kept, erased]))
    registry = running.services["ingest"].context.metrics.registry

    async def enrichment_gave_up() -> bool:
        # The enricher tries (after its linger) and fails: from now on only the reconciler can
        # fill these rows. Starting scoring before that would let the enricher score them.
        failures = registry.get_sample_value(
            "awareness_ingest_enrichment_peer_failures_total", {"peer": "scoring"}
        )
        return bool(failures)

    await eventually(enrichment_gave_up, timeout=10, what="the enricher's failed attempt")
    pending = await metadata_of(running, kept.event_id)
    assert pending.scoring_state == Metadata.SCORING_STATE_PENDING
    assert pending.evaluation_state == Metadata.EVALUATION_STATE_PENDING
    gdpr = gdpr_pb2_grpc.GdprServiceStub(running.channel("gdpr", roles=("dpo",)))
    await gdpr.EraseSubject(
        gdpr_pb2.EraseSubjectRequest(
            subject="ivan@example.org", reason="Art. 17", request_id=str(uuid.uuid4())
        )
    )

    scoring, server = await start_scoring(running)
    await running.start("policy")
    try:

        async def settled() -> bool:
            states = [await metadata_of(running, e.event_id) for e in (kept, erased)]
            return all(
                m.scoring_state == Metadata.SCORING_STATE_SCORED
                and m.evaluation_state != Metadata.EVALUATION_STATE_PENDING
                for m in states
            )

        await eventually(settled, timeout=30, what="the reconciler back-filling")
        assert (
            await metadata_of(running, kept.event_id)
        ).evaluation_state == Metadata.EVALUATION_STATE_EVALUATED
        gone = await metadata_of(running, erased.event_id)
        assert gone.evaluation_state == Metadata.EVALUATION_STATE_FAILED
        assert "erased" in gone.evaluation_note
        assert {item.event_id for item in scoring.inputs} >= {kept.event_id, erased.event_id}
        backfills = "awareness_ingest_reconciler_backfills_total"
        # Both events were scored by the reconciler; only the kept one could be evaluated.
        assert registry.get_sample_value(backfills, {"peer": "scoring"}) == 2
        assert registry.get_sample_value(backfills, {"peer": "policy"}) == 1
    finally:
        await server.stop(0)


async def test_an_erasure_drops_the_subjects_events_waiting_in_memory_for_enrichment() -> None:
    # Their details are plaintext in the queue; after erasure they must not reach policy.
    from services.ingest.enrichment import Enricher, EnrichmentSettings
    from services.ingest.service import EnrichmentItem

    def item(pseudonym: str) -> EnrichmentItem:
        return EnrichmentItem(
            event_id=str(uuid.uuid4()),
            pseudonym=pseudonym,
            type="phishing.clicked",
            source="gophish",
            severity=4,
            occurred_at_us=0,
            summary_length=0,
            detail_count=1,
            details={"url": "https://example.org/"},
        )

    unused: Any = None  # the queue alone is exercised: no store, keys or peers are reached
    enricher = Enricher(
        sessions=unused,
        keys=unused,
        scoring=unused,
        policy=unused,
        settings=EnrichmentSettings(),
        gate=unused,
    )
    enricher.submit([item("psn_ivan"), item("psn_hana"), item("psn_ivan")])
    assert enricher.forget("psn_ivan") == 2
    assert [enricher._queue.get_nowait().pseudonym for _ in range(enricher._queue.qsize())] == ["psn_hana"]
    # A batch already taken from the queue skips the erased subject as well.
    assert await enricher.enrich([item("psn_ivan")], evaluate=True, in_memory=True) == {}
