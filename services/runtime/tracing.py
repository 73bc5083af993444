"""OpenTelemetry tracing with W3C trace-context propagation, and spans for batched work.

The exporter is chosen by ``AWARENESS_TRACES_EXPORTER``: ``none`` (default), ``console``
or ``otlp`` (standard ``OTEL_EXPORTER_OTLP_*`` variables select the collector).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, MutableMapping, Sequence
from contextlib import contextmanager

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider, sampling
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import Link, Span, SpanContext, SpanKind
from opentelemetry.util.types import Attributes

_provider: TracerProvider | None = None


class _SampleOnceConsumed(sampling.Sampler):
    """The SDK's sampler (OTEL_TRACES_SAMPLER, else parent-based always-on) once spans have a
    consumer; until then, none is recorded.

    With no exporter a recorded span is built, filled with attributes and thrown away: about 10 µs
    each, several per event in every process. A span that is not recorded still gets fresh trace and
    span ids, so log lines keep their trace_id and calls still carry the context onward.
    """

    def __init__(self) -> None:
        self.consumed = False
        self._sampler = sampling._get_from_env_or_default()

    def should_sample(
        self,
        parent_context: otel_context.Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: trace.TraceState | None = None,
    ) -> sampling.SamplingResult:
        chosen = self._sampler if self.consumed else sampling.ALWAYS_OFF
        return chosen.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

    def get_description(self) -> str:
        return f"SampleOnceConsumed{{{self._sampler.get_description() if self.consumed else 'none yet'}}}"


class _Provider(TracerProvider):
    """Starts recording spans when the first span processor is added."""

    def __init__(self, resource: Resource) -> None:
        self._gate = _SampleOnceConsumed()
        super().__init__(resource=resource, sampler=self._gate)

    def add_span_processor(self, span_processor: SpanProcessor) -> None:
        super().add_span_processor(span_processor)
        self._gate.consumed = True


def _exporter(kind: str) -> SpanExporter | None:
    if kind == "console":
        return ConsoleSpanExporter()
    if kind == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    return None


def configure_tracing(
    *, service: str, exporter: str = "none", extra_processor: SpanProcessor | None = None
) -> TracerProvider:
    """Install the process-wide tracer provider once; later calls reuse it."""
    global _provider
    if _provider is None:
        _provider = _Provider(Resource.create({"service.name": f"awareness-{service}"}))
        trace.set_tracer_provider(_provider)
    span_exporter = _exporter(exporter)
    if span_exporter is not None:
        _provider.add_span_processor(BatchSpanProcessor(span_exporter))
    if extra_processor is not None:
        _provider.add_span_processor(extra_processor)
    return _provider


def shutdown_tracing() -> None:
    if _provider is not None:
        _provider.shutdown()


def tracer(name: str) -> trace.Tracer:
    return trace.get_tracer(name)


def inject_metadata(carrier: MutableMapping[str, str]) -> None:
    """Write ``traceparent``/``tracestate`` for the current span into outgoing metadata."""
    propagate.inject(carrier)


def extract_context(metadata: Mapping[str, str]) -> otel_context.Context:
    return propagate.extract(carrier=dict(metadata))


# Batched work (group commits, enrichment batches, coalesced calls) runs outside any one request's
# trace. Each request's span context travels with its work item; a batch span is then a child of
# that context when the batch comes from one trace, and links to every originating context
# otherwise (a span has one parent, but any number of links). Outgoing calls made while the batch
# span is current carry it to the peer, so the peer's spans join the same trace.

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
    name: str,
    *,
    service: str,
    origins: Iterable[SpanContext | None],
    attributes: dict[str, str | int] | None = None,
) -> Iterator[Span]:
    """Start `name` as the current span: a child of the one originating trace, else a root linked
    to each.

    With no origin (for example a reconciler round), the span is a child of whatever is current.
    """
    contexts = distinct_origins(origins)
    parent = None
    links: list[Link] = []
    if len({context.trace_id for context in contexts}) == 1:
        parent = trace.set_span_in_context(trace.NonRecordingSpan(contexts[0]))
        links = [Link(context) for context in contexts[1:]]
    elif contexts:  # several traces: a root of its own, linked to each, not a child of one
        parent = otel_context.Context()
        links = [Link(context) for context in contexts]
    span_attributes: dict[str, str | int] = {
        "awareness.service": service,
        "awareness.batch.origins": len(contexts),
    }
    span_attributes.update(attributes or {})
    with trace.get_tracer(f"awareness.{service}").start_as_current_span(
        name, context=parent, kind=SpanKind.INTERNAL, links=links, attributes=span_attributes
    ) as span:
        yield span
