"""The analytics feed (REAL signing, gdpr, analytics and ingest over mTLS): stored events reach
analytics as facts without personal data, each counted once; an erased subject's pending events are
never sent, and analytics forgets the pseudonym."""

from __future__ import annotations

import uuid
from pathlib import Path

import grpc
import pytest
from awareness.analytics.v1 import analytics_pb2, analytics_pb2_grpc
from awareness.gdpr.v1 import gdpr_pb2, gdpr_pb2_grpc
from awareness.ingest.v1 import ingest_pb2
from sqlalchemy import func, select

from services.ingest import repository
from services.ingest.models import EventMetadata
from tests.ingest.harness import Suite, eventually, make_event, suite

SERVICES = ("signing", "gdpr", "analytics", "ingest")
FEED = {
    "AWARENESS_INGEST_ENRICHMENT": "false",  # no scoring or policy here: facts go without a score
    "AWARENESS_INGEST_ANALYTICS_INTERVAL_MS": "50",
}
Stage = analytics_pb2.FunnelStage


def pending(running: Suite) -> int:
    with running.ingest.writer._sessions() as session:
        return int(
            session.scalar(
                select(func.count())
                .select_from(EventMetadata)
                .where(EventMetadata.analytics_state == repository.ANALYTICS_PENDING)
            )
            or 0
        )


def campaign(campaign_id: str, people: list[str], stage: str) -> list[ingest_pb2.Event]:
    return [
        make_event(
            subject=person,
            event_type=f"phishing.{stage}",
            summary=f"{person} {stage}",
            details={
                "campaign_id": campaign_id,
                "template": "parcel",
                "url": f"https://x.example/?u={person}",
            },
        )
        for person in people
    ]


async def test_stored_events_reach_analytics_once_and_without_personal_data(tmp_path: Path) -> None:
    async with suite(tmp_path, services=SERVICES, ingest_env=FEED) as running:
        people = [f"p{index}-{uuid.uuid4().hex[:6]}@example.org" for index in range(8)]
        campaign_id = f"c-{uuid.uuid4().hex[:8]}"
        events = (
            campaign(campaign_id, people, "email_sent")
            + campaign(campaign_id, people[:5], "clicked")
            + campaign(campaign_id, people[:2], "clicked")  # two clicked twice
            + campaign(campaign_id, people[5:], "reported")
        )
        client = running.client()
        await client.AppendEvents(ingest_pb2.AppendEventsRequest(events=events))
        analytics = analytics_pb2_grpc.AnalyticsServiceStub(running.channel("analytics", roles=("analyst",)))

        async def funnel() -> analytics_pb2.CampaignFunnel | None:
            try:
                answer = await analytics.GetCampaignFunnel(
                    analytics_pb2.GetCampaignFunnelRequest(campaign_id=campaign_id)
                )
            except grpc.aio.AioRpcError:
                return None
            sent = {s.stage: (s.events, s.people) for s in answer.stages}
            return answer if sent.get(Stage.FUNNEL_STAGE_REPORTED) == (3, 3) else None

        found = await eventually(funnel, what="the campaign's funnel in analytics")
        stages = {s.stage: (s.events, s.people) for s in found.stages}
        assert stages[Stage.FUNNEL_STAGE_SENT] == (8, 8)
        assert stages[Stage.FUNNEL_STAGE_CLICKED] == (7, 5)
        # Marked sent once analytics answered (just after the fold it shows).
        await eventually(lambda: pending(running) == 0, what="the outbox marked sent")

        # Sent again (a replica that stopped before marking it sent): analytics counts it once.
        internal = analytics_pb2_grpc.AnalyticsServiceStub(running.channel("analytics", caller="ingest"))
        fact = analytics_pb2.EventFact(event_id=events[0].event_id, type="phishing.email_sent")
        fact.occurred_at.CopyFrom(events[0].occurred_at)
        stored = await client.GetEvent(ingest_pb2.GetEventRequest(name=f"events/{events[0].event_id}"))
        fact.subject_pseudonym = stored.subject_pseudonym
        fact.dimensions["campaign_id"] = campaign_id
        again = await internal.RecordEvents(analytics_pb2.RecordEventsRequest(facts=[fact]))
        assert (again.folded, again.duplicates, again.excluded) == (0, 1, 0)


async def test_an_erased_subjects_pending_events_are_never_sent(tmp_path: Path) -> None:
    async with suite(
        tmp_path, services=SERVICES, ingest_env={**FEED, "AWARENESS_INGEST_ANALYTICS_INTERVAL_MS": "60000"}
    ) as running:
        person = f"gone-{uuid.uuid4().hex[:6]}@example.org"
        [event] = campaign(f"c-{uuid.uuid4().hex[:8]}", [person], "clicked")
        await running.client().AppendEvent(ingest_pb2.AppendEventRequest(event=event))
        assert pending(running) == 1
        gdpr = gdpr_pb2_grpc.GdprServiceStub(running.channel("gdpr", roles=("dpo",)))
        await gdpr.EraseSubject(
            gdpr_pb2.EraseSubjectRequest(subject=person, reason="Art. 17", request_id=str(uuid.uuid4()))
        )
        assert pending(running) == 0
        assert await running.ingest.analytics.send_once() == 0


async def test_forget_subject_fails_while_analytics_cannot_be_told(tmp_path: Path) -> None:
    async with suite(tmp_path, services=SERVICES, ingest_env=FEED) as running:
        await running.stop("analytics")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await running.internal().ForgetSubject(ingest_pb2.ForgetSubjectRequest(pseudonym="psn_someone"))
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
