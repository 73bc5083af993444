"""Values PostgreSQL would refuse are refused per event at validation, never in a group commit
that merged other callers' events (the REAL ingest, gdpr and signing services on PostgreSQL)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from awareness.gdpr.v1 import gdpr_pb2, gdpr_pb2_grpc
from awareness.ingest.v1 import ingest_pb2
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_status import rpc_status
from sqlalchemy import String, select

from services.ingest.domain.events import MAX_PSEUDONYM_CHARS, MAX_SOURCE_CHARS
from services.ingest.models import EventRecord
from services.runtime.errors import field_violations
from tests.ingest.harness import Suite, make_event, suite

ROUNDS = 12
GOOD_PER_BATCH = 8


def _nul_source(event: ingest_pb2.Event) -> str:
    event.source = "mail\x00gw"
    return "source"


def _nul_summary(event: ingest_pb2.Event) -> str:
    event.summary = "clicked\x00"
    return "summary"


def _nul_subject(event: ingest_pb2.Event) -> str:
    event.subject = "bob\x00@example.org"
    return "subject"


def _nul_detail_key(event: ingest_pb2.Event) -> str:
    event.details["ur\x00l"] = "x"
    return "details"


def _nul_detail_value(event: ingest_pb2.Event) -> str:
    event.details["url"] = "https://x\x00"
    return "details"


def _long_source(event: ingest_pb2.Event) -> str:
    event.source = "s" * 257  # the column is VARCHAR(256)
    return "source"


def _huge_severity(event: ingest_pb2.Event) -> str:
    event.severity = 70_000  # type: ignore[assignment]  # the column is SMALLINT
    return "severity"


def _far_time(event: ingest_pb2.Event) -> str:
    event.occurred_at.CopyFrom(Timestamp(seconds=2**62))  # no datetime holds it
    return "occurred_at"


POISONS: list[Callable[[ingest_pb2.Event], str]] = [
    _nul_source,
    _nul_summary,
    _nul_subject,
    _nul_detail_key,
    _nul_detail_value,
    _long_source,
    _huge_severity,
    _far_time,
]


def stored_ids(running: Suite) -> set[str]:
    with running.ingest.writer._sessions() as session:
        return set(session.scalars(select(EventRecord.event_id)))


def poisoned(round_: int) -> tuple[ingest_pb2.Event, str]:
    event = make_event(subject=f"mallory{round_}@example.org")
    field = POISONS[round_ % len(POISONS)](event)
    return event, field


async def test_poisoned_events_are_refused_alone_while_another_caller_commits(
    tmp_path: Path, fresh_postgres_db: str
) -> None:
    async with suite(tmp_path, database_url=fresh_postgres_db) as running:
        honest = running.client(roles=("integration",))
        attacker = running.client(roles=("integration",))
        honest_ids: list[str] = []
        attacker_good_ids: list[str] = []

        async def honest_caller() -> None:
            for round_ in range(ROUNDS):
                batch = [make_event(subject=f"alice{round_}-{i}@example.org") for i in range(GOOD_PER_BATCH)]
                response = await honest.AppendEvents(ingest_pb2.AppendEventsRequest(events=batch))
                outcomes = [r.WhichOneof("result") for r in response.results]
                assert outcomes == ["receipt"] * GOOD_PER_BATCH, [r.error for r in response.results]
                honest_ids.extend(e.event_id for e in batch)

        async def attacking_caller() -> None:
            for round_ in range(ROUNDS):
                bad, field = poisoned(round_)
                before, after = make_event(), make_event()
                response = await attacker.AppendEvents(
                    ingest_pb2.AppendEventsRequest(events=[before, bad, after])
                )
                first, refused, last = response.results
                assert first.WhichOneof("result") == "receipt" and last.WhichOneof("result") == "receipt"
                assert refused.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0], refused.error
                assert f"events[1].{field}" in {v.field for v in field_violations(refused.error)}
                attacker_good_ids.extend([before.event_id, after.event_id])

        async def attacking_stream() -> None:
            batches = []
            for round_ in range(len(POISONS)):
                bad, _ = poisoned(round_)
                batches.append([make_event(), bad])
            answers = await running.stream(batches)
            for batch, answer in zip(batches, answers, strict=True):
                good, refused = answer.results
                assert good.receipt.event_id == batch[0].event_id
                assert refused.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
                attacker_good_ids.append(batch[0].event_id)

        await asyncio.gather(honest_caller(), attacking_caller(), attacking_stream())
        stored = stored_ids(running)
        assert set(honest_ids) <= stored
        assert set(attacker_good_ids) <= stored
        assert len(stored) == len(honest_ids) + len(attacker_good_ids)


async def test_a_single_poisoned_append_is_invalid_argument_naming_the_field(
    tmp_path: Path, fresh_postgres_db: str
) -> None:
    async with suite(tmp_path, database_url=fresh_postgres_db) as running:
        client = running.client()
        for poison in POISONS:
            event = make_event()
            field = poison(event)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await client.AppendEvent(ingest_pb2.AppendEventRequest(event=event))
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, poison.__name__
            status = rpc_status.from_call(caught.value)
            assert status is not None
            assert f"event.{field}" in {v.field for v in field_violations(status)}, poison.__name__
        assert stored_ids(running) == set()


async def test_other_requests_with_unstorable_values_are_invalid_argument_not_internal(
    tmp_path: Path, fresh_postgres_db: str
) -> None:
    async with suite(tmp_path, database_url=fresh_postgres_db) as running:
        ingest = running.client()
        stored = make_event()
        await ingest.AppendEvent(ingest_pb2.AppendEventRequest(event=stored))
        gdpr = gdpr_pb2_grpc.GdprServiceStub(running.channel("gdpr", roles=("dpo",)))
        calls = {
            "label": ingest.LabelEvent(
                ingest_pb2.LabelEventRequest(name=f"events/{stored.event_id}", label=70_000)  # type: ignore[arg-type]
            ),
            "start_time": ingest.ListEvents(
                ingest_pb2.ListEventsRequest(start_time=Timestamp(seconds=2**62))
            ),
            "source": ingest.ListEvents(ingest_pb2.ListEventsRequest(source="gw\x00")),
            "request_id": gdpr.GrantConsent(
                gdpr_pb2.GrantConsentRequest(
                    subject="bob@example.org", purpose="profiling", request_id="r" * 129
                )
            ),
            "reason": gdpr.EraseSubject(
                gdpr_pb2.EraseSubjectRequest(subject="bob@example.org", reason="Art. 17\x00", request_id="e1")
            ),
        }
        for field, call in calls.items():
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, field
            status = rpc_status.from_call(caught.value)
            assert status is not None
            assert field in {v.field for v in field_violations(status)}, field


async def test_a_system_event_with_an_over_long_pseudonym_is_refused_alone(
    tmp_path: Path, fresh_postgres_db: str
) -> None:
    async with suite(tmp_path, database_url=fresh_postgres_db) as running:
        erasure = make_event(event_type="gdpr.erasure", subject="", details={"erasure": "erasures/e1"})
        erasure.subject_pseudonym = "p" * (MAX_PSEUDONYM_CHARS + 1)
        kept = make_event(event_type="gdpr.erasure", subject="", details={"erasure": "erasures/e2"})
        kept.subject_pseudonym = "p" * MAX_PSEUDONYM_CHARS
        response = await running.internal().AppendEvents(
            ingest_pb2.AppendEventsRequest(events=[erasure, kept])
        )
        refused, stored = response.results
        assert {v.field for v in field_violations(refused.error)} == {"events[0].subject_pseudonym"}
        assert stored.receipt.event_id == kept.event_id
        assert stored_ids(running) == {kept.event_id}


def test_the_append_limits_are_the_widths_of_their_columns() -> None:
    columns = EventRecord.__table__.columns
    for column, limit in (("source", MAX_SOURCE_CHARS), ("subject_pseudonym", MAX_PSEUDONYM_CHARS)):
        kind = columns[column].type
        assert isinstance(kind, String) and kind.length == limit, column
