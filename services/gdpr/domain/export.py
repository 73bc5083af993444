"""Streaming JSON writer for the Art. 20 (data portability) export.

The document is produced piece by piece, one event at a time, so memory stays constant in the number of
events: a subject with years of history streams as easily as one with a single event.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from datetime import UTC, date, datetime
from typing import Any

EXPORT_FORMAT = "awareness.gdpr.export/v1"
DEFAULT_CHUNK_BYTES = 64 * 1024


def _json_default(value: object) -> str:
    # Timestamps are the only non-JSON values the export expects; anything else is a caller bug.
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise TypeError("naive datetime in export; timestamps must be timezone-aware")
        return value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable in an export")


def _encode(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, default=_json_default, separators=(",", ":")).encode()


def _iter_pieces(
    *,
    subject_info: dict[str, Any],
    events: Iterable[dict[str, Any]],
    consents: Iterable[dict[str, Any]],
    generated_at: datetime,
) -> Iterator[bytes]:
    yield b'{"format":' + _encode(EXPORT_FORMAT)
    yield b',"generated_at":' + _encode(generated_at)
    yield b',"subject":' + _encode(subject_info)
    for name, items in ((b"events", events), (b"consents", consents)):
        yield b',"' + name + b'":['
        separator = b""
        for item in items:
            yield separator + _encode(item)
            separator = b","
        yield b"]"
    yield b"}\n"


def iter_export_json(
    *,
    subject_info: dict[str, Any],
    events: Iterable[dict[str, Any]],
    consents: Iterable[dict[str, Any]],
    generated_at: datetime | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> Iterator[bytes]:
    """Yield UTF-8 chunks that together form ONE JSON document.

    ``{"format": "awareness.gdpr.export/v1", "generated_at": ..., "subject": {...}, "events": [...],
    "consents": [...]}``. ``events`` and ``consents`` are consumed lazily, once. Chunks are about
    ``chunk_bytes`` long (a single larger item yields a larger chunk), which suits a gRPC stream or an
    HTTP chunked response. Timestamps (timezone-aware datetimes) are written as ISO 8601 strings.
    ``generated_at`` defaults to now (UTC); pass it for a reproducible document.
    """
    if chunk_bytes <= 0:
        raise ValueError("chunk_bytes must be positive")
    if generated_at is None:
        generated_at = datetime.now(UTC)
    buffer = bytearray()
    for piece in _iter_pieces(
        subject_info=subject_info, events=events, consents=consents, generated_at=generated_at
    ):
        buffer += piece
        if len(buffer) >= chunk_bytes:
            yield bytes(buffer)
            buffer.clear()
    if buffer:
        yield bytes(buffer)


async def aiter_export_json(
    *,
    subject_info: dict[str, Any],
    events: AsyncIterable[dict[str, Any]],
    consents: Iterable[dict[str, Any]],
    generated_at: datetime | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> AsyncIterator[bytes]:
    """``iter_export_json`` for events that arrive asynchronously (pages fetched over the network).

    Same document, same chunking; ``events`` is consumed lazily, once, as the consumer pulls chunks.
    """
    if chunk_bytes <= 0:
        raise ValueError("chunk_bytes must be positive")
    if generated_at is None:
        generated_at = datetime.now(UTC)
    consent_items = list(consents)  # a subject's consent history is short; events are the long part
    head = bytearray(b'{"format":' + _encode(EXPORT_FORMAT))
    head += b',"generated_at":' + _encode(generated_at)
    head += b',"subject":' + _encode(subject_info) + b',"events":['
    buffer = head
    separator = b""
    async for item in events:
        buffer += separator + _encode(item)
        separator = b","
        if len(buffer) >= chunk_bytes:
            yield bytes(buffer)
            buffer = bytearray()
    buffer += b'],"consents":['
    separator = b""
    for item in consent_items:
        buffer += separator + _encode(item)
        separator = b","
        if len(buffer) >= chunk_bytes:
            yield bytes(buffer)
            buffer = bytearray()
    buffer += b"]}\n"
    yield bytes(buffer)
