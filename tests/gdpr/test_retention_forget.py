"""After retention shreds keys, ingest drops its cached copies at once (best-effort, bounded).

First against the real gdpr and ingest services: an event read (and so cached) before retention reads as
erased right after it, not decrypted from ingest's 60-second key cache. Then against the ingest double:
which pseudonyms are forgotten, how many calls run at a time, and that a failure does not fail retention.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from awareness.gdpr.v1 import gdpr_pb2, gdpr_pb2_grpc
from awareness.ingest.v1 import ingest_pb2, ingest_pb2_grpc

from services.runtime.auth import Principal
from tests.gdpr.conftest import DPO, Harness, timestamp
from tests.gdpr.suite import in_process_suite
from tests.gdpr.test_service_keys_and_erasure import lookup, unique_subject
from tests.gdpr.test_service_retention_and_kek import months_ago, readable
from tests.gdpr.test_verify_audit import run_verify_audit

INTEGRATION = Principal(subject="integration:mail-gateway", roles=frozenset({"integration"}))
ANALYST = Principal(subject="analyst:alan", roles=frozenset({"analyst"}))
ERASED = ingest_pb2.Event.PERSONAL_DATA_STATE_ERASED
AVAILABLE = ingest_pb2.Event.PERSONAL_DATA_STATE_AVAILABLE


def event(subject: str, occurred_at: datetime, summary: str) -> ingest_pb2.Event:
    return ingest_pb2.Event(
        event_id=str(uuid.uuid4()),
        type="phishing.clicked",
        source="mail-gateway",
        subject=subject,
        occurred_at=timestamp(occurred_at),
        severity=ingest_pb2.SEVERITY_HIGH,
        summary=summary,
        details={"url": "https://x.example/landing"},
    )


async def test_real_ingest_reads_a_retention_shredded_event_as_erased_at_once(
    tmp_path: Path, database_url: str
) -> None:
    old_subject, recent_subject = unique_subject(), unique_subject()
    old = event(old_subject, months_ago(40), "clicked three years ago")
    recent = event(recent_subject, datetime.now(UTC) - timedelta(hours=1), "clicked today")
    async with in_process_suite(
        tmp_path / "var", services=("signing", "gdpr", "ingest"), database_url=database_url
    ) as suite:
        writer = ingest_pb2_grpc.IngestServiceStub(suite.channel("ingest", INTEGRATION))
        reader = ingest_pb2_grpc.IngestServiceStub(suite.channel("ingest", ANALYST))
        gdpr = gdpr_pb2_grpc.GdprServiceStub(suite.channel("gdpr", DPO))
        appended = await writer.AppendEvents(ingest_pb2.AppendEventsRequest(events=[old, recent]))
        assert [r.WhichOneof("result") for r in appended.results] == ["receipt", "receipt"], appended

        async def read(item: ingest_pb2.Event) -> ingest_pb2.Event:
            answer: ingest_pb2.Event = await reader.GetEvent(
                ingest_pb2.GetEventRequest(name=f"events/{item.event_id}")
            )
            return answer

        # Read once: ingest now holds the old period's data key in its cache (TTL 60 s).
        before = await read(old)
        assert (before.personal_data_state, before.subject) == (AVAILABLE, old_subject)

        await gdpr.SetRetentionRule(
            gdpr_pb2.SetRetentionRuleRequest(
                rule=gdpr_pb2.RetentionRule(retention_days=365), reason="one year"
            )
        )
        report = await gdpr.ApplyRetention(gdpr_pb2.ApplyRetentionRequest(reason="daily"))
        assert report.keys_shredded == 1

        after = await read(old)
        assert after.personal_data_state == ERASED
        assert (after.subject, after.summary, dict(after.details)) == ("", "", {})
        assert (after.type, after.subject_pseudonym) == (old.type, before.subject_pseudonym)
        kept = await read(recent)
        assert (kept.personal_data_state, kept.summary) == (AVAILABLE, "clicked today")
        metrics = suite.services["gdpr"].context.metrics.registry
        assert not metrics.get_sample_value("awareness_gdpr_retention_forget_failures_total")

        # The retention run is in gdpr's audit trail, whose chain verifies from the database.
        gdpr_url = suite.services["gdpr"].context.settings.database_url
        code, out, err = await run_verify_audit("--database", gdpr_url, "--quiet")
        assert code == 0 and out.rstrip().endswith("OK"), out + err


async def shred_setup(harness: Harness, *, subjects: int, periods: int = 1) -> list[gdpr_pb2.SubjectKey]:
    """Keys of ``subjects`` people, ``periods`` expired months each, plus one current key that stays."""
    lookups = [
        lookup(subject, months_ago(30 + period))
        for subject in [unique_subject() for _ in range(subjects)]
        for period in range(periods)
    ]
    lookups.append(lookup(unique_subject(), months_ago(0)))
    reply = await harness.internal.GetSubjectKeys(gdpr_pb2.GetSubjectKeysRequest(lookups=lookups))
    await harness.dpo.SetRetentionRule(
        gdpr_pb2.SetRetentionRuleRequest(rule=gdpr_pb2.RetentionRule(retention_days=365))
    )
    return list(reply.keys)


async def test_each_affected_pseudonym_is_forgotten_once_and_never_for_a_dry_run_or_a_replay(
    harness: Harness,
) -> None:
    keys = await shred_setup(harness, subjects=3, periods=2)
    shredded = {key.pseudonym for key in keys[:-1]}
    assert len(shredded) == 3

    await harness.dpo.ApplyRetention(gdpr_pb2.ApplyRetentionRequest(dry_run=True))
    assert harness.fake_ingest.forgotten == []

    report = await harness.dpo.ApplyRetention(gdpr_pb2.ApplyRetentionRequest(request_id="r-1"))
    assert report.keys_shredded == 6
    assert sorted(harness.fake_ingest.forgotten) == sorted(shredded)  # once each, not once per key

    await harness.dpo.ApplyRetention(gdpr_pb2.ApplyRetentionRequest(request_id="r-1"))  # a replay
    await harness.dpo.ApplyRetention(gdpr_pb2.ApplyRetentionRequest())  # nothing left to shred
    assert len(harness.fake_ingest.forgotten) == 3


async def test_a_large_run_answers_without_waiting_and_forgets_a_bounded_number_at_a_time(
    harness: Harness,
) -> None:
    keys = await shred_setup(harness, subjects=40)
    use_cases = harness.service.use_cases
    use_cases.forget_concurrency = 4
    use_cases.forget_wait_seconds = 0.0  # answer at once; the calls go on in the background
    harness.fake_ingest.forget_delay = 0.2  # 40 calls, 4 at a time: about 2 s in all

    report = await harness.dpo.ApplyRetention(gdpr_pb2.ApplyRetentionRequest())

    assert report.keys_shredded == 40
    assert len(harness.fake_ingest.forgotten) < 40
    deadline = asyncio.get_running_loop().time() + 20
    while len(harness.fake_ingest.forgotten) < 40:
        assert asyncio.get_running_loop().time() < deadline, "the background forgetting never finished"
        await asyncio.sleep(0.05)
    assert sorted(harness.fake_ingest.forgotten) == sorted(key.pseudonym for key in keys[:-1])
    assert 1 < harness.fake_ingest.forget_max_in_flight <= 4


async def test_ingest_down_does_not_fail_retention_and_is_counted(harness: Harness) -> None:
    keys = await shred_setup(harness, subjects=5)
    harness.fake_ingest.down = True

    report = await harness.dpo.ApplyRetention(gdpr_pb2.ApplyRetentionRequest(reason="daily"))

    assert report.keys_shredded == 5
    after = await readable(harness, keys)
    assert [after[(k.pseudonym, k.key_period)] is None for k in keys] == [True] * 5 + [False]
    assert harness.fake_ingest.forgotten == []
    failures = harness.metrics.registry.get_sample_value("awareness_gdpr_retention_forget_failures_total")
    assert failures == 5
    # The gdpr service itself stayed healthy and answers as before.
    rules = await harness.dpo.ListRetentionRules(gdpr_pb2.ListRetentionRulesRequest())
    assert rules.rules[0].retention_days == 365


async def test_forgetting_respects_the_callers_deadline(harness: Harness) -> None:
    await shred_setup(harness, subjects=3)
    harness.fake_ingest.forget_delay = 30.0  # far longer than the caller is willing to wait
    harness.service.use_cases.forget_concurrency = 1
    harness.service.use_cases.forget_wait_seconds = 60.0  # so only the deadline bounds the wait

    # Half of what is left of a 4-second deadline is waited for, then the report comes back.
    report = await harness.dpo.ApplyRetention(gdpr_pb2.ApplyRetentionRequest(), timeout=4.0)

    assert report.keys_shredded == 3
    assert harness.fake_ingest.forgotten == []
    # The service answers other calls while the forgetting is still in flight.
    await harness.dpo.ApplyRetention(gdpr_pb2.ApplyRetentionRequest(dry_run=True), timeout=4.0)
