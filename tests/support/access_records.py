"""What a one-service test needs to see the access records a service appends (services/runtime/audit.py).

:func:`capture` points a running service's recorder at a :class:`RecordSink` in place of ingest's
AppendEvents, so a test of one service reads its records without a real ingest.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from awareness.ingest.v1 import ingest_pb2

from services.runtime.audit import AUDIT_EVENT_TYPE
from services.runtime.server import ServiceContext


class RecordSink:
    """Collects the ``audit.action`` events a recorder appends."""

    def __init__(self) -> None:
        self.events: list[ingest_pb2.Event] = []

    async def __call__(self, events: Sequence[ingest_pb2.Event]) -> None:
        self.events.extend(events)

    async def settled(self, count: int, *, timeout_seconds: float = 6.0) -> list[ingest_pb2.Event]:
        """The records once ``count`` arrived (the recorder appends in batches, off the request path)."""
        deadline = asyncio.get_running_loop().time() + timeout_seconds
        while len(self.events) < count and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)
        return list(self.events)

    @staticmethod
    def row(event: ingest_pb2.Event) -> tuple[str, str, str, str]:
        """(principal, action, resource, outcome) of one record."""
        details = event.details
        return details["principal"], details["action"], details.get("resource", ""), details["outcome"]


def capture(context: ServiceContext) -> RecordSink:
    """Send the access records of the service running on ``context`` to a new sink."""
    assert context.audit is not None, "the service runs without an access-record recorder"
    sink = RecordSink()
    context.audit.sink = sink
    return sink


def assert_nothing_personal(events: Sequence[ingest_pb2.Event], *secrets: str, source: str) -> None:
    """Every event is an access record of ``source`` with none of ``secrets`` in it, in any case."""
    for event in events:
        assert event.type == AUDIT_EVENT_TYPE and event.source == source
        assert not event.subject and not event.summary
        text = (str(event) + event.SerializeToString().decode("utf-8", "replace")).casefold()
        for secret in secrets:
            assert secret.casefold() not in text, f"{secret!r} in an access record: {event}"
