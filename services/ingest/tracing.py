"""Spans for ingest's background work, tied to the requests that caused it.

Group commits, enrichment batches and checkpoint signings run in background tasks, outside any
request's trace. Each request's span context travels with its work item; a batch span is then a
child of that context when the batch comes from one trace, and links to every originating context
otherwise (a span has one parent, but any number of links). Outgoing calls made while the batch
span is current carry it to the peer, so the peer's spans join the same trace.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.trace import Link, Span, SpanContext, SpanKind

TRACER_NAME = "awareness.ingest"
# The SDK keeps at most 128 links a span; a batch of many requests names the first ones.
MAX_LINKS = 64


def current_span_context() -> SpanContext | None:
    """The caller's span context, to carry into queued work (None outside a trace)."""
    context = trace.get_current_span().get_span_context()
    return context if context.is_valid else None


def distinct_origins(origins: Iterable[SpanContext | None], *, limit: int = MAX_LINKS) -> list[SpanContext]:
    """Valid span contexts, first occurrence of each span kept, at most `limit`."""
    seen: set[tuple[int, int]] = set()
    kept: list[SpanContext] = []
    for origin in origins:
        if origin is None or not origin.is_valid:
            continue
        key = (origin.trace_id, origin.span_id)
        if key in seen:
            continue
        seen.add(key)
        kept.append(origin)
        if len(kept) >= limit:
            break
    return kept


@contextmanager
def batch_span(
    name: str, *, origins: Iterable[SpanContext | None], attributes: dict[str, str | int] | None = None
) -> Iterator[Span]:
    """Start `name` as the current span: a child of the one originating trace, else linked to each.

    With no origin (for example a reconciler round), the span is a child of whatever is current.
    """
    contexts = distinct_origins(origins)
    parent = None
    links: list[Link] = []
    if len({context.trace_id for context in contexts}) == 1:
        parent = trace.set_span_in_context(trace.NonRecordingSpan(contexts[0]))
        links = [Link(context) for context in contexts[1:]]
    else:
        links = [Link(context) for context in contexts]
    span_attributes: dict[str, str | int] = {
        "awareness.service": "ingest",
        "awareness.batch.origins": len(contexts),
    }
    span_attributes.update(attributes or {})
    with trace.get_tracer(TRACER_NAME).start_as_current_span(
        name, context=parent, kind=SpanKind.INTERNAL, links=links, attributes=span_attributes
    ) as span:
        yield span
