"""OpenTelemetry tracing with W3C trace-context propagation.

The exporter is chosen by ``AWARENESS_TRACES_EXPORTER``: ``none`` (default), ``console``
or ``otlp`` (standard ``OTEL_EXPORTER_OTLP_*`` variables select the collector).
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

_provider: TracerProvider | None = None


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
        _provider = TracerProvider(resource=Resource.create({"service.name": f"awareness-{service}"}))
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
