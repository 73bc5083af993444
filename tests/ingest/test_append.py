"""The append path through the API, with the REAL gdpr and signing services."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from awareness.ingest.v1 import ingest_pb2
from grpc_status import rpc_status
from sqlalchemy import select

from services.ingest.models import EventRecord
from services.runtime.errors import error_info, field_violations
from tests.ingest.harness import eventually, make_event, suite, timestamp

Receipt = ingest_pb2.Receipt


def stored_ids(running: object) -> set[str]:
    runtime = running.ingest  # type: ignore[attr-defined]
    sessions = runtime.writer._sessions
    with sessions() as session:
        return set(session.scalars(select(EventRecord.event_id)))


async def test_append_acknowledges_a_committed_encrypted_event_and_reads_it_back(
    tmp_path: Path, database_url: str | None
) -> None:
    async with suite(tmp_path, database_url=database_url) as running:
        client = running.client()
        event = make_event(
            summary="clicked the link in the payroll mail", details={"url": "https://x.example"}
        )
        response = await client.AppendEvent(ingest_pb2.AppendEventRequest(event=event))
        receipt = response.receipt
        assert receipt.event_id == event.event_id and not response.replayed
        assert receipt.state == Receipt.STATE_ACCEPTED and len(receipt.leaf_hash) == 32
        # Acknowledged means committed: the row is there the moment the receipt is.
        assert event.event_id in stored_ids(running)

        stored = await client.GetEvent(ingest_pb2.GetEventRequest(name=f"events/{event.event_id}"))
        assert stored.personal_data_state == ingest_pb2.Event.PERSONAL_DATA_STATE_AVAILABLE
        assert (stored.subject, stored.summary, dict(stored.details)) == (
            "alice@example.org",
            "clicked the link in the payroll mail",
            {"url": "https://x.example"},
        )
        assert stored.subject_pseudonym.startswith("psn_")
        assert stored.metadata.scoring_state == ingest_pb2.EventMetadata.SCORING_STATE_PENDING

        async def checkpointed() -> Receipt | None:
            current = await client.GetReceipt(ingest_pb2.GetReceiptRequest(name=f"events/{event.event_id}"))
            return current if current.state == Receipt.STATE_CHECKPOINTED else None

        final = await eventually(checkpointed, what="a checkpoint covering the event")
        assert final.leaf_index == 0 and final.leaf_hash == receipt.leaf_hash
        assert final.checkpoint.tree_size >= 1 and final.checkpoint.note.startswith("awareness.local/log\n")


async def test_replay_returns_the_original_receipt_and_changed_content_is_already_exists(
    tmp_path: Path, database_url: str | None
) -> None:
    async with suite(tmp_path, database_url=database_url) as running:
        client = running.client()
        event = make_event()
        first = await client.AppendEvent(ingest_pb2.AppendEventRequest(event=event))
        again = await client.AppendEvent(ingest_pb2.AppendEventRequest(event=event))
        assert again.replayed
        assert again.receipt.leaf_hash == first.receipt.leaf_hash
        assert again.receipt.receive_time == first.receipt.receive_time

        changed = ingest_pb2.Event()
        changed.CopyFrom(event)
        changed.summary = "a different summary"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.AppendEvent(ingest_pb2.AppendEventRequest(event=changed))
        assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
        status = rpc_status.from_call(caught.value)
        assert status is not None
        info = error_info(status)
        assert info is not None and info.reason == "EVENT_ID_CONFLICT"

        # In a batch each event gets its own answer; once integrated, a replay carries the leaf index.
        async def integrated() -> bool:
            receipt: Receipt = await client.GetReceipt(
                ingest_pb2.GetReceiptRequest(name=f"events/{event.event_id}")
            )
            return receipt.HasField("leaf_index")

        await eventually(integrated, what="integration")
        batch = await client.AppendEvents(
            ingest_pb2.AppendEventsRequest(events=[event, changed, make_event()])
        )
        replay, conflict, fresh = batch.results
        assert replay.replayed and replay.receipt.leaf_index == 0
        assert conflict.WhichOneof("result") == "error"
        assert conflict.error.code == grpc.StatusCode.ALREADY_EXISTS.value[0]
        assert fresh.WhichOneof("result") == "receipt" and not fresh.replayed
        assert len(stored_ids(running)) == 2


async def test_validation_reports_every_violation_at_once(tmp_path: Path) -> None:
    async with suite(tmp_path) as running:
        client = running.client()
        bad = make_event(
            event_type="phishing.teleported",
            subject="  ",
            occurred_at=datetime.now(UTC) + timedelta(hours=2),
            summary="x" * (4 * 1024 + 1),
            details={f"k{i}": "v" for i in range(65)},
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.AppendEvent(ingest_pb2.AppendEventRequest(event=bad))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        status = rpc_status.from_call(caught.value)
        assert status is not None
        fields = {violation.field for violation in field_violations(status)}
        assert fields == {
            "event.type",
            "event.subject",
            "event.occurred_at",
            "event.summary",
            "event.details",
        }

        old = make_event(occurred_at=datetime(1999, 12, 31, tzinfo=UTC), details={"url": "y" * (16 * 1024)})
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.AppendEvent(ingest_pb2.AppendEventRequest(event=old))
        status = rpc_status.from_call(caught.value)
        assert status is not None
        assert {v.field for v in field_violations(status)} == {"event.occurred_at", "event.details"}

        no_time = make_event(event_id="not-a-uuid")
        no_time.ClearField("occurred_at")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.AppendEvent(ingest_pb2.AppendEventRequest(event=no_time))
        status = rpc_status.from_call(caught.value)
        assert status is not None
        assert {v.field for v in field_violations(status)} == {"event.event_id", "event.occurred_at"}
        assert stored_ids(running) == set()


async def test_one_bad_event_does_not_sink_the_others_in_a_batch(tmp_path: Path) -> None:
    async with suite(tmp_path) as running:
        client = running.client()
        good_a, bad, good_b = make_event(), make_event(event_type="nope", subject=""), make_event()
        response = await client.AppendEvents(ingest_pb2.AppendEventsRequest(events=[good_a, bad, good_b]))
        assert [r.index for r in response.results] == [0, 1, 2]
        assert response.results[0].receipt.event_id == good_a.event_id
        assert response.results[2].receipt.event_id == good_b.event_id
        error = response.results[1].error
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert {v.field for v in field_violations(error)} == {"events[1].type", "events[1].subject"}
        assert stored_ids(running) == {good_a.event_id, good_b.event_id}


async def test_duplicate_ids_inside_one_batch_are_stored_once(tmp_path: Path) -> None:
    async with suite(tmp_path) as running:
        event = make_event()
        changed = ingest_pb2.Event()
        changed.CopyFrom(event)
        changed.source = "okta"
        response = await running.client().AppendEvents(
            ingest_pb2.AppendEventsRequest(events=[event, event, changed])
        )
        first, second, third = response.results
        assert not first.replayed and second.replayed
        assert second.receipt.leaf_hash == first.receipt.leaf_hash
        assert third.error.code == grpc.StatusCode.ALREADY_EXISTS.value[0]
        assert stored_ids(running) == {event.event_id}


async def test_missing_event_id_gets_a_uuid7(tmp_path: Path) -> None:
    async with suite(tmp_path) as running:
        response = await running.client().AppendEvent(
            ingest_pb2.AppendEventRequest(event=make_event(event_id=""))
        )
        assert uuid.UUID(response.receipt.event_id).version == 7


async def test_stream_answers_each_batch_in_order(tmp_path: Path) -> None:
    async with suite(tmp_path) as running:
        batches = [[make_event(subject=f"user{b}-{i}@example.org") for i in range(50)] for b in range(3)]

        answers = await running.stream(batches)
        assert len(answers) == 3
        for batch, answer in zip(batches, answers, strict=True):
            assert [r.receipt.event_id for r in answer.results] == [e.event_id for e in batch]
        assert len(stored_ids(running)) == 150


async def test_gdpr_down_refuses_appends_and_reads_return_non_personal_fields(tmp_path: Path) -> None:
    async with suite(tmp_path, ingest_env={"AWARENESS_INGEST_KEY_CACHE_SECONDS": "0"}) as running:
        client = running.client()
        kept = make_event()
        await client.AppendEvent(ingest_pb2.AppendEventRequest(event=kept))
        await running.stop("gdpr")
        refused = make_event()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.AppendEvent(ingest_pb2.AppendEventRequest(event=refused))
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert refused.event_id not in stored_ids(running)

        read = await client.GetEvent(ingest_pb2.GetEventRequest(name=f"events/{kept.event_id}"))
        assert read.personal_data_state == ingest_pb2.Event.PERSONAL_DATA_STATE_UNAVAILABLE
        assert (read.type, read.source, read.subject, read.summary) == (kept.type, kept.source, "", "")
        # The dimensions are stored in clear: only the personal details (the URL) are missing.
        assert dict(read.details) == {"campaign_id": kept.details["campaign_id"]}


async def test_system_events_are_for_services_only_and_never_reach_gdpr(tmp_path: Path) -> None:
    async with suite(tmp_path) as running:
        erasure = make_event(
            event_type="gdpr.erasure",
            subject="",
            summary="subject erased",
            details={"erasure": "erasures/e1"},
        )
        erasure.subject_pseudonym = "psn_erased0000000000000000000"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await running.client(roles=("integration",)).AppendEvent(
                ingest_pb2.AppendEventRequest(event=erasure)
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        await running.stop("gdpr")  # a system event needs no key: gdpr being down does not matter
        response = await running.internal().AppendEvent(ingest_pb2.AppendEventRequest(event=erasure))
        assert response.receipt.event_id == erasure.event_id
        read = await running.client().GetEvent(ingest_pb2.GetEventRequest(name=f"events/{erasure.event_id}"))
        assert read.subject_pseudonym == erasure.subject_pseudonym
        assert read.subject == "" and dict(read.details) == {"erasure": "erasures/e1"}
        assert read.metadata.evaluation_state == ingest_pb2.EventMetadata.EVALUATION_STATE_SKIPPED
        with running.ingest.writer._sessions() as session:
            record = session.scalars(
                select(EventRecord).where(EventRecord.event_id == erasure.event_id)
            ).one()
        assert record.ciphertext == b"" and record.key_id == ""

        with_subject = make_event(event_type="gdpr.erasure")
        with_subject.subject_pseudonym = "psn_x"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await running.internal().AppendEvent(ingest_pb2.AppendEventRequest(event=with_subject))
        status = rpc_status.from_call(caught.value)
        assert status is not None
        assert {v.field for v in field_violations(status)} == {"event.subject"}


async def test_an_erased_subject_reads_as_erased_and_still_verifies(tmp_path: Path) -> None:
    from awareness.gdpr.v1 import gdpr_pb2, gdpr_pb2_grpc

    async with suite(tmp_path) as running:
        client = running.client()
        event = make_event(subject="bob@example.org")
        await client.AppendEvent(ingest_pb2.AppendEventRequest(event=event))
        gdpr = gdpr_pb2_grpc.GdprServiceStub(running.channel("gdpr", roles=("dpo",)))
        erasure = await gdpr.EraseSubject(
            gdpr_pb2.EraseSubjectRequest(
                subject="bob@example.org", reason="Art. 17 request", request_id=str(uuid.uuid4())
            )
        )
        assert erasure.events_affected == 1
        read = await client.GetEvent(ingest_pb2.GetEventRequest(name=f"events/{event.event_id}"))
        assert read.personal_data_state == ingest_pb2.Event.PERSONAL_DATA_STATE_ERASED
        assert read.subject == "" and read.summary == ""

        async def integrated() -> Any:
            try:
                return await client.GetInclusionProof(
                    ingest_pb2.GetInclusionProofRequest(event_id=event.event_id, tree_size=1)
                )
            except grpc.aio.AioRpcError:
                return None

        proof = await eventually(integrated, what="integration")
        from services.ingest.domain.merkle import leaf_hash

        assert leaf_hash(proof.leaf_data) == proof.leaf_hash
        assert b"bob@example.org" not in proof.leaf_data


async def test_occurred_at_keeps_microseconds(tmp_path: Path) -> None:
    async with suite(tmp_path) as running:
        moment = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
        event = make_event(occurred_at=moment)
        event.occurred_at.CopyFrom(timestamp(moment))
        await running.client().AppendEvent(ingest_pb2.AppendEventRequest(event=event))
        read = await running.client().GetEvent(ingest_pb2.GetEventRequest(name=f"events/{event.event_id}"))
        assert read.occurred_at.ToDatetime(tzinfo=UTC) == moment
