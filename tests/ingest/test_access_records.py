"""Access records in ingest (REAL services, SQLite and PostgreSQL): the ``access_records`` index
written with each ``audit.action`` event, ListAccessRecords' filters and pages, the records of
ingest's own reads and labels, and that they stay out of people's data."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from awareness.gdpr.v1 import gdpr_pb2, gdpr_pb2_grpc
from awareness.ingest.v1 import ingest_pb2
from awareness.signing.v1 import signing_pb2, signing_pb2_grpc
from sqlalchemy import Engine, select, text
from sqlalchemy.exc import IntegrityError

from services.evidence.checkpoint import NoteVerifier, verify_checkpoint
from services.ingest import aggregates, repository
from services.ingest.domain import access
from services.ingest.domain.history import PriorEvent, subject_history
from services.ingest.domain.merkle import leaf_hash
from services.ingest.domain.records import decode_canonical_record, decode_system_payload
from services.ingest.models import EventRecord
from services.runtime import audit
from services.runtime.db import session_factory, transaction
from tests.grpc_errors import reason_of, violated_fields
from tests.ingest import rfc6962_reference as reference
from tests.ingest.harness import Suite, eventually, make_event, suite, timestamp

GET_EVENT = "/awareness.ingest.v1.IngestService/GetEvent"
LIST_EVENTS = "/awareness.ingest.v1.IngestService/ListEvents"
LABEL_EVENT = "/awareness.ingest.v1.IngestService/LabelEvent"
NOTE = "Dave says his daughter used the laptop"
PSNS = ["psn_a", "psn_b", "psn_c"]


def test_the_type_is_the_recorders() -> None:
    assert access.AUDIT_EVENT_TYPE == audit.AUDIT_EVENT_TYPE
    assert audit.RESERVED_DETAILS - {"part"} == access.RECORD_DETAILS


def recorded(
    *,
    principal: str,
    action: str,
    resource: str = "",
    pseudonyms: Sequence[str] = (),
    at: datetime,
    outcome: str = "OK",
    details: dict[str, str] | None = None,
) -> list[ingest_pb2.Event]:
    """The events another service's recorder would append for one record (services/runtime/audit.py)."""
    return audit.audit_events(
        audit.AccessRecord(
            principal=principal,
            action=action,
            method=f"/awareness.test.v1.Test/{action}",
            resource=resource,
            outcome=outcome,
            time=at,
            pseudonyms=tuple(pseudonyms),
            details=details or {},
        ),
        source="gdpr",
    )


def index_rows(running: Suite, event_id: str | None = None) -> list[tuple[Any, ...]]:
    with running.ingest.writer._sessions() as session:
        statement = select(*(repository.ACCESS.c[name] for name in repository.ACCESS_COLUMNS))
        if event_id is not None:
            statement = statement.where(repository.ACCESS.c.event_id == event_id)
        return [tuple(row) for row in session.execute(statement.order_by(repository.ACCESS.c.ordinal))]


async def listed(running: Suite, **filters: Any) -> ingest_pb2.ListAccessRecordsResponse:
    response: ingest_pb2.ListAccessRecordsResponse = await running.client(
        roles=("auditor",)
    ).ListAccessRecords(ingest_pb2.ListAccessRecordsRequest(**filters))
    return response


def ids(response: ingest_pb2.ListAccessRecordsResponse) -> list[str]:
    return [record.name.removeprefix("events/") for record in response.access_records]


# --- the index -------------------------------------------------------------------------------------


def _record_row(event_id: str) -> tuple[object, ...]:
    values: dict[str, object] = {
        "event_id": event_id,
        "type": access.AUDIT_EVENT_TYPE,
        "source": "gdpr",
        "occurred_at_us": 1_800_000_000_000_000,
        "severity": 1,
        "subject_pseudonym": "",
        "key_period": "",
        "key_id": "",
        "nonce": b"",
        "ciphertext": b"",
        "receive_time_us": 1_800_000_001_000_000,
        "content_fingerprint": "f" * 64,
        "leaf_hash": b"\x01" * 32,
        "record_version": 1,
        "system_payload": "{}",
        "dimensions": None,
    }
    return tuple(values[name] for name in repository.RECORD_COLUMNS)


def test_index_rows_commit_and_roll_back_with_their_event(engine: Engine) -> None:
    sessions = session_factory(engine)
    event_id = str(uuid.uuid4())
    row = (event_id, "psn_a", 0, "key:a", "event.read", "events", "OK", "gdpr", 1_800_000_000_000_000)
    # The same (event, pseudonym) twice: the index refuses, and the event is not stored either.
    with pytest.raises(IntegrityError), transaction(sessions) as session:
        repository.insert_events(session, records=[_record_row(event_id)], metadata=[], access=[row, row])
    with sessions() as session:
        assert repository.record_by_event(session, event_id=event_id) is None
        assert session.execute(select(repository.ACCESS.c.event_id)).all() == []
    with transaction(sessions) as session:
        repository.insert_events(session, records=[_record_row(event_id)], metadata=[], access=[row])
    with sessions() as session:
        stored = session.execute(
            select(*(repository.ACCESS.c[name] for name in repository.ACCESS_COLUMNS))
        ).all()
    assert [tuple(r) for r in stored] == [row]


async def test_each_record_is_indexed_once_per_pseudonym_in_the_events_transaction(
    tmp_path: Path, database_url: str | None
) -> None:
    async with suite(tmp_path, database_url=database_url) as running:
        internal = running.internal()
        at = datetime.now(UTC) - timedelta(minutes=5)
        [one] = recorded(
            principal="key:a", action="subject.erase", resource="erasures/1", pseudonyms=["psn_a"], at=at
        )
        [three] = recorded(
            principal="key:a", action="event.read", pseudonyms=["psn_a", "psn_b", "psn_c"], at=at
        )
        [none] = recorded(principal="key:b", action="policy.approve", resource="policies/p", at=at)
        answer = await internal.AppendEvents(ingest_pb2.AppendEventsRequest(events=[one, three, none]))
        assert [r.WhichOneof("result") for r in answer.results] == ["receipt"] * 3
        at_us = repository.to_us(at)
        assert index_rows(running, one.event_id) == [
            (one.event_id, "psn_a", 0, "key:a", "subject.erase", "erasures/1", "OK", "gdpr", at_us)
        ]
        assert [(r[1], r[2]) for r in index_rows(running, three.event_id)] == [
            ("psn_a", 0),
            ("psn_b", 1),
            ("psn_c", 2),
        ]
        assert [(r[1], r[2], r[4]) for r in index_rows(running, none.event_id)] == [("", 0, "policy.approve")]

        # A replay beside a new record (the committer's optimistic insert fails, and is retried with
        # a lookup): the new one is indexed, the replayed one not twice.
        [fresh] = recorded(principal="key:b", action="event.read", pseudonyms=["psn_d"], at=at)
        answer = await internal.AppendEvents(ingest_pb2.AppendEventsRequest(events=[fresh, three]))
        assert [r.replayed for r in answer.results] == [False, True]
        assert len(index_rows(running)) == 6

        # A client event adds no row; a record the index cannot hold is refused alone.
        await running.client().AppendEvent(ingest_pb2.AppendEventRequest(event=make_event()))
        [nameless] = recorded(principal="key:b", action="x", at=at)
        del nameless.details["action"]
        [wide] = recorded(principal="k" * 257, action="event.read", at=at)
        [fine] = recorded(principal="key:c", action="event.read", at=at)
        answer = await internal.AppendEvents(ingest_pb2.AppendEventsRequest(events=[nameless, wide, fine]))
        refused = [r for r in answer.results if r.HasField("error")]
        assert [r.index for r in refused] == [0, 1]
        assert all(r.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] for r in refused)
        assert len(index_rows(running)) == 7

        # Clients cannot write access records.
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await running.client(roles=("integration",)).AppendEvent(
                ingest_pb2.AppendEventRequest(event=fine)
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# --- ListAccessRecords -----------------------------------------------------------------------------


async def test_filters_combine_and_pages_run_newest_first(tmp_path: Path, database_url: str | None) -> None:
    async with suite(tmp_path, database_url=database_url) as running:
        base = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
        minute = timedelta(minutes=1)
        alpha, beta = "key:alpha", "key:beta"
        specs: list[dict[str, Any]] = [
            {"principal": alpha, "action": "subject.erase", "resource": "erasures/1", "pseudonyms": PSNS[:1]},
            {"principal": alpha, "action": "event.read", "resource": "events", "pseudonyms": PSNS},
            {"principal": beta, "action": "event.read", "resource": "events/x", "pseudonyms": ["psn_b"]},
            {"principal": beta, "action": "policy.approve", "resource": "policies/p1"},
            {"principal": alpha, "action": "event.label", "resource": "events/y", "pseudonyms": ["psn_c"],
             "details": {"label": "LABEL_TRUE_POSITIVE"}},
        ]  # fmt: skip
        events = [recorded(**spec, at=base + i * minute)[0] for i, spec in enumerate(specs)]
        # Two more at one and the same time: the event id orders them.
        events += [
            recorded(principal="key:gamma", action="consent.read", at=base + 5 * minute)[0] for _ in range(3)
        ]
        await running.internal().AppendEvents(ingest_pb2.AppendEventsRequest(events=events))
        r = [event.event_id for event in events]
        same_time = sorted(r[5:], reverse=True)
        window = {"start_time": timestamp(base), "end_time": timestamp(base + 10 * minute)}

        everything = await listed(running, **window)
        assert ids(everything) == [*same_time, r[4], r[3], r[2], r[1], r[0]]
        assert not everything.next_page_token
        by_id = {record.name: record for record in everything.access_records}
        wide = by_id[f"events/{r[1]}"]
        assert (wide.principal, wide.action, wide.resource, wide.outcome, wide.service) == (
            "key:alpha",
            "event.read",
            "events",
            "OK",
            "gdpr",
        )
        assert wide.method == "/awareness.test.v1.Test/event.read"
        assert list(wide.subject_pseudonyms) == ["psn_a", "psn_b", "psn_c"]
        assert wide.time.ToDatetime(tzinfo=UTC) == base + minute
        assert dict(wide.details) == {}
        assert dict(by_id[f"events/{r[4]}"].details) == {"label": "LABEL_TRUE_POSITIVE"}
        assert list(by_id[f"events/{r[3]}"].subject_pseudonyms) == []

        cases: list[tuple[dict[str, Any], list[str]]] = [
            ({"principal": "key:alpha"}, [r[4], r[1], r[0]]),
            ({"action": "event.read"}, [r[2], r[1]]),
            ({"resource": "events"}, [r[1]]),
            ({"subject_pseudonym": "psn_b"}, [r[2], r[1]]),
            ({"subject_pseudonym": "psn_c"}, [r[4], r[1]]),
            ({"principal": "key:alpha", "subject_pseudonym": "psn_b"}, [r[1]]),
            ({"principal": "key:beta", "action": "event.read"}, [r[2]]),
            ({"action": "event.read", "resource": "events/x", "subject_pseudonym": "psn_a"}, []),
            (
                {"start_time": timestamp(base + minute), "end_time": timestamp(base + 3 * minute)},
                [r[2], r[1]],
            ),
            ({"principal": "key:alpha", "start_time": timestamp(base + minute)}, [r[4], r[1]]),
            ({"subject_pseudonym": "psn_a", "end_time": timestamp(base + minute)}, [r[0]]),
        ]
        for filters, expected in cases:
            assert ids(await listed(running, **filters)) == expected, filters

        # Pages of two: every record once, in order, also across equal times; tokens bound to filters.
        seen: list[str] = []
        token = ""
        for _ in range(10):
            page = await listed(running, page_size=2, page_token=token, **window)
            assert len(page.access_records) <= 2
            seen += ids(page)
            token = page.next_page_token
            if not token:
                break
        assert seen == ids(everything)
        first = await listed(running, page_size=1, principal="key:gamma")
        assert ids(first) == same_time[:1] and first.next_page_token
        second = await listed(running, page_size=1, principal="key:gamma", page_token=first.next_page_token)
        assert ids(second) == same_time[1:2]
        for changed in ({"principal": "key:beta"}, {"principal": "key:gamma", "action": "consent.read"}):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await listed(running, page_size=1, page_token=first.next_page_token, **changed)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert reason_of(caught.value) == "INVALID_PAGE_TOKEN"


async def test_a_record_of_many_subjects_is_found_by_each_of_them(tmp_path: Path) -> None:
    async with suite(tmp_path) as running:
        pseudonyms = [f"psn_{i:04d}" for i in range(300)]
        parts = recorded(
            principal="key:bulk", action="event.read", pseudonyms=pseudonyms, at=datetime.now(UTC)
        )
        assert len(parts) == 2
        await running.internal().AppendEvents(ingest_pb2.AppendEventsRequest(events=parts))
        both = (await listed(running, principal="key:bulk")).access_records
        assert sorted(len(record.subject_pseudonyms) for record in both) == [44, 256]
        assert sorted(record.details["part"] for record in both) == ["1/2", "2/2"]
        assert sorted(p for record in both for p in record.subject_pseudonyms) == pseudonyms
        for pseudonym, part in (("psn_0000", "1/2"), ("psn_0299", "2/2")):
            [found] = (await listed(running, subject_pseudonym=pseudonym)).access_records
            assert found.details["part"] == part and pseudonym in found.subject_pseudonyms


async def test_invalid_requests_and_callers_are_refused(tmp_path: Path) -> None:
    async with suite(tmp_path) as running:
        now = datetime.now(UTC)
        invalid: list[tuple[dict[str, Any], str]] = [
            ({"page_size": -1}, "page_size"),
            ({"start_time": timestamp(now), "end_time": timestamp(now)}, "end_time"),
            ({"start_time": timestamp(now), "end_time": timestamp(now - timedelta(seconds=1))}, "end_time"),
            ({"principal": "p" * 257}, "principal"),
            ({"action": "a" * 65}, "action"),
            ({"subject_pseudonym": "s" * 129}, "subject_pseudonym"),
            ({"page_token": "not a token"}, "page_token"),
        ]
        for request, field in invalid:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await listed(running, **request)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, request
            assert field in violated_fields(caught.value), request
        for role in ("analyst", "integration", "ml_engineer"):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await running.client(roles=(role,)).ListAccessRecords(ingest_pb2.ListAccessRecordsRequest())
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED, role
        for role in ("auditor", "dpo", "admin"):
            await running.client(roles=(role,)).ListAccessRecords(ingest_pb2.ListAccessRecordsRequest())
        # Page sizes: 100 by default, at most 1000.
        events = [
            recorded(principal="key:many", action="event.read", at=now - timedelta(seconds=i))[0]
            for i in range(1001)
        ]
        for start in range(0, len(events), 500):
            await running.internal().AppendEvents(
                ingest_pb2.AppendEventsRequest(events=events[start : start + 500])
            )
        assert len((await listed(running, principal="key:many")).access_records) == 100
        assert len((await listed(running, principal="key:many", page_size=5000)).access_records) == 1000


# --- ingest's own records --------------------------------------------------------------------------


async def own_records(running: Suite, count: int, **filters: Any) -> list[ingest_pb2.AccessRecord]:
    """Ingest's records (principal "tester": every client of the harness), once there are `count`."""

    async def enough() -> list[ingest_pb2.AccessRecord] | None:
        found = list((await listed(running, principal="tester", page_size=1000, **filters)).access_records)
        return found if len(found) >= count else None

    found: list[ingest_pb2.AccessRecord] = await eventually(enough, what=f"{count} access records")
    assert len(found) == count, [(r.action, r.method, list(r.subject_pseudonyms)) for r in found]
    return found


async def test_reads_of_personal_data_are_recorded_with_whose_and_others_are_not(
    tmp_path: Path, database_url: str | None
) -> None:
    async with suite(tmp_path, database_url=database_url) as running:
        alice = [make_event(subject="alice@example.org") for _ in range(2)]
        bob = make_event(subject="bob@example.org")
        await running.client().AppendEvents(ingest_pb2.AppendEventsRequest(events=[*alice, bob]))
        analyst, auditor = running.client(roles=("analyst",)), running.client(roles=("auditor",))
        name = f"events/{alice[0].event_id}"
        missing = f"events/{uuid.uuid4()}"

        # No events:read_personal: the pseudonymous view reads nobody's data, refused or not.
        viewed = await auditor.GetEvent(ingest_pb2.GetEventRequest(name=name))
        await auditor.ListEvents(ingest_pb2.ListEventsRequest())
        for request in (
            ingest_pb2.GetEventRequest(name=missing),
            ingest_pb2.GetEventRequest(name="events/x"),
        ):
            with pytest.raises(grpc.aio.AioRpcError):
                await auditor.GetEvent(request)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await auditor.ListEvents(ingest_pb2.ListEventsRequest(subject="alice@example.org"))
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED

        # The basic view (AIP-157), for counting: nothing decrypted, even for an analyst; no record.
        basic = await analyst.ListEvents(ingest_pb2.ListEventsRequest(view=ingest_pb2.EVENT_VIEW_BASIC))
        assert len(basic.events) == 3
        assert all(e.subject_pseudonym and not (e.subject or e.summary) for e in basic.events)
        assert all(set(e.details) <= {"campaign_id"} for e in basic.events)  # dimensions only, in clear

        read = await analyst.GetEvent(ingest_pb2.GetEventRequest(name=name))
        assert read.subject == "alice@example.org"
        listing = await analyst.ListEvents(ingest_pb2.ListEventsRequest(page_size=10))
        assert {e.event_id for e in listing.events} == {e.event_id for e in (*alice, bob)}
        with pytest.raises(grpc.aio.AioRpcError):
            await analyst.GetEvent(ingest_pb2.GetEventRequest(name=missing))

        psn_alice = viewed.subject_pseudonym
        psn_bob = next(e.subject_pseudonym for e in listing.events if e.event_id == bob.event_id)
        failed, listed_all, got = await own_records(running, 3, action="event.read")
        assert (got.method, got.resource, list(got.subject_pseudonyms), got.outcome) == (
            GET_EVENT,
            name,
            [psn_alice],
            "OK",
        )
        assert (got.service, got.principal, dict(got.details)) == ("ingest", "tester", {"events": "1"})
        assert (listed_all.method, listed_all.resource, dict(listed_all.details)) == (
            LIST_EVENTS,
            "events",
            {"events": "3"},
        )
        assert sorted(listed_all.subject_pseudonyms) == sorted([psn_alice, psn_bob])
        assert (failed.method, failed.resource, failed.outcome, list(failed.subject_pseudonyms)) == (
            GET_EVENT,
            missing,
            "NOT_FOUND",
            [],
        )

        # Reading the access records decrypts nothing: not recorded. People's listings leave them out.
        audits = await analyst.ListEvents(ingest_pb2.ListEventsRequest(type=access.AUDIT_EVENT_TYPE))
        assert {f"events/{e.event_id}" for e in audits.events} == {failed.name, listed_all.name, got.name}
        assert all(e.subject == "" and e.details["action"] == "event.read" for e in audits.events)
        plain = await analyst.ListEvents(ingest_pb2.ListEventsRequest())
        assert {e.type for e in plain.events} == {"phishing.clicked"} and len(plain.events) == 3
        hers = await analyst.ListEvents(ingest_pb2.ListEventsRequest(subject_pseudonym=psn_alice))
        assert {e.event_id for e in hers.events} == {e.event_id for e in alice}
        await own_records(running, 5, action="event.read")

        # An erased subject's event decrypts nothing: not recorded (the next read is, after it).
        gdpr = gdpr_pb2_grpc.GdprServiceStub(running.channel("gdpr", roles=("dpo",)))
        await gdpr.EraseSubject(
            gdpr_pb2.EraseSubjectRequest(
                subject="bob@example.org", reason="Art. 17", request_id=str(uuid.uuid4())
            )
        )
        gone = await analyst.GetEvent(ingest_pb2.GetEventRequest(name=f"events/{bob.event_id}"))
        assert gone.personal_data_state == ingest_pb2.Event.PERSONAL_DATA_STATE_ERASED
        await analyst.GetEvent(ingest_pb2.GetEventRequest(name=f"events/{alice[1].event_id}"))
        latest, *_ = await own_records(running, 6, action="event.read")
        assert latest.resource == f"events/{alice[1].event_id}"


async def test_a_label_is_recorded_with_label_and_triage_but_never_its_note(
    tmp_path: Path, database_url: str | None
) -> None:
    async with suite(tmp_path, database_url=database_url) as running:
        event = make_event(subject="dave@example.org")
        await running.client().AppendEvent(ingest_pb2.AppendEventRequest(event=event))
        labelled = await running.client(roles=("analyst",)).LabelEvent(
            ingest_pb2.LabelEventRequest(
                name=f"events/{event.event_id}",
                label=ingest_pb2.LABEL_TRUE_POSITIVE,
                triage_state=ingest_pb2.TRIAGE_STATE_IN_REVIEW,
                note=NOTE,
            )
        )
        assert labelled.metadata.label_note == NOTE
        triaged = await running.client(roles=("analyst",)).LabelEvent(
            ingest_pb2.LabelEventRequest(
                name=f"events/{event.event_id}", triage_state=ingest_pb2.TRIAGE_STATE_CLOSED
            )
        )
        second, first = await own_records(running, 2)  # and no event.read of the answers
        for record in (first, second):
            assert (record.action, record.method, record.resource, record.outcome) == (
                "event.label",
                LABEL_EVENT,
                f"events/{event.event_id}",
                "OK",
            )
            assert list(record.subject_pseudonyms) == [labelled.subject_pseudonym]
        assert dict(first.details) == {
            "label": "LABEL_TRUE_POSITIVE",
            "triage_state": "TRIAGE_STATE_IN_REVIEW",
        }
        assert dict(second.details) == {"triage_state": "TRIAGE_STATE_CLOSED"}
        assert triaged.metadata.triage_state == ingest_pb2.TRIAGE_STATE_CLOSED
        with running.ingest.writer._sessions() as session:
            payloads = session.scalars(
                select(EventRecord.system_payload).where(EventRecord.type == access.AUDIT_EVENT_TYPE)
            ).all()
        assert len(payloads) == 2
        assert all(NOTE not in (payload or "") and "Dave" not in (payload or "") for payload in payloads)


async def test_access_records_stay_out_of_the_subjects_data(tmp_path: Path, database_url: str | None) -> None:
    async with suite(tmp_path, database_url=database_url) as running:
        event = make_event(subject="erin@example.org")
        await running.client().AppendEvent(ingest_pb2.AppendEventRequest(event=event))
        analyst = running.client(roles=("analyst",))
        read = await analyst.GetEvent(ingest_pb2.GetEventRequest(name=f"events/{event.event_id}"))
        await analyst.LabelEvent(
            ingest_pb2.LabelEventRequest(
                name=f"events/{event.event_id}", label=ingest_pb2.LABEL_TRUE_POSITIVE
            )
        )
        records = await own_records(running, 2)
        # A record labelled by mistake is no training example either.
        await analyst.LabelEvent(
            ingest_pb2.LabelEventRequest(name=records[0].name, label=ingest_pb2.LABEL_FALSE_POSITIVE)
        )
        await own_records(running, 3)
        pseudonym = read.subject_pseudonym
        with running.ingest.writer._sessions() as session:
            about_her = session.scalars(
                select(EventRecord.event_id).where(
                    EventRecord.subject_pseudonym == pseudonym, EventRecord.type == access.AUDIT_EVENT_TYPE
                )
            ).all()
        # The read, the label, and the label of the label's record name her pseudonym.
        assert len(about_her) == 3

        exported = await running.internal().ListSubjectRecords(
            ingest_pb2.ListSubjectRecordsRequest(pseudonym=pseudonym)
        )
        assert [r.event_id for r in exported.records] == [event.event_id]
        examples = await running.internal("scoring").ListTrainingExamples(
            ingest_pb2.ListTrainingExamplesRequest()
        )
        assert [e.input.event_id for e in examples.examples] == [event.event_id]
        assert examples.examples[0].input.history.events_24h == 0
        listing = await running.client(roles=("auditor",)).ListEvents(
            ingest_pb2.ListEventsRequest(subject_pseudonym=pseudonym)
        )
        assert [e.event_id for e in listing.events] == [event.event_id]
        forgotten = await running.internal().ForgetSubject(
            ingest_pb2.ForgetSubjectRequest(pseudonym=pseudonym)
        )
        assert forgotten.event_count == 1


def _metadata_row(event_id: str, *, type: str, source: str, at_us: int) -> tuple[object, ...]:
    """Subject psn_f's event."""
    values: dict[str, object] = {name: 0 for name in repository.METADATA_COLUMNS}
    values.update(
        event_id=event_id,
        subject_pseudonym="psn_f",
        type=type,
        source=source,
        occurred_at_us=at_us,
        receive_time_us=at_us,
        risk_score=None,
        model_version="",
        scoring_note="",
        violations="[]",
        evaluation_note="",
        label_note="",
        labeled_by="",
        label_time_us=None,
        violation_count=1 if type == access.AUDIT_EVENT_TYPE else 0,
        department="",
        analytics_state=repository.ANALYTICS_SKIPPED,
    )
    return tuple(values[name] for name in repository.METADATA_COLUMNS)


def test_history_aggregates_leave_access_records_out(engine: Engine) -> None:
    sessions = session_factory(engine)
    now_us = 1_800_000_000_000_000
    hour = 3_600_000_000
    rows = [
        _metadata_row("login", type="login.failed", source="idp", at_us=now_us - 2 * hour),
        # Access records about the same subject, later and by another source: none of them counts.
        _metadata_row("read", type=access.AUDIT_EVENT_TYPE, source="ingest", at_us=now_us - hour),
        _metadata_row("erase", type=access.AUDIT_EVENT_TYPE, source="gdpr", at_us=now_us - hour),
    ]
    with transaction(sessions) as session:
        repository.insert_events(session, records=[], metadata=rows)
    query = aggregates.HistoryQuery(str(uuid.uuid4()), "psn_f", now_us, "ingest")
    with sessions() as session:
        [history] = aggregates.histories(session, queries=[query]).values()
    expected = subject_history(
        occurred_at_us=now_us,
        source="ingest",
        window=[PriorEvent(now_us - 2 * hour, "login.failed", "idp", False)],
        source_first_seen_us={"idp": now_us - 2 * hour},
        latest_before_window_us=None,
    )
    assert history == expected
    assert (history.events_24h, history.violations_30d, history.source_is_new) == (1, 0, True)
    assert history.seconds_since_previous_event == 7200.0


async def test_ingests_own_records_have_receipts_and_proofs(tmp_path: Path, database_url: str | None) -> None:
    async with suite(tmp_path, database_url=database_url) as running:
        event = make_event()
        client = running.client()
        await client.AppendEvent(ingest_pb2.AppendEventRequest(event=event))
        await client.GetEvent(ingest_pb2.GetEventRequest(name=f"events/{event.event_id}"))
        [record] = await own_records(running, 1)
        record_id = record.name.removeprefix("events/")

        async def checkpointed() -> ingest_pb2.Receipt | None:
            receipt = await client.GetReceipt(ingest_pb2.GetReceiptRequest(name=record.name))
            return receipt if receipt.HasField("checkpoint") else None

        receipt = await eventually(checkpointed, what="a checkpoint covering the access record")
        assert receipt.event_id == record_id and receipt.leaf_index == 1
        size = receipt.checkpoint.tree_size
        proof = await client.GetInclusionProof(
            ingest_pb2.GetInclusionProofRequest(event_id=record_id, tree_size=size)
        )
        keys = await signing_pb2_grpc.SigningServiceStub(running.channel("signing")).ListPublicKeys(
            signing_pb2.ListPublicKeysRequest()
        )
        verifiers = [
            NoteVerifier.from_vkey(k.note_verifier_key) for k in keys.public_keys if k.note_verifier_key
        ]
        body = verify_checkpoint(proof.checkpoint.note, verifier_keys=verifiers)
        assert body.tree_size == size
        assert leaf_hash(proof.leaf_data) == proof.leaf_hash == receipt.leaf_hash
        assert reference.verify_path(
            leaf_hash=proof.leaf_hash,
            m=proof.leaf_index,
            n=size,
            audit_path=list(proof.hashes),
            root=body.root_hash,
        )
        leaf = json.loads(proof.leaf_data)
        assert (leaf["event_id"], leaf["type"], leaf["source"]) == (record_id, "audit.action", "ingest")
        assert leaf["subject_pseudonym"] == record.subject_pseudonyms[0]
        # Version 2: the leaf covers who did what, on which resource, with which outcome.
        assert (leaf["format"], leaf["v"]) == ("awareness.ingest.record.v2", 2)
        covered = decode_system_payload(decode_canonical_record(proof.leaf_data).payload or "")
        assert (
            covered.details["principal"],
            covered.details["action"],
            covered.details["resource"],
            covered.details["outcome"],
        ) == (record.principal, record.action, record.resource, record.outcome)


async def test_records_queued_at_shutdown_are_appended_before_the_writer_stops(tmp_path: Path) -> None:
    async with suite(tmp_path) as running:
        event = make_event()
        await running.client().AppendEvent(ingest_pb2.AppendEventRequest(event=event))
        recorder = running.services["ingest"].context.audit
        assert recorder is not None
        recorder._flush_seconds = 3600.0  # only the drain appends from now on
        await asyncio.sleep(0.3)  # the recorder's current wait ends; the next one is long
        await running.client().GetEvent(ingest_pb2.GetEventRequest(name=f"events/{event.event_id}"))
        assert recorder.pending == 1
        await running.stop("ingest")
        assert recorder.pending == 0
        await running.start("ingest")
        [record] = await own_records(running, 1)
        assert record.resource == f"events/{event.event_id}"
        with running.ingest.writer._sessions() as session:
            count = session.execute(
                text("SELECT count(*) FROM access_records WHERE event_id = :id"),
                {"id": record.name.removeprefix("events/")},
            ).scalar_one()
        assert count == 1


async def test_looking_a_person_up_by_identifier_is_recorded_even_in_the_basic_view(
    tmp_path: Path, database_url: str | None
) -> None:
    async with suite(tmp_path, database_url=database_url) as running:
        event = make_event(subject="hana@example.org")
        await running.client().AppendEvents(ingest_pb2.AppendEventsRequest(events=[event]))
        dpo = running.client(roles=("dpo",))
        found = await dpo.ListEvents(
            ingest_pb2.ListEventsRequest(subject="hana@example.org", view=ingest_pb2.EVENT_VIEW_BASIC)
        )
        assert [e.event_id for e in found.events] == [event.event_id] and not found.events[0].subject
        nobody = await dpo.ListEvents(
            ingest_pb2.ListEventsRequest(subject="nobody@example.org", view=ingest_pb2.EVENT_VIEW_BASIC)
        )
        assert not nobody.events
        [record] = await own_records(running, 1, action="event.read")
        assert list(record.subject_pseudonyms) == [found.events[0].subject_pseudonym]
        assert dict(record.details) == {"subject_lookup": "true"}
        assert "hana" not in str(record)
