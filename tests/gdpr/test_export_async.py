"""The asynchronous export writer: same document as the synchronous one, consumed lazily."""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import AsyncGenerator, AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest

from services.gdpr.domain.export import aiter_export_json, iter_export_json
from tests.gdpr.test_export import EVENT_COUNT, GENERATED_AT, MEMORY_BOUND_BYTES, SUBJECT, _consents, _event


async def _events(count: int, pulled: list[int] | None = None) -> AsyncIterator[dict[str, Any]]:
    for index in range(count):
        if pulled is not None:
            pulled.append(index)
        yield _event(index)


async def _collect(count: int, *, chunk_bytes: int = 64 * 1024) -> list[bytes]:
    return [
        chunk
        async for chunk in aiter_export_json(
            subject_info=SUBJECT,
            events=_events(count),
            consents=_consents(),
            generated_at=GENERATED_AT,
            chunk_bytes=chunk_bytes,
        )
    ]


@pytest.mark.parametrize("count", [0, 1, 3_000])
async def test_async_writer_produces_the_same_document_as_the_sync_writer(count: int) -> None:
    expected = b"".join(
        iter_export_json(
            subject_info=SUBJECT,
            events=(_event(i) for i in range(count)),
            consents=_consents(),
            generated_at=GENERATED_AT,
        )
    )
    chunks = await _collect(count)
    assert b"".join(chunks) == expected
    assert len(json.loads(expected)["events"]) == count


async def test_async_writer_pulls_events_only_as_chunks_are_consumed() -> None:
    pulled: list[int] = []
    stream = aiter_export_json(
        subject_info=SUBJECT,
        events=_events(10_000, pulled),
        consents=[],
        generated_at=datetime(2026, 1, 1, tzinfo=UTC),
        chunk_bytes=4096,
    )
    assert isinstance(stream, AsyncGenerator)
    first = await anext(stream)
    assert first.startswith(b'{"format":')
    assert 0 < len(pulled) < 100  # one chunk's worth, not the whole history
    await stream.aclose()


@pytest.mark.slow
async def test_async_streaming_peak_memory_stays_small_for_100k_events() -> None:
    total = 0
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        async for chunk in aiter_export_json(
            subject_info=SUBJECT, events=_events(EVENT_COUNT), consents=_consents(), generated_at=GENERATED_AT
        ):
            total += len(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total > MEMORY_BOUND_BYTES // 2
    assert peak < MEMORY_BOUND_BYTES
