"""The erasure saga in the service layer, called without gRPC: how often it enters the store.

The store is the real one (SQLite or PostgreSQL); ingest is the in-memory double of conftest.py.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from awareness.gdpr.v1 import gdpr_pb2

from services.gdpr.service import usecases
from services.runtime.db import run_db
from tests.gdpr.conftest import Harness, timestamp


@pytest.fixture
def store_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the store's units of work the use cases run, in order."""
    calls: list[str] = []

    async def counting(func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        calls.append(func.__name__)
        return await run_db(func, *args, **kwargs)

    monkeypatch.setattr(usecases, "run_db", counting)
    return calls


async def _known_subject(harness: Harness) -> str:
    subject = f"person-{uuid.uuid4().hex}@example.org"
    lookup = gdpr_pb2.SubjectKeyLookup(
        subject=subject,
        occurred_at=timestamp(datetime(2025, 3, 14, tzinfo=UTC)),
        event_type="phishing.clicked",
    )
    await harness.internal.GetSubjectKeys(gdpr_pb2.GetSubjectKeysRequest(lookups=[lookup]))
    return subject


async def test_a_fresh_erasure_enters_the_store_once_per_durable_step(
    harness: Harness, store_calls: list[str]
) -> None:
    subject = await _known_subject(harness)
    gdpr = harness.service.use_cases
    store_calls.clear()

    record = await gdpr.erase_subject(
        identifier=subject, actor="dpo:dana", reason="ticket 7", request_id="r-1"
    )

    # Shred + record, the count ingest reported, the log event id: no read-back of the record just written.
    assert store_calls == ["erase", "set_events_affected", "set_log_event_id"]
    assert record.log_event_id is not None and record.events_affected == 0
    assert harness.fake_ingest.forgotten == [record.pseudonym]
    assert [event.event_id for event in harness.fake_ingest.appended] == [record.log_event_id]


async def test_a_replayed_erasure_returns_the_first_record_without_telling_ingest_again(
    harness: Harness, store_calls: list[str]
) -> None:
    subject = await _known_subject(harness)
    gdpr = harness.service.use_cases
    first = await gdpr.erase_subject(
        identifier=subject, actor="dpo:dana", reason="ticket 8", request_id="r-2"
    )
    store_calls.clear()

    again = await gdpr.erase_subject(
        identifier=subject, actor="dpo:dana", reason="ticket 8", request_id="r-2"
    )

    assert store_calls == ["erase"]
    assert (again.erasure_id, again.log_event_id) == (first.erasure_id, first.log_event_id)
    assert len(harness.fake_ingest.appended) == 1
