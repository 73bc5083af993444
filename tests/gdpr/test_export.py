from __future__ import annotations

import hashlib
import json
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.gdpr.domain.export import EXPORT_FORMAT, iter_export_json

EVENT_COUNT = 100_000
MEMORY_BOUND_BYTES = 20 * 1024 * 1024
GENERATED_AT = datetime(2026, 11, 5, 10, 30, tzinfo=UTC)
SUBJECT = {"pseudonym": "psn_alice", "identifier": "alice@example.com", "erased": False}


def _event(index: int) -> dict[str, Any]:
    return {
        "event_id": f"evt_{index:08d}",
        "type": "phishing.link_clicked",
        "occurred_at": (datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=index)).isoformat(),
        "personal": {"email": f"user{index}@example.com", "url": f"https://phish.example/{index}"},
    }


def _events(count: int = EVENT_COUNT) -> Iterator[dict[str, Any]]:
    return (_event(index) for index in range(count))


def _consents() -> list[dict[str, Any]]:
    return [{"purpose": "profiling", "action": "withdraw", "at": "2026-03-01T00:00:00+00:00", "actor": "dpo"}]


def test_joined_chunks_are_one_json_document_that_round_trips() -> None:
    chunks = list(
        iter_export_json(
            subject_info=SUBJECT, events=_events(), consents=_consents(), generated_at=GENERATED_AT
        )
    )
    assert len(chunks) > 1  # really streamed, not one blob
    document = json.loads(b"".join(chunks))
    assert list(document) == ["format", "generated_at", "subject", "events", "consents"]
    assert document["format"] == EXPORT_FORMAT
    assert document["generated_at"] == GENERATED_AT.isoformat()
    assert document["subject"] == SUBJECT
    assert document["consents"] == _consents()
    assert len(document["events"]) == EVENT_COUNT
    assert document["events"] == list(_events())


@pytest.mark.slow
def test_streaming_peak_memory_stays_small_for_100k_events() -> None:
    digest = hashlib.sha256()
    total = 0
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        for chunk in iter_export_json(
            subject_info=SUBJECT, events=_events(), consents=_consents(), generated_at=GENERATED_AT
        ):
            digest.update(chunk)  # consume and drop, as a gRPC stream or HTTP response would
            total += len(chunk)
        _, streaming_peak = tracemalloc.get_traced_memory()

        # Control: merely holding the same events in a list exceeds the bound, so the bound discriminates.
        tracemalloc.reset_peak()
        materialised = list(_events())
        _, materialised_peak = tracemalloc.get_traced_memory()
        del materialised
    finally:
        tracemalloc.stop()
    assert total > MEMORY_BOUND_BYTES // 2  # the output itself is large
    assert streaming_peak < MEMORY_BOUND_BYTES
    assert materialised_peak > MEMORY_BOUND_BYTES


def test_empty_subject_export_is_valid() -> None:
    document = json.loads(
        b"".join(iter_export_json(subject_info={}, events=[], consents=[], generated_at=GENERATED_AT))
    )
    assert document["events"] == []
    assert document["consents"] == []


def test_unicode_and_datetimes_are_written_correctly() -> None:
    when = datetime(2026, 2, 3, 4, 5, 6, tzinfo=UTC)
    events = [{"subject": "Zoë Ærø 山田 \u2028", "at": when, "quote": 'a "b" \\ c'}]
    raw = b"".join(
        iter_export_json(subject_info={"name": "Zoë"}, events=events, consents=[], generated_at=GENERATED_AT)
    )
    document = json.loads(raw.decode("utf-8"))
    assert document["events"] == [
        {"subject": "Zoë Ærø 山田 \u2028", "at": when.isoformat(), "quote": 'a "b" \\ c'}
    ]


def test_chunks_respect_the_requested_size() -> None:
    chunks = list(
        iter_export_json(
            subject_info=SUBJECT,
            events=_events(1000),
            consents=[],
            generated_at=GENERATED_AT,
            chunk_bytes=4096,
        )
    )
    # Every chunk but the last has reached the size; small items never overshoot it by more than one item.
    assert all(4096 <= len(chunk) < 4096 + 1024 for chunk in chunks[:-1])
    assert 0 < len(chunks[-1]) < 4096 + 1024


def test_events_are_consumed_lazily() -> None:
    consumed = 0

    def counting_events() -> Iterator[dict[str, Any]]:
        nonlocal consumed
        for index in range(10_000):
            consumed += 1
            yield _event(index)

    stream = iter_export_json(
        subject_info=SUBJECT,
        events=counting_events(),
        consents=[],
        generated_at=GENERATED_AT,
        chunk_bytes=1024,
    )
    next(stream)
    assert consumed < 100


def test_unserialisable_values_are_rejected() -> None:
    with pytest.raises(TypeError):
        b"".join(
            iter_export_json(
                subject_info={}, events=[{"raw": b"bytes"}], consents=[], generated_at=GENERATED_AT
            )
        )
    with pytest.raises(TypeError):
        b"".join(
            iter_export_json(
                subject_info={}, events=[{"at": datetime(2026, 1, 1)}], consents=[], generated_at=GENERATED_AT
            )
        )
