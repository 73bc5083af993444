"""Single events of concurrent HTTP requests sent on to ingest together, as one AppendEvents call.

Most producers post one event per request (GoPhish's webhook, mail gateways, IdPs). Sent one by
one, each event pays a gRPC round trip and the per-call work behind it: the interceptors in both
processes, a key lookup at gdpr, a group-commit round and an enrichment call. Batched, that work
is paid once per call (docs/benchmarks.md shows the profile).

Appends of one principal that arrive while that principal's call is in flight wait and go
together in the next call (the runtime's ``Coalescer``): an idle gateway adds no delay, and a busy
one sends fewer, larger calls. Each request still gets exactly what AppendEvent answers: its own
receipt, or its own refusal with field paths under ``event`` rather than ``events[i]``. A replay
of an event already integrated is asked again as AppendEvent, whose receipt carries the
checkpoint that covers it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

from awareness.ingest.v1 import ingest_pb2
from opentelemetry.trace import SpanContext
from prometheus_client import Histogram

from services.gateway.domain.status import StatusError, as_single_item
from services.runtime import auth
from services.runtime.batching import Coalescer
from services.runtime.tracing import batch_span, current_span_context

# ingest's limit per AppendEvents call.
MAX_EVENTS_PER_CALL: Final = 500
# A larger event goes alone, so that a call of MAX_EVENTS_PER_CALL stays far below the 32 MiB
# message ingest accepts (16 MiB at most), whatever the events' sizes.
MAX_SHARED_EVENT_BYTES: Final = 32 * 1024
# Principals whose idle coalescers are kept before the idle ones are dropped.
MAX_IDLE_PRINCIPALS: Final = 1024


@dataclass(frozen=True, slots=True)
class _Pending:
    request: ingest_pb2.AppendEventRequest
    origin: SpanContext | None


class _AskAlone:
    """The batch answered a replay of an integrated event: AppendEvent adds its checkpoint."""


_ASK_ALONE: Final = _AskAlone()
_Outcome = ingest_pb2.AppendEventResponse | StatusError | _AskAlone

AppendOne = Callable[[ingest_pb2.AppendEventRequest], Awaitable[ingest_pb2.AppendEventResponse]]
AppendMany = Callable[[ingest_pb2.AppendEventsRequest], Awaitable[ingest_pb2.AppendEventsResponse]]


class AppendCoalescer:
    """``append`` answers as AppendEvent would; concurrent calls of one principal share a call."""

    def __init__(
        self,
        *,
        append_one: AppendOne,
        append_many: AppendMany,
        calls_in_flight: int,
        events_per_call: Histogram | None = None,
    ) -> None:
        self._append_one = append_one
        self._append_many = append_many
        self._calls_in_flight = calls_in_flight
        self._events_per_call = events_per_call
        self._by_principal: dict[auth.Principal, Coalescer[_Pending, _Outcome]] = {}

    async def append(self, request: ingest_pb2.AppendEventRequest) -> ingest_pb2.AppendEventResponse:
        """AppendEvent for the current principal (whose identity the batch call carries)."""
        principal = auth.current_principal()
        if principal is None or request.ByteSize() > MAX_SHARED_EVENT_BYTES:
            return await self._append_one(request)  # nothing to group by, or too large to share
        [outcome] = await self._coalescer(principal).submit([_Pending(request, current_span_context())])
        if isinstance(outcome, StatusError):
            raise outcome
        if isinstance(outcome, _AskAlone):
            return await self._append_one(request)
        return outcome

    def _coalescer(self, principal: auth.Principal) -> Coalescer[_Pending, _Outcome]:
        coalescer = self._by_principal.get(principal)
        if coalescer is None:
            if len(self._by_principal) >= MAX_IDLE_PRINCIPALS:
                self._by_principal = {p: c for p, c in self._by_principal.items() if not c.idle}
            # The batch task starts in the first caller's context, so it signs as this principal.
            coalescer = self._by_principal[principal] = Coalescer(
                self._send, max_items=MAX_EVENTS_PER_CALL, max_running=self._calls_in_flight
            )
        return coalescer

    async def _send(self, pending: list[_Pending]) -> list[_Outcome]:
        if self._events_per_call is not None:
            self._events_per_call.observe(len(pending))
        if len(pending) == 1:  # alone: the call AppendEvent is, errors raised as they come
            return [await self._append_one(pending[0].request)]
        with batch_span(
            "gateway.append_events",
            service="gateway",
            origins=[item.origin for item in pending],
            attributes={"awareness.events": len(pending)},
        ):
            answer = await self._append_many(
                ingest_pb2.AppendEventsRequest(events=[item.request.event for item in pending])
            )
        outcomes: list[_Outcome] = [_ASK_ALONE] * len(pending)
        for result in answer.results:
            outcomes[result.index] = _outcome(result)
        return outcomes


def _outcome(result: ingest_pb2.AppendEventResult) -> _Outcome:
    if result.HasField("error"):
        return StatusError(
            as_single_item(result.error, index=result.index, batch_field="events", single_field="event")
        )
    if result.replayed and result.receipt.HasField("leaf_index"):
        return _ASK_ALONE
    return ingest_pb2.AppendEventResponse(receipt=result.receipt, replayed=result.replayed)
