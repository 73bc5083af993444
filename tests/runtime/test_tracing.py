"""Spans are recorded only once something consumes them; until then they still carry ids."""

from __future__ import annotations

import pytest
from opentelemetry import propagate
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import use_span

from services.runtime import tracing


def test_without_a_consumer_spans_are_not_recorded_but_keep_fresh_ids() -> None:
    provider = tracing._Provider(Resource.create({}))
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("first") as first, tracer.start_as_current_span("second") as second:
        carrier: dict[str, str] = {}
        tracing.inject_metadata(carrier)
    assert not first.is_recording()
    assert first.get_span_context().is_valid
    assert second.get_span_context().trace_id == first.get_span_context().trace_id
    assert second.get_span_context().span_id != first.get_span_context().span_id
    assert format(second.get_span_context().span_id, "016x") in carrier["traceparent"]


def test_spans_are_recorded_once_a_processor_is_added() -> None:
    provider = tracing._Provider(Resource.create({}))
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("before"):
        pass
    exported = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exported))
    with tracer.start_as_current_span("after") as span:
        assert span.is_recording()
    assert [s.name for s in exported.get_finished_spans()] == ["after"]


def test_a_remote_parent_is_followed_once_recording() -> None:
    provider = tracing._Provider(Resource.create({}))
    exported = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exported))
    parent = propagate.extract({"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"})
    span = provider.get_tracer("test").start_span("child", context=parent)
    with use_span(span, end_on_exit=True):
        pass
    (finished,) = exported.get_finished_spans()
    assert format(finished.context.trace_id, "032x") == "0af7651916cd43dd8448eb211c80319c"


def test_the_standard_sampler_variable_still_applies(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    provider = tracing._Provider(Resource.create({}))
    exported = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exported))
    with provider.get_tracer("test").start_as_current_span("dropped") as span:
        assert not span.is_recording()
    assert exported.get_finished_spans() == ()
