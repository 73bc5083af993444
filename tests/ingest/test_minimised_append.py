"""Minimisation on the append path (REAL signing, gdpr and ingest over mTLS): undeclared detail keys
are refused (or dropped, per the setting), free text is redacted per source before it is sealed, and
dimensions are stored in clear, returned in every view, and outlive the subject's key."""

from __future__ import annotations

import uuid
from pathlib import Path

import grpc
import pytest
from awareness.gdpr.v1 import gdpr_pb2, gdpr_pb2_grpc
from awareness.ingest.v1 import ingest_pb2
from grpc_status import rpc_status
from sqlalchemy import select

from services.ingest.models import EventMetadata, EventRecord
from services.runtime.errors import field_violations
from tests.ingest.harness import Suite, make_event, suite

SUMMARY = (
    "Reported by Dana Whitfield <dana.whitfield@example.com> from 192.0.2.44 "
    "(fe80::1ff:fe23:4567:890a); call back on (415) 555-0132 or +44 20 7946 0958. "
    "Link: https://login.example.net/reset?token=8f14e45fceea167a5a36dedd4bea2543&user=dana"
)
REDACTED = (
    "Reported by Dana Whitfield <[email]> from [ipv4] ([ipv6]); call back on [phone] or [phone]. "
    "Link: https://login.example.net/reset?[query]"
)


def stored(running: Suite, event_id: str) -> tuple[EventRecord, EventMetadata]:
    with running.ingest.writer._sessions() as session:
        record = session.scalars(select(EventRecord).where(EventRecord.event_id == event_id)).one()
        metadata = session.scalars(select(EventMetadata).where(EventMetadata.event_id == event_id)).one()
        return record, metadata


async def test_undeclared_keys_are_refused_each_by_name(tmp_path: Path) -> None:
    async with suite(tmp_path) as running:
        client = running.client()
        event = make_event(details={"campaign_id": "c-1", "password": "hunter2", "Notes": "x"})
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.AppendEvent(ingest_pb2.AppendEventRequest(event=event))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        status = rpc_status.from_call(caught.value)
        assert status is not None
        violations = {v.field: v.description for v in field_violations(status)}
        assert set(violations) == {"event.details.password", "event.details.Notes"}
        assert "campaign_id" in violations["event.details.password"]

        # In a batch only the event with the undeclared key is refused.
        good = make_event()
        response = await client.AppendEvents(ingest_pb2.AppendEventsRequest(events=[event, good]))
        assert response.results[0].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert response.results[1].receipt.event_id == good.event_id


async def test_undeclared_keys_are_dropped_when_so_configured(tmp_path: Path) -> None:
    async with suite(tmp_path, ingest_env={"AWARENESS_INGEST_UNDECLARED_DETAILS": "drop"}) as running:
        client = running.client()
        event = make_event(
            details={"campaign_id": "c-1", "url": "https://x.example/a", "password": "hunter2"}
        )
        await client.AppendEvent(ingest_pb2.AppendEventRequest(event=event))
        read = await client.GetEvent(ingest_pb2.GetEventRequest(name=f"events/{event.event_id}"))
        assert dict(read.details) == {"campaign_id": "c-1", "url": "https://x.example/a"}
        # A retry of the same event is the same event: idempotent, not a conflict.
        again = await client.AppendEvent(ingest_pb2.AppendEventRequest(event=event))
        assert again.receipt.leaf_hash == read.receipt.leaf_hash


async def test_free_text_is_redacted_before_it_is_sealed_and_dimensions_are_in_clear(tmp_path: Path) -> None:
    async with suite(tmp_path, ingest_env={"AWARENESS_INGEST_REDACTION": "*=all;legacy=none"}) as running:
        client = running.client()
        details = {
            "campaign_id": "q4-parcel",
            "template": "parcel-notice",
            "gophish_message": "Clicked by carol@example.org from 198.51.100.7",
            "url": "https://track.example.com/p?rid=Xy12&email=carol%40example.org",
            "rid": "Xy12",
        }
        event = make_event(event_type="phishing.reported", summary=SUMMARY, details=details)
        untouched = make_event(source="legacy", summary=SUMMARY, details={"campaign_id": "q4-parcel"})
        for sent in (event, untouched):
            await client.AppendEvent(ingest_pb2.AppendEventRequest(event=sent))

        read = await client.GetEvent(ingest_pb2.GetEventRequest(name=f"events/{event.event_id}"))
        assert read.summary == REDACTED
        assert dict(read.details) == {
            **details,
            "gophish_message": "Clicked by [email] from [ipv4]",
            "url": "https://track.example.com/p?[query]",
        }
        legacy = await client.GetEvent(ingest_pb2.GetEventRequest(name=f"events/{untouched.event_id}"))
        assert legacy.summary == SUMMARY

        record, metadata = stored(running, event.event_id)
        assert record.record_version == 3
        assert record.dimensions == '{"campaign_id":"q4-parcel","template":"parcel-notice"}'
        for secret in ("dana", "carol", "Xy12", "192.0.2.44"):
            assert secret.encode() not in bytes(record.ciphertext)
            assert secret not in (record.dimensions or "")
        assert metadata.analytics_state == 1  # waiting for analytics (no analytics in this suite)


async def test_dimensions_are_read_in_every_view_and_outlive_erasure(tmp_path: Path) -> None:
    async with suite(tmp_path, ingest_env={"AWARENESS_INGEST_KEY_CACHE_SECONDS": "0"}) as running:
        event = make_event(
            subject="erin@example.org", details={"campaign_id": "c-9", "url": "https://x.example"}
        )
        await running.client().AppendEvent(ingest_pb2.AppendEventRequest(event=event))
        name = f"events/{event.event_id}"
        pseudonymous = await running.client(roles=("auditor",)).GetEvent(
            ingest_pb2.GetEventRequest(name=name)
        )
        assert pseudonymous.personal_data_state == ingest_pb2.Event.PERSONAL_DATA_STATE_WITHHELD
        assert dict(pseudonymous.details) == {"campaign_id": "c-9"}

        gdpr = gdpr_pb2_grpc.GdprServiceStub(running.channel("gdpr", roles=("dpo",)))
        await gdpr.EraseSubject(
            gdpr_pb2.EraseSubjectRequest(
                subject="erin@example.org", reason="Art. 17", request_id=str(uuid.uuid4())
            )
        )
        erased = await running.client().GetEvent(ingest_pb2.GetEventRequest(name=name))
        assert erased.personal_data_state == ingest_pb2.Event.PERSONAL_DATA_STATE_ERASED
        assert (erased.subject, erased.summary, dict(erased.details)) == ("", "", {"campaign_id": "c-9"})
        _, metadata = stored(running, event.event_id)
        assert metadata.analytics_state == 3  # an erased subject's pending facts are never sent
