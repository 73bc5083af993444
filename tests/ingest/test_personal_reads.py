"""Reading personal data is its own permission, and label notes are personal data (REAL services)."""

from __future__ import annotations

import uuid
from pathlib import Path

import grpc
import pytest
from awareness.gdpr.v1 import gdpr_pb2, gdpr_pb2_grpc
from awareness.ingest.v1 import ingest_pb2
from sqlalchemy import select

from services.ingest.models import EventMetadata
from tests.grpc_errors import reason_of, rpc_error, violated_fields
from tests.ingest.harness import Suite, make_event, suite

State = ingest_pb2.Event.PersonalDataState
NOTE = "Heidi said she clicked it on her phone"
PSEUDONYMOUS_ROLES = ("auditor", "policy_author", "policy_approver", "ml_engineer")


def _stored_note(running: Suite, event_id: str) -> str:
    with running.ingest.writer._sessions() as session:
        return session.scalars(
            select(EventMetadata.label_note).where(EventMetadata.event_id == event_id)
        ).one()


async def _labelled(running: Suite) -> ingest_pb2.Event:
    event = make_event(subject="heidi@example.org", summary="clicked from her phone")
    await running.client().AppendEvent(ingest_pb2.AppendEventRequest(event=event))
    await running.client(roles=("analyst",)).LabelEvent(
        ingest_pb2.LabelEventRequest(
            name=f"events/{event.event_id}", label=ingest_pb2.LABEL_TRUE_POSITIVE, note=NOTE
        )
    )
    return event


async def test_only_readers_of_personal_data_get_it_and_others_cost_gdpr_nothing(
    tmp_path: Path, database_url: str | None
) -> None:
    async with suite(
        tmp_path, database_url=database_url, ingest_env={"AWARENESS_INGEST_KEY_CACHE_SECONDS": "0"}
    ) as running:
        event = await _labelled(running)
        name = f"events/{event.event_id}"
        for role in ("analyst", "dpo", "admin"):
            read = await running.client(roles=(role,)).GetEvent(ingest_pb2.GetEventRequest(name=name))
            assert read.personal_data_state == State.PERSONAL_DATA_STATE_AVAILABLE, role
            assert (read.subject, read.summary, read.metadata.label_note) == (
                "heidi@example.org",
                "clicked from her phone",
                NOTE,
            )
        # With gdpr gone, a call that asked for a key would read UNAVAILABLE: WITHHELD shows none was asked.
        await running.stop("gdpr")
        for role in PSEUDONYMOUS_ROLES:
            client = running.client(roles=(role,))
            read = await client.GetEvent(ingest_pb2.GetEventRequest(name=name))
            listed = (await client.ListEvents(ingest_pb2.ListEventsRequest())).events
            for view in (read, *listed):
                assert view.personal_data_state == State.PERSONAL_DATA_STATE_WITHHELD, role
                # Only the dimensions (in clear), never the personal details (the URL).
                assert (view.subject, view.summary, dict(view.details), view.metadata.label_note) == (
                    "",
                    "",
                    {"campaign_id": event.details["campaign_id"]},
                    "",
                )
                assert view.subject_pseudonym.startswith("psn_") and view.type == event.type
                assert view.metadata.label == ingest_pb2.LABEL_TRUE_POSITIVE


async def test_label_notes_are_sealed_and_die_with_the_subject(
    tmp_path: Path, database_url: str | None
) -> None:
    async with suite(tmp_path, database_url=database_url) as running:
        event = await _labelled(running)
        name = f"events/{event.event_id}"
        stored = _stored_note(running, event.event_id)
        assert stored.startswith("sealed1:") and "Heidi" not in stored

        gdpr = gdpr_pb2_grpc.GdprServiceStub(running.channel("gdpr", roles=("dpo",)))
        await gdpr.EraseSubject(
            gdpr_pb2.EraseSubjectRequest(
                subject="heidi@example.org", reason="Art. 17 request", request_id=str(uuid.uuid4())
            )
        )
        read = await running.client(roles=("analyst",)).GetEvent(ingest_pb2.GetEventRequest(name=name))
        assert read.personal_data_state == State.PERSONAL_DATA_STATE_ERASED
        assert read.metadata.label_note == "" and read.metadata.label == ingest_pb2.LABEL_TRUE_POSITIVE

        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await running.client(roles=("analyst",)).LabelEvent(
                ingest_pb2.LabelEventRequest(name=name, label=ingest_pb2.LABEL_FALSE_POSITIVE, note="again")
            )
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert _stored_note(running, event.event_id) == stored


async def test_system_events_take_no_note(tmp_path: Path) -> None:
    async with suite(tmp_path) as running:
        erasure = make_event(event_type="gdpr.erasure", subject="", summary="subject erased", details={})
        erasure.subject_pseudonym = "psn_erased0000000000000000000"
        await running.internal().AppendEvent(ingest_pb2.AppendEventRequest(event=erasure))
        error = await rpc_error(
            running.client(roles=("analyst",)).LabelEvent(
                ingest_pb2.LabelEventRequest(
                    name=f"events/{erasure.event_id}", label=ingest_pb2.LABEL_TRUE_POSITIVE, note="about x"
                )
            )
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert reason_of(error) == "NOTE_NOT_ALLOWED"
        assert violated_fields(error) == {"note"}


async def test_filtering_by_identifier_needs_the_personal_data_permission(tmp_path: Path) -> None:
    async with suite(tmp_path) as running:
        await _labelled(running)
        request = ingest_pb2.ListEventsRequest(subject="heidi@example.org")
        assert len((await running.client(roles=("analyst",)).ListEvents(request)).events) == 1
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await running.client(roles=("auditor",)).ListEvents(request)
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_the_subjects_export_carries_the_note_opened(tmp_path: Path) -> None:
    import json

    async with suite(tmp_path) as running:
        event = await _labelled(running)
        gdpr = gdpr_pb2_grpc.GdprServiceStub(running.channel("gdpr", roles=("dpo",)))
        request = gdpr_pb2.ExportSubjectRequest(subject="heidi@example.org", reason="Art. 15 request")
        document = json.loads(b"".join([reply.data async for reply in gdpr.ExportSubject(request)]))
        [exported] = [e for e in document["events"] if e["event_id"] == event.event_id]
        assert exported["metadata"]["label_note"] == NOTE


async def test_a_note_written_in_clear_before_sealing_goes_with_the_erasure(
    tmp_path: Path, database_url: str | None
) -> None:
    from sqlalchemy import update

    async with suite(tmp_path, database_url=database_url) as running:
        event = await _labelled(running)
        legacy = "Heidi's manager confirmed it (written before notes were sealed)"
        with running.ingest.writer._sessions() as session, session.begin():
            session.execute(
                update(EventMetadata)
                .where(EventMetadata.event_id == event.event_id)
                .values(label_note=legacy)
            )
        name = f"events/{event.event_id}"
        read = await running.client(roles=("analyst",)).GetEvent(ingest_pb2.GetEventRequest(name=name))
        assert read.metadata.label_note == legacy
        gdpr = gdpr_pb2_grpc.GdprServiceStub(running.channel("gdpr", roles=("dpo",)))
        await gdpr.EraseSubject(
            gdpr_pb2.EraseSubjectRequest(
                subject="heidi@example.org", reason="Art. 17 request", request_id=str(uuid.uuid4())
            )
        )
        assert _stored_note(running, event.event_id) == ""
