"""The access records the gdpr service appends for its audited methods: resource, pseudonym, outcome,
and never a subject identifier or a reason someone typed (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from awareness.gdpr.v1 import gdpr_pb2
from awareness.ingest.v1 import ingest_pb2

from tests.gdpr.conftest import ADMIN, ANALYST, FakeIngest, Harness, running_harness
from tests.gdpr.test_service_keys_and_erasure import unique_subject
from tests.grpc_errors import rpc_error

GDPR = "/awareness.gdpr.v1.GdprService/"
REASON = "ticket DPO-4711 confidential wording"


@pytest.fixture
async def audited(tmp_path: Path, database_url: str) -> AsyncIterator[tuple[Harness, FakeIngest]]:
    async with running_harness(tmp_path / "var", database_url) as running:
        yield running, running.fake_ingest


def summary(event: ingest_pb2.Event) -> tuple[str, str, str, str, str]:
    details = event.details
    return (
        details["principal"],
        details["action"],
        details.get("resource", ""),
        event.subject_pseudonym,
        details["outcome"],
    )


def assert_nothing_personal(events: list[ingest_pb2.Event], *secrets: str) -> None:
    for event in events:
        assert event.type == "audit.action" and event.source == "gdpr" and not event.subject
        assert not event.summary and not event.details.get("reason")
        text = (str(event) + event.SerializeToString().decode("utf-8", "replace")).casefold()
        for secret in secrets:
            assert secret.casefold() not in text, f"{secret!r} in an access record: {event}"


async def _export(harness: Harness, subject: str) -> bytes:
    chunks = [
        reply.data
        async for reply in harness.dpo.ExportSubject(
            gdpr_pb2.ExportSubjectRequest(subject=subject, reason=REASON)
        )
    ]
    return b"".join(chunks)


async def test_subject_actions_name_the_pseudonym_never_the_identifier_nor_the_reason(
    audited: tuple[Harness, FakeIngest],
) -> None:
    harness, ingest = audited
    subject, stranger = unique_subject(), unique_subject()
    await harness.ingest_event(subject=subject, occurred_at=datetime.now(UTC), summary="clicked")

    granted = await harness.dpo.GrantConsent(
        gdpr_pb2.GrantConsentRequest(subject=subject, purpose="training_data", reason=REASON)
    )
    pseudonym = granted.record.pseudonym
    await harness.dpo.WithdrawConsent(
        gdpr_pb2.WithdrawConsentRequest(subject=subject, purpose="profiling", reason=REASON)
    )
    await harness.dpo.ListConsentHistory(gdpr_pb2.ListConsentHistoryRequest(subject=subject))
    assert subject.encode() in await _export(harness, subject)
    denied = await rpc_error(_export_as(harness, ANALYST, subject))
    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
    erased = await harness.dpo.EraseSubject(gdpr_pb2.EraseSubjectRequest(subject=subject, reason=REASON))
    # After the erasure, and for a person never seen, nothing links the identifier to anyone.
    assert (await rpc_error(_export(harness, subject))).code() == grpc.StatusCode.NOT_FOUND
    unknown = await rpc_error(
        harness.dpo.EraseSubject(gdpr_pb2.EraseSubjectRequest(subject=stranger, reason=REASON))
    )
    assert unknown.code() == grpc.StatusCode.NOT_FOUND
    history = await rpc_error(
        harness.dpo.ListConsentHistory(gdpr_pb2.ListConsentHistoryRequest(subject=stranger))
    )
    assert history.code() == grpc.StatusCode.NOT_FOUND

    events = await ingest.settled(9)
    assert [summary(event) for event in events] == [
        ("dpo:dana", "consent.grant", "", pseudonym, "OK"),
        ("dpo:dana", "consent.withdraw", "", pseudonym, "OK"),
        ("dpo:dana", "consent.read", "", pseudonym, "OK"),
        ("dpo:dana", "subject.export", "", pseudonym, "OK"),
        ("analyst:alan", "subject.export", "", "", "PERMISSION_DENIED"),
        ("dpo:dana", "subject.erase", erased.name, pseudonym, "OK"),
        ("dpo:dana", "subject.export", "", "", "NOT_FOUND"),
        ("dpo:dana", "subject.erase", "erasures", "", "NOT_FOUND"),
        ("dpo:dana", "consent.read", "", "", "NOT_FOUND"),
    ]
    assert [event.details.get("purpose") for event in events[:3]] == ["training_data", "profiling", None]
    assert events[5].details["keys_shredded"] == str(erased.keys_shredded) != "0"
    assert events[3].details["method"] == GDPR + "ExportSubject"
    assert_nothing_personal(events, subject, stranger, subject.split("@")[0], REASON)
    assert len({event.event_id for event in events}) == len(events)


def _export_as(harness: Harness, principal: Any, subject: str) -> Any:
    async def drain() -> None:
        async for _ in harness.stub(principal).ExportSubject(gdpr_pb2.ExportSubjectRequest(subject=subject)):
            pass

    return drain()


async def test_retention_and_kek_changes_name_their_resource_and_counts(
    audited: tuple[Harness, FakeIngest],
) -> None:
    harness, ingest = audited
    await harness.dpo.SetRetentionRule(
        gdpr_pb2.SetRetentionRuleRequest(
            rule=gdpr_pb2.RetentionRule(event_type="phishing.clicked", retention_days=30), reason=REASON
        )
    )
    refused = await rpc_error(
        harness.dpo.SetRetentionRule(
            gdpr_pb2.SetRetentionRuleRequest(
                rule=gdpr_pb2.RetentionRule(event_type="Not A Type!", retention_days=1)
            )
        )
    )
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    report = await harness.dpo.ApplyRetention(gdpr_pb2.ApplyRetentionRequest(dry_run=True, reason=REASON))
    rotated = await harness.stub(ADMIN).RotateKek(gdpr_pb2.RotateKekRequest(reason=REASON))

    events = await ingest.settled(4)
    assert [summary(event) for event in events] == [
        ("dpo:dana", "retention_rule.set", "retentionRules/phishing.clicked", "", "OK"),
        ("dpo:dana", "retention_rule.set", "retentionRules", "", "INVALID_ARGUMENT"),
        ("dpo:dana", "retention.apply", "retentionRules", "", "OK"),
        ("admin:ada", "kek.rotate", f"keks/{rotated.kek_id}", "", "OK"),
    ]
    assert events[0].details["retention_days"] == "30"
    assert (events[2].details["dry_run"], events[2].details["keys_shredded"]) == (
        "true",
        str(report.keys_shredded),
    )
    assert events[3].details["keys_rewrapped"] == str(rotated.keys_rewrapped)
    assert_nothing_personal(events, REASON, "Not A Type!")


async def test_reads_of_the_gdpr_trail_and_internal_calls_are_not_recorded(
    audited: tuple[Harness, FakeIngest],
) -> None:
    harness, ingest = audited
    subject = unique_subject()
    await harness.ingest_event(subject=subject, occurred_at=datetime.now(UTC))  # GetSubjectKeys (internal)
    await harness.dpo.ListErasureRecords(gdpr_pb2.ListErasureRecordsRequest())
    await harness.dpo.ListAuditRecords(gdpr_pb2.ListAuditRecordsRequest())
    await harness.dpo.GrantConsent(gdpr_pb2.GrantConsentRequest(subject=subject, purpose="analytics"))
    events = await ingest.settled(1)
    await asyncio.sleep(0.3)  # one more flush interval: nothing else arrives
    assert [event.details["action"] for event in ingest.access_records] == ["consent.grant"]
    assert_nothing_personal(events, subject)
