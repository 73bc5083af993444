"""Erasure is unlinkable at ingest: after EraseSubject nothing answers differently for a right
guess of the erased person than for a wrong one (REAL gdpr, signing and ingest services)."""

from __future__ import annotations

import uuid
from pathlib import Path

import grpc
import pytest
from awareness.gdpr.v1 import gdpr_pb2, gdpr_pb2_grpc
from awareness.ingest.v1 import ingest_pb2
from grpc_status import rpc_status
from sqlalchemy import select

from services.ingest.domain.events import EventInput
from services.ingest.domain.records import content_fingerprint
from services.ingest.models import EventRecord
from services.runtime.errors import error_info
from tests.ingest.harness import Suite, make_event, suite


async def _erase(running: Suite, subject: str) -> None:
    gdpr = gdpr_pb2_grpc.GdprServiceStub(running.channel("gdpr", roles=("dpo",)))
    await gdpr.EraseSubject(
        gdpr_pb2.EraseSubjectRequest(subject=subject, reason="Art. 17 request", request_id=str(uuid.uuid4()))
    )


def _as(event: ingest_pb2.Event, subject: str) -> ingest_pb2.Event:
    guess = ingest_pb2.Event()
    guess.CopyFrom(event)
    guess.subject = subject
    return guess


async def _unary_answer(running: Suite, event: ingest_pb2.Event) -> tuple[str, str, str]:
    try:
        response = await running.client(roles=("integration",)).AppendEvent(
            ingest_pb2.AppendEventRequest(event=event)
        )
    except grpc.aio.AioRpcError as error:
        status = rpc_status.from_call(error)
        info = error_info(status) if status is not None else None
        return error.code().name, info.reason if info else "", error.details() or ""
    return "OK", "replayed" if response.replayed else "accepted", response.receipt.event_id


async def test_reappending_an_erased_event_answers_alike_for_right_and_wrong_guesses(
    tmp_path: Path, database_url: str | None
) -> None:
    async with suite(tmp_path, database_url=database_url) as running:
        client = running.client()
        erased = make_event(subject="carol@example.org")
        living = make_event(subject="dave@example.org")
        await client.AppendEvents(ingest_pb2.AppendEventsRequest(events=[erased, living]))
        await _erase(running, "carol@example.org")

        right = await _unary_answer(running, _as(erased, "carol@example.org"))
        wrong = await _unary_answer(running, _as(erased, "mallory@example.org"))
        assert right == wrong
        assert right[:2] == ("ALREADY_EXISTS", "EVENT_ID_CONFLICT")
        # Batches (the fast path with cached keys included) answer alike too.
        for _ in range(2):
            batch = await client.AppendEvents(
                ingest_pb2.AppendEventsRequest(
                    events=[_as(erased, "carol@example.org"), _as(erased, "erin@example.org")]
                )
            )
            first, second = (result.error for result in batch.results)
            assert (first.code, first.message) == (second.code, second.message)

        # A living subject's retry still replays, on the slow path and on the cached one.
        assert (await _unary_answer(running, living))[:2] == ("OK", "replayed")
        assert (await _unary_answer(running, living))[:2] == ("OK", "replayed")


async def test_stored_fingerprints_are_keyed_with_the_subject_data_key(tmp_path: Path) -> None:
    """The database and the server secret together cannot confirm a guess: the stored fingerprint
    is not the HMAC of the content under the server secret alone."""
    async with suite(tmp_path) as running:
        event = make_event(subject="frank@example.org")
        await running.client().AppendEvent(ingest_pb2.AppendEventRequest(event=event))
        writer = running.ingest.writer
        with writer._sessions() as session:
            stored = session.scalars(
                select(EventRecord.content_fingerprint).where(EventRecord.event_id == event.event_id)
            ).one()
        guess = EventInput(
            type=event.type,
            source=event.source,
            subject=event.subject,
            occurred_at=event.occurred_at.ToDatetime().replace(tzinfo=__import__("datetime").UTC),
            severity=int(event.severity),
            summary=event.summary,
            details=dict(event.details),
        )
        assert stored != content_fingerprint(guess, secret=writer._secret)


@pytest.mark.parametrize("copies", [2, 3])
async def test_copies_in_one_call_with_other_subjects_conflict(tmp_path: Path, copies: int) -> None:
    async with suite(tmp_path) as running:
        event = make_event(subject="gina@example.org")
        batch = [event] + [_as(event, f"other{n}@example.org") for n in range(copies - 1)] + [event]
        answer = await running.client().AppendEvents(ingest_pb2.AppendEventsRequest(events=batch))
        kinds = [result.WhichOneof("result") for result in answer.results]
        assert kinds == ["receipt"] + ["error"] * (copies - 1) + ["receipt"]
        assert answer.results[-1].replayed
