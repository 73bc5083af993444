"""Model health on a labelled live stream (issue 21, "Done when"): real signing, gdpr, policy, scoring
and ingest in-process over real sockets and stores.

A seeded champion scores a stream of events of 30 people over 20 days; the test labels every event
with a known ground truth, then one labelled person objects to profiling and another is erased. The
precision, recall and F1 printed by ``awareness model health --json`` (a separate process) must equal
the test's own computation from the scores ingest served, to 1e-9, per window, without the two
people; so must the gauges alerting reads.
"""

from __future__ import annotations

import asyncio
import functools
import json
import random
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from awareness.gdpr.v1 import gdpr_pb2, gdpr_pb2_grpc
from awareness.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from google.protobuf import timestamp_pb2

from services.runtime.auth import Principal
from services.runtime.db import transaction
from services.scoring.domain.training import DECISION_THRESHOLD, TrainingResult
from services.scoring.models import ModelStatus
from services.scoring.training_job import register_result
from tests.gdpr.suite import Suite, in_process_suite
from tests.support.suite import run_module
from tests.test_e2e_gdpr import eventually, small_model

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

INTEGRATION = Principal(subject="integration:mail-gateway", roles=frozenset({"integration"}))
ANALYST = Principal(subject="analyst:alan", roles=frozenset({"analyst"}))
DPO = Principal(subject="dpo:dana", roles=frozenset({"dpo"}))
SERVICES = ("signing", "gdpr", "policy", "scoring", "ingest")
PEOPLE = 30
QUIET_EVENTS = 160
BURSTS = 12
BURST_LENGTH = 6
UPLOAD_DETAILS = {
    "destination_category": "personal-cloud",
    "channel": "browser",
    "size_band": "100MB+",
    "action": "upload",
    "destination": "drive.example",
    "file_name": "q4-forecast.xlsx",
    "hostname": "laptop-0042",
    "location": "office",
}
QUIET = (
    ("phishing.email_opened", "gophish"),
    ("training.completed", "lms"),
    ("login.failed", "idp"),
    ("data.external_upload", "dlp"),
)
ENV = {
    "AWARENESS_SCORING_BOOTSTRAP_MODEL": "0",
    "AWARENESS_SCORING_RELOAD_SECONDS": "0.5",
    "AWARENESS_SCORING_CONSENT_CACHE_SECONDS": "0",
    "AWARENESS_SCORING_QUALITY_PUBLISH_SECONDS": "0.5",
    "AWARENESS_INGEST_RECONCILE_INTERVAL_SECONDS": "0.5",
    "AWARENESS_INGEST_RECONCILE_SETTLE_SECONDS": "0",
    "AWARENESS_INGEST_ANALYTICS": "false",
}


def stream(now: datetime) -> tuple[list[ingest_pb2.Event], set[str]]:
    """Quiet single events in working hours, and bursts of bulk uploads at night by a few people:
    the bursts are what the analysts find risky (the ground truth). Returns the events and the ids
    of the risky ones."""
    rng = random.Random(21)
    events: list[ingest_pb2.Event] = []
    risky: set[str] = set()

    def add(event_type: str, source: str, person: int, at: datetime, *, burst: bool) -> None:
        stamp = timestamp_pb2.Timestamp()
        stamp.FromDatetime(at)
        event = ingest_pb2.Event(
            event_id=str(uuid.uuid4()),
            type=event_type,
            source=source,
            subject=f"person{person}@corp.example",
            occurred_at=stamp,
            severity=ingest_pb2.SEVERITY_HIGH if burst else ingest_pb2.SEVERITY_LOW,
            summary="bulk upload of files to a personal cloud drive" * (3 if burst else 1),
            details=UPLOAD_DETAILS if event_type == "data.external_upload" else {},
        )
        events.append(event)
        if burst:
            risky.add(event.event_id)

    for _ in range(QUIET_EVENTS):
        day = (now - timedelta(days=rng.uniform(0.5, 20))).replace(hour=rng.randrange(9, 17))
        event_type, source = rng.choice(QUIET)
        add(event_type, source, rng.randrange(PEOPLE), min(day, now - timedelta(hours=1)), burst=False)
    for _ in range(BURSTS):
        start = (now - timedelta(days=rng.uniform(0.5, 20))).replace(hour=rng.choice((1, 2, 3, 22)))
        start = min(start, now - timedelta(hours=2))
        person = rng.randrange(PEOPLE)
        for step in range(BURST_LENGTH):
            add("data.external_upload", "dlp", person, start + timedelta(minutes=2 * step), burst=True)
    return events, risky


def expected_figures(scored: Sequence[tuple[float, int]]) -> dict[str, float]:
    tp = sum(1 for s, y in scored if s >= DECISION_THRESHOLD and y)
    fp = sum(1 for s, y in scored if s >= DECISION_THRESHOLD and not y)
    fn = sum(1 for s, y in scored if s < DECISION_THRESHOLD and y)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"labelled": len(scored), "precision": precision, "recall": recall, "f1": f1}


def register_champion(suite: Suite, model: TrainingResult) -> str:
    sessions = suite.services["scoring"].context.sessions
    assert sessions is not None
    with transaction(sessions) as session:
        row, _ = register_result(session, result=model, status=ModelStatus.CHAMPION)
        return row.version


async def test_live_precision_and_recall_printed_match_the_labels_without_objectors_or_erased(
    tmp_path: Path, database_url: str
) -> None:
    model = await asyncio.to_thread(small_model)
    now = datetime.now(UTC)
    async with in_process_suite(
        tmp_path / "var", services=SERVICES, database_url=database_url, **ENV
    ) as suite:
        version = register_champion(suite, model)
        ingest = ingest_pb2_grpc.IngestServiceStub(suite.channel("ingest", INTEGRATION))
        analyst = ingest_pb2_grpc.IngestServiceStub(suite.channel("ingest", ANALYST))
        gdpr = gdpr_pb2_grpc.GdprServiceStub(suite.channel("gdpr", DPO))

        events, risky = stream(now)
        appended = await ingest.AppendEvents(ingest_pb2.AppendEventsRequest(events=events))
        assert [r.WhichOneof("result") for r in appended.results] == ["receipt"] * len(events), appended

        async def scored(event_id: str) -> ingest_pb2.Event | None:
            read = await analyst.GetEvent(ingest_pb2.GetEventRequest(name=f"events/{event_id}"))
            done = read.metadata.scoring_state == ingest_pb2.EventMetadata.SCORING_STATE_SCORED
            return read if done else None

        served = {
            e.event_id: await eventually(functools.partial(scored, e.event_id), what="scores", seconds=120)
            for e in events
        }
        assert {read.metadata.model_version for read in served.values()} == {version}
        for event in events:
            risky_event = event.event_id in risky
            label = ingest_pb2.LABEL_TRUE_POSITIVE if risky_event else ingest_pb2.LABEL_FALSE_POSITIVE
            await analyst.LabelEvent(
                ingest_pb2.LabelEventRequest(name=f"events/{event.event_id}", label=label)
            )

        # After labelling: one person objects to profiling, another is erased. Neither counts.
        objector, erased = "person3@corp.example", "person7@corp.example"
        await gdpr.WithdrawConsent(
            gdpr_pb2.WithdrawConsentRequest(subject=objector, purpose="profiling", reason="objection DPO-7")
        )
        await gdpr.EraseSubject(
            gdpr_pb2.EraseSubjectRequest(
                subject=erased, reason="Art. 17, DPO-8", request_id=str(uuid.uuid4())
            )
        )
        left_out = {objector, erased}
        assert sum(e.subject in left_out for e in events) >= 5

        expected = {}
        for window, days in (("7d", 7), ("30d", 30)):
            start = now - timedelta(days=days)
            pairs = [
                (served[e.event_id].metadata.risk_score, int(e.event_id in risky))
                for e in events
                if e.subject not in left_out and e.occurred_at.ToDatetime(UTC) >= start
            ]
            expected[window] = expected_figures(pairs)
        assert 0 < expected["7d"]["labelled"] < expected["30d"]["labelled"]
        scores = sorted(read.metadata.risk_score for read in served.values())
        assert 0 < expected["30d"]["precision"] < 1 or 0 < expected["30d"]["recall"] < 1, scores

        env = {**suite.env, "AWARENESS_SCORING_TARGET": suite.addresses["scoring"]}
        printed = await asyncio.to_thread(run_module, "services.cli", "model", "health", "--json", env=env)
        assert printed.returncode == 0, printed.stderr
        health = json.loads(printed.stdout)
        assert health["name"] == f"models/{version}/health" and health["status"] == "STATUS_CHAMPION"
        own = {row["window"]: row for row in health["live_quality"] if row["scorer"] == "SCORER_MODEL"}
        for window, figures in expected.items():
            got = own[window]["figures"]
            assert int(got.get("labelled_events", 0)) == figures["labelled"], window
            for name in ("precision", "recall", "f1"):
                assert abs(float(got.get(name, 0.0)) - figures[name]) < 1e-9, (window, name)

        table = await asyncio.to_thread(run_module, "services.cli", "model", "health", env=env)
        assert table.returncode == 0, table.stderr
        assert "PRECISION" in table.stdout and f"models/{version}" in table.stdout

        # The alerting gauges carry the same F1 (refreshed in the background).
        registry = suite.services["scoring"].context.metrics.registry

        async def published() -> float | None:
            value = registry.get_sample_value(
                "awareness_scoring_live_f1", {"model_version": version, "window": "30d"}
            )
            return value if value is not None and abs(value - expected["30d"]["f1"]) < 1e-9 else None

        assert abs(await eventually(published, what="the live F1 gauge") - expected["30d"]["f1"]) < 1e-9
        assert registry.get_sample_value("awareness_scoring_last_label_timestamp_seconds") is not None
