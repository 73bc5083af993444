"""ListEvents filtered by a person's identifier (`subject`), against the real signing, gdpr and ingest
services over 127.0.0.1, on SQLite and PostgreSQL: ingest resolves the identifier through gdpr's
lookup-only LookupSubject, so an unknown or erased person lists nothing and is never registered."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
from awareness.gdpr.v1 import gdpr_pb2, gdpr_pb2_grpc
from awareness.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from grpc_status import rpc_status
from sqlalchemy import text

from services.runtime.errors import field_violations
from tests.grpc_errors import reason_of, rpc_error
from tests.ingest.harness import Suite, make_event, suite

NOW = datetime.now(UTC).replace(microsecond=0)
DAVE = "dave@example.org"
ERIN = "erin@example.org"


async def listed(
    client: ingest_pb2_grpc.IngestServiceStub, *, page_size: int = 2, **filters: Any
) -> list[str]:
    """Every event id the filter lists, page by page."""
    found: list[str] = []
    token = ""
    while True:
        page = await client.ListEvents(
            ingest_pb2.ListEventsRequest(page_size=page_size, page_token=token, **filters)
        )
        found += [event.event_id for event in page.events]
        token = page.next_page_token
        if not token:
            return found


def registered_subjects(running: Suite) -> int:
    sessions = running.services["gdpr"].context.sessions
    assert sessions is not None
    with sessions() as session:
        return int(session.execute(text("SELECT count(*) FROM subjects")).scalar_one())


async def append_one_by_one(running: Suite) -> list[ingest_pb2.Event]:
    events = [
        make_event(subject=DAVE, event_type="phishing.clicked", occurred_at=NOW - timedelta(hours=5)),
        make_event(subject=ERIN, event_type="phishing.clicked", occurred_at=NOW - timedelta(hours=4)),
        make_event(subject=DAVE, event_type="phishing.reported", occurred_at=NOW - timedelta(hours=3)),
        make_event(subject=ERIN, event_type="mfa.disabled", occurred_at=NOW - timedelta(hours=2)),
        make_event(subject=DAVE, event_type="login.failed", occurred_at=NOW - timedelta(hours=1)),
    ]
    client = running.client(roles=("integration",))
    for event in events:  # one by one: a distinct receive time each, newest last
        await client.AppendEvent(ingest_pb2.AppendEventRequest(event=event))
    return events


async def test_subject_filter_lists_only_that_persons_events(
    tmp_path: Path, database_url: str | None
) -> None:
    async with suite(tmp_path, database_url=database_url) as running:
        events = await append_one_by_one(running)
        daves = [events[4].event_id, events[2].event_id, events[0].event_id]  # newest received first
        erins = [events[3].event_id, events[1].event_id]
        analyst = running.client(roles=("analyst",))  # events:read only; ingest asks gdpr as itself

        assert await listed(analyst, subject=DAVE) == daves
        assert await listed(analyst, subject=ERIN) == erins
        assert await listed(analyst, subject=f"  {DAVE.upper()} ") == daves  # spelled as gdpr matches it
        assert await listed(analyst, subject=DAVE, type="phishing.clicked") == [events[0].event_id]
        page = await analyst.ListEvents(ingest_pb2.ListEventsRequest(subject=ERIN, page_size=1))
        assert page.events[0].subject == ERIN  # decrypted as in any list

        # Combined with the pseudonym filter: both must name the same person.
        dave_pseudonym = (
            await analyst.GetEvent(ingest_pb2.GetEventRequest(name=f"events/{events[0].event_id}"))
        ).subject_pseudonym
        assert await listed(analyst, subject=DAVE, subject_pseudonym=dave_pseudonym) == daves
        assert await listed(analyst, subject=ERIN, subject_pseudonym=dave_pseudonym) == []

        # An unknown person: an empty list, not an error, and gdpr registered nobody.
        subjects_before = registered_subjects(running)
        stranger = f"nobody-{uuid.uuid4().hex}@example.org"
        empty = await analyst.ListEvents(ingest_pb2.ListEventsRequest(subject=stranger))
        assert list(empty.events) == [] and empty.next_page_token == ""
        assert registered_subjects(running) == subjects_before == 2
        gdpr = gdpr_pb2_grpc.GdprServiceStub(running.channel("gdpr", caller="ingest"))
        unknown = await rpc_error(gdpr.LookupSubject(gdpr_pb2.LookupSubjectRequest(subject=stranger)))
        assert unknown.code() == grpc.StatusCode.NOT_FOUND

        # Page tokens are bound to the filter: another person, or the same person by pseudonym, refuses it.
        first = await analyst.ListEvents(ingest_pb2.ListEventsRequest(subject=DAVE, page_size=1))
        assert first.next_page_token
        token = first.next_page_token
        assert b"dave" not in base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).lower()
        for other in ({"subject": ERIN}, {"subject_pseudonym": dave_pseudonym}, {}):
            refused = await rpc_error(
                analyst.ListEvents(ingest_pb2.ListEventsRequest(page_token=first.next_page_token, **other))
            )
            assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT, other
            assert reason_of(refused) == "INVALID_PAGE_TOKEN"
        by_pseudonym = await analyst.ListEvents(
            ingest_pb2.ListEventsRequest(subject_pseudonym=dave_pseudonym, page_size=1)
        )
        refused = await rpc_error(
            analyst.ListEvents(
                ingest_pb2.ListEventsRequest(subject=DAVE, page_token=by_pseudonym.next_page_token)
            )
        )
        assert reason_of(refused) == "INVALID_PAGE_TOKEN"

        blank = await rpc_error(analyst.ListEvents(ingest_pb2.ListEventsRequest(subject="   ")))
        assert blank.code() == grpc.StatusCode.INVALID_ARGUMENT
        status = rpc_status.from_call(blank)
        assert status is not None and {v.field for v in field_violations(status)} == {"subject"}

        # After erasure the identifier leads nowhere (the lookup entry is gone, and is not re-created);
        # the events stay, under their pseudonym, with the personal fields shredded.
        dpo = gdpr_pb2_grpc.GdprServiceStub(running.channel("gdpr", roles=("dpo",)))
        erasure = await dpo.EraseSubject(
            gdpr_pb2.EraseSubjectRequest(subject=DAVE, reason="Art. 17 request", request_id=str(uuid.uuid4()))
        )
        assert erasure.pseudonym == dave_pseudonym
        assert await listed(analyst, subject=DAVE) == []
        assert await listed(analyst, subject=ERIN) == erins
        assert registered_subjects(running) == 1
        remaining = await analyst.ListEvents(ingest_pb2.ListEventsRequest(subject_pseudonym=dave_pseudonym))
        shredded = [e for e in remaining.events if e.event_id in daves]
        assert [e.event_id for e in shredded] == daves
        assert {e.personal_data_state for e in shredded} == {ingest_pb2.Event.PERSONAL_DATA_STATE_ERASED}


async def test_subject_filter_while_gdpr_is_down_is_unavailable(
    tmp_path: Path, database_url: str | None
) -> None:
    async with suite(tmp_path, database_url=database_url) as running:
        events = await append_one_by_one(running)
        analyst = running.client(roles=("analyst",))
        dave_pseudonym = (
            await analyst.GetEvent(ingest_pb2.GetEventRequest(name=f"events/{events[0].event_id}"))
        ).subject_pseudonym

        await running.stop("gdpr")
        down = await rpc_error(analyst.ListEvents(ingest_pb2.ListEventsRequest(subject=DAVE)))
        assert down.code() == grpc.StatusCode.UNAVAILABLE
        assert "gdpr" in (down.details() or "") and "subject_pseudonym" in (down.details() or "")
        assert DAVE not in (down.details() or "")  # the identifier is not echoed into errors

        # The pseudonym filter needs no gdpr call: it still lists, personal fields marked unavailable.
        page = await analyst.ListEvents(ingest_pb2.ListEventsRequest(subject_pseudonym=dave_pseudonym))
        assert len(page.events) == 3
        assert {e.personal_data_state for e in page.events} <= {
            ingest_pb2.Event.PERSONAL_DATA_STATE_UNAVAILABLE,
            ingest_pb2.Event.PERSONAL_DATA_STATE_AVAILABLE,  # keys still in ingest's short cache
        }
