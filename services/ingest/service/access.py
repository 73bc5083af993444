"""ListAccessRecords: the access records (``audit.action`` events) through their index, newest first."""

from __future__ import annotations

import json

from awareness.ingest.v1 import ingest_pb2
from sqlalchemy.orm import Session, sessionmaker

from services.ingest import repository
from services.ingest.domain.access import access_facts
from services.ingest.models import EventRecord
from services.ingest.repository import AccessFilter
from services.runtime.db import run_db
from services.runtime.errors import FieldViolation, InvalidArgumentError
from services.runtime.paging import PageTokens, page_size
from services.runtime.timestamps import timestamp_from_us, timestamp_to_us

LIST_METHOD = "ingest.ListAccessRecords"


def access_record_message(record: EventRecord, pseudonyms: list[str]) -> ingest_pb2.AccessRecord:
    """The record as its event's system payload holds it; the subjects as the index rows name them."""
    payload = json.loads(record.system_payload or "{}")
    facts = access_facts(subject_pseudonym=record.subject_pseudonym, details=payload.get("details", {}))
    return ingest_pb2.AccessRecord(
        name=f"events/{record.event_id}",
        principal=facts.principal,
        action=facts.action,
        method=facts.method,
        resource=facts.resource,
        subject_pseudonyms=pseudonyms or facts.pseudonyms,
        outcome=facts.outcome,
        time=timestamp_from_us(record.occurred_at_us),
        service=record.source,
        details=facts.details,
    )


class AccessRecordReader:
    def __init__(self, *, sessions: sessionmaker[Session], page_tokens: PageTokens) -> None:
        self._sessions = sessions
        self._tokens = page_tokens

    async def list_records(
        self, request: ingest_pb2.ListAccessRecordsRequest
    ) -> ingest_pb2.ListAccessRecordsResponse:
        size = page_size(request.page_size)
        start_us = timestamp_to_us(request.start_time) if request.HasField("start_time") else None
        end_us = timestamp_to_us(request.end_time) if request.HasField("end_time") else None
        if start_us is not None and end_us is not None and end_us <= start_us:
            raise InvalidArgumentError(
                "end_time must be after start_time",
                reason="INVALID_TIME_RANGE",
                violations=[FieldViolation("end_time", "must be after start_time")],
            )
        where = AccessFilter(
            principal=request.principal,
            action=request.action,
            resource=request.resource,
            subject_pseudonym=request.subject_pseudonym,
            start_us=start_us,
            end_us=end_us,
        )
        # As ListEvents: the token holds the last (time, id) and is bound to the method and filters.
        scope = where.fingerprint()
        after = self._tokens.decode(request.page_token, method=LIST_METHOD, filters=scope, shape=(int, str))

        async def fetch(limit: int) -> list[tuple[int, str]]:
            return await run_db(self._page, where, after, limit)

        rows, token = await self._tokens.fetch_page(
            fetch, size=size, position=lambda row: list(row), method=LIST_METHOD, filters=scope
        )
        stored = await run_db(self._records, [event_id for _, event_id in rows])
        return ingest_pb2.ListAccessRecordsResponse(
            access_records=[
                access_record_message(*stored[event_id]) for _, event_id in rows if event_id in stored
            ],
            next_page_token=token,
        )

    def _page(self, where: AccessFilter, after: tuple[int, str] | None, limit: int) -> list[tuple[int, str]]:
        with self._sessions() as session:
            return repository.list_access_records(session, where=where, after=after, limit=limit)

    def _records(self, event_ids: list[str]) -> dict[str, tuple[EventRecord, list[str]]]:
        with self._sessions() as session:
            return repository.access_records_by_ids(session, event_ids=event_ids)
