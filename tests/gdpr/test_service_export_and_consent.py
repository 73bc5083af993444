"""ExportSubject (streamed Art. 20 export) and the consent RPCs over gRPC, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from awareness.gdpr.v1 import gdpr_pb2

from tests.gdpr.conftest import ANALYST, SCORING_SERVICE, Harness
from tests.gdpr.test_service_keys_and_erasure import unique_subject
from tests.grpc_errors import reason_of, rpc_error

START = datetime(2025, 1, 20, 8, 0, tzinfo=UTC)
EVENT_COUNT = 230  # more than one page of ListSubjectRecords (200) and more than one 64 KiB chunk


async def export(harness: Harness, subject: str) -> tuple[dict[str, Any], int]:
    chunks = [
        reply.data
        async for reply in harness.dpo.ExportSubject(
            gdpr_pb2.ExportSubjectRequest(subject=subject, reason="Art. 20 request DPO-9")
        )
    ]
    return json.loads(b"".join(chunks)), len(chunks)


async def test_export_streams_every_event_decrypted_with_metadata_and_consents(harness: Harness) -> None:
    subject = unique_subject()
    marker = uuid.uuid4().hex
    for index in range(EVENT_COUNT):
        await harness.ingest_event(
            subject=subject,
            occurred_at=START + timedelta(days=index),  # spans several key periods
            summary=f"clicked link {index} {marker}",
            details={"url": f"https://phish.example/{marker}/{index}", "padding": "p" * 200},
            risk_score=0.5,
        )
    await harness.dpo.WithdrawConsent(gdpr_pb2.WithdrawConsentRequest(subject=subject, purpose="profiling"))
    other = unique_subject()
    await harness.ingest_event(subject=other, occurred_at=START, summary="someone else")

    document, chunk_count = await export(harness, subject)

    assert chunk_count > 1
    assert harness.fake_ingest.listed_pages == 2
    assert document["format"] == "awareness.gdpr.export/v1"
    assert document["subject"]["identifier"] == subject
    assert document["subject"]["consent_state"]["profiling"] is False
    events = document["events"]
    assert len(events) == EVENT_COUNT
    assert {event["personal_data"] for event in events} == {"available"}
    assert [event["summary"] for event in events] == [
        f"clicked link {i} {marker}" for i in range(EVENT_COUNT)
    ]
    assert events[7]["details"]["url"] == f"https://phish.example/{marker}/7"
    assert {event["subject"] for event in events} == {subject}
    assert events[0]["metadata"]["risk_score"] == 0.5
    assert events[0]["metadata"]["label"] == "LABEL_TRUE_POSITIVE"
    assert len({event["key_period"] for event in events}) >= 8
    assert [(c["purpose"], c["action"]) for c in document["consents"]] == [("profiling", "withdraw")]
    assert harness.metrics.registry.get_sample_value("awareness_gdpr_exports_total") == 1


async def test_export_of_an_unknown_or_erased_subject_is_not_found(harness: Harness) -> None:
    unknown = await rpc_error(export(harness, unique_subject()))
    assert unknown.code() == grpc.StatusCode.NOT_FOUND
    subject = unique_subject()
    await harness.ingest_event(subject=subject, occurred_at=START, summary="s")
    document, _ = await export(harness, subject)
    assert len(document["events"]) == 1
    await harness.dpo.EraseSubject(gdpr_pb2.EraseSubjectRequest(subject=subject, reason="ticket DPO-10"))
    erased = await rpc_error(export(harness, subject))
    assert erased.code() == grpc.StatusCode.NOT_FOUND
    assert reason_of(erased) == "SUBJECT_NOT_FOUND"


async def test_export_needs_the_dpo_permission_and_fails_cleanly_when_ingest_is_down(
    harness: Harness,
) -> None:
    subject = unique_subject()
    await harness.ingest_event(subject=subject, occurred_at=START)
    denied = await rpc_error(
        _drain(harness.stub(ANALYST).ExportSubject(gdpr_pb2.ExportSubjectRequest(subject=subject)))
    )
    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
    harness.fake_ingest.down = True
    down = await rpc_error(export(harness, subject))
    assert down.code() == grpc.StatusCode.UNAVAILABLE


async def _drain(stream: Any) -> None:
    async for _ in stream:
        pass


async def test_withdrawing_consent_makes_check_consent_false_until_granted_again(harness: Harness) -> None:
    subject = unique_subject()
    await harness.ingest_event(subject=subject, occurred_at=START)
    pseudonym = next(iter(harness.fake_ingest.records))
    scoring = harness.stub(SCORING_SERVICE)

    async def granted(purpose: str, *pseudonyms: str) -> list[bool]:
        reply = await scoring.CheckConsent(
            gdpr_pb2.CheckConsentRequest(pseudonyms=list(pseudonyms), purpose=purpose)
        )
        assert [r.pseudonym for r in reply.results] == list(pseudonyms)
        return [r.granted for r in reply.results]

    assert await granted("profiling", pseudonym, "psn_unknown") == [True, False]
    assert await granted("training_data", pseudonym) == [False]  # consent-based: withheld until granted

    withdrawn = await harness.dpo.WithdrawConsent(
        gdpr_pb2.WithdrawConsentRequest(
            subject=subject, purpose="profiling", reason="objection DPO-11", request_id="w1"
        )
    )
    assert withdrawn.record.pseudonym == pseudonym
    assert withdrawn.record.action == gdpr_pb2.ConsentRecord.ACTION_WITHDRAW
    assert await granted("profiling", pseudonym) == [False]
    assert await granted("analytics", pseudonym) == [True]

    await harness.dpo.GrantConsent(gdpr_pb2.GrantConsentRequest(subject=subject, purpose="profiling"))
    assert await granted("profiling", pseudonym) == [True]
    # A replayed withdrawal (same request id) does not record a second change.
    replay = await harness.dpo.WithdrawConsent(
        gdpr_pb2.WithdrawConsentRequest(subject=subject, purpose="profiling", request_id="w1")
    )
    assert replay.record == withdrawn.record
    assert await granted("profiling", pseudonym) == [True]
    sample = harness.metrics.registry.get_sample_value
    assert sample("awareness_gdpr_consent_changes_total", {"purpose": "profiling", "action": "withdraw"}) == 1
    assert sample("awareness_gdpr_consent_changes_total", {"purpose": "profiling", "action": "grant"}) == 1

    await harness.dpo.EraseSubject(gdpr_pb2.EraseSubjectRequest(subject=subject, reason="ticket DPO-12"))
    assert await granted("profiling", pseudonym) == [False]  # an erased subject is never processed again


async def test_consent_for_a_subject_without_events_is_kept_for_later_events(harness: Harness) -> None:
    subject = unique_subject()
    await harness.dpo.WithdrawConsent(gdpr_pb2.WithdrawConsentRequest(subject=subject, purpose="profiling"))
    await harness.ingest_event(subject=subject, occurred_at=START)
    pseudonym = next(iter(harness.fake_ingest.records))
    reply = await harness.stub(SCORING_SERVICE).CheckConsent(
        gdpr_pb2.CheckConsentRequest(pseudonyms=[pseudonym], purpose="profiling")
    )
    assert reply.results[0].granted is False


async def test_consent_history_is_newest_first_and_paged(harness: Harness) -> None:
    subject = unique_subject()
    for _ in range(3):
        await harness.dpo.WithdrawConsent(
            gdpr_pb2.WithdrawConsentRequest(subject=subject, purpose="profiling")
        )
        await harness.dpo.GrantConsent(gdpr_pb2.GrantConsentRequest(subject=subject, purpose="profiling"))
    await harness.dpo.GrantConsent(gdpr_pb2.GrantConsentRequest(subject=subject, purpose="training_data"))
    seen: list[gdpr_pb2.ConsentRecord] = []
    token = ""
    issued: list[str] = []
    while True:
        page = await harness.dpo.ListConsentHistory(
            gdpr_pb2.ListConsentHistoryRequest(
                subject=subject, purpose="profiling", page_size=4, page_token=token
            )
        )
        seen.extend(page.records)
        token = page.next_page_token
        if not token:
            break
        issued.append(token)
    assert len(seen) == 6
    assert [r.action for r in seen] == [
        gdpr_pb2.ConsentRecord.ACTION_GRANT,
        gdpr_pb2.ConsentRecord.ACTION_WITHDRAW,
    ] * 3
    times = [r.time.ToDatetime() for r in seen]
    assert times == sorted(times, reverse=True)
    wrong_filter = await rpc_error(
        harness.dpo.ListConsentHistory(
            gdpr_pb2.ListConsentHistoryRequest(subject=subject, purpose="training_data", page_token=issued[0])
        )
    )
    assert wrong_filter.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_unknown_purpose_is_invalid_argument(harness: Harness) -> None:
    error = await rpc_error(
        harness.dpo.GrantConsent(gdpr_pb2.GrantConsentRequest(subject=unique_subject(), purpose="marketing"))
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason_of(error) == "UNKNOWN_PURPOSE"
