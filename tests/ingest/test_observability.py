"""Ingest's operational metrics and the traces of its background work.

The metrics are read from the service's own registry (what /metrics serves); the traces from an
in-memory exporter on the process's tracer provider, with real gdpr, signing and policy servers
and a scoring double, all talking over 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from awareness.ingest.v1 import ingest_pb2
from opentelemetry import trace
from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanContext, TraceFlags
from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

from services.ingest.enrichment import Enricher, EnrichmentSettings
from services.ingest.keys import SubjectKeys
from services.ingest.repository import WriteGate
from services.ingest.service import Committer, EnrichmentItem, PendingRow
from services.runtime.metrics import ServiceMetrics
from services.runtime.tracing import batch_span, configure_tracing
from tests.ingest.harness import Suite, eventually, make_event, suite
from tests.ingest.test_enrichment import start_scoring

pytestmark = pytest.mark.timeout(120)


def sample(running: Suite, name: str, **labels: str) -> float:
    value = running.services["ingest"].context.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


# --- metrics ------------------------------------------------------------------------------------


async def test_append_and_checkpoint_metrics_follow_the_log(tmp_path: Path, database_url: str | None) -> None:
    # Signing starts down: the leaves are integrated but no checkpoint covers them.
    async with suite(tmp_path, database_url=database_url, services=("gdpr", "ingest")) as running:
        client = running.client()
        events = [make_event(subject=f"user{i}@example.org") for i in range(3)]
        await client.AppendEvents(ingest_pb2.AppendEventsRequest(events=events))
        await client.AppendEvent(ingest_pb2.AppendEventRequest(event=events[0]))  # a replay
        invalid = make_event()
        invalid.type = ""
        with pytest.raises(grpc.aio.AioRpcError):
            await client.AppendEvent(ingest_pb2.AppendEventRequest(event=invalid))

        appended = "awareness_ingest_events_appended_total"
        assert sample(running, appended, outcome="accepted") == 3
        assert sample(running, appended, outcome="replayed") == 1
        assert sample(running, appended, outcome="invalid") == 1
        assert sample(running, "awareness_ingest_append_batch_duration_seconds_count") == 3
        assert sample(running, "awareness_ingest_queue_depth") == 0

        lag = "awareness_ingest_integrator_lag_leaves"
        await eventually(
            lambda: sample(running, "awareness_ingest_tree_size_leaves") == 3, what="3 integrated leaves"
        )
        await eventually(
            lambda: sample(running, "awareness_ingest_checkpoint_failures_total", reason="UNAVAILABLE") > 0,
            what="a failed signing",
        )
        assert sample(running, lag) == 3
        assert sample(running, "awareness_ingest_checkpoints_total") == 0
        assert sample(running, "awareness_ingest_integrated_leaves_total") == 3

        signing_started = time.time()
        await running.start("signing")
        await eventually(
            lambda: sample(running, "awareness_ingest_checkpoints_total") >= 1, what="a checkpoint"
        )
        assert sample(running, lag) == 0
        assert sample(running, "awareness_ingest_checkpoint_tree_size_leaves") == 3
        # The checkpoint was signed after signing started, so its age cannot exceed that.
        age = sample(running, "awareness_ingest_checkpoint_age_seconds")
        assert 0 <= age <= time.time() - signing_started + 0.01


def _pending_row(index: int) -> PendingRow:
    return PendingRow(
        event_id=f"event-{index}",
        fingerprint="",
        leaf_hash=b"",
        receive_time_us=0,
        record=(),
        metadata=(),
        enrichment=None,
    )


async def test_queue_depth_gauges_count_waiting_events() -> None:
    metrics = ServiceMetrics("ingest")
    engine = create_engine("sqlite://")
    sessions = sessionmaker(bind=engine)
    gate = WriteGate(engine)
    committer = Committer(sessions=sessions, gate=gate, metrics=metrics)
    unused_channel = functools.partial(grpc.aio.insecure_channel, "127.0.0.1:1")  # never called
    enricher = Enricher(
        sessions=sessions,
        keys=SubjectKeys(channel=unused_channel, ttl_seconds=1),
        scoring=unused_channel,
        policy=unused_channel,
        settings=EnrichmentSettings(),
        gate=gate,
        metrics=metrics,
    )

    def depth(name: str) -> float | None:
        return metrics.registry.get_sample_value(f"awareness_ingest_{name}")

    assert (depth("queue_depth"), depth("enrichment_queue_depth")) == (0, 0)
    # No committer task runs: the appends wait in its queue.
    waiting = [
        asyncio.create_task(committer.submit([_pending_row(i), _pending_row(i + 10)])) for i in range(3)
    ]
    await eventually(lambda: depth("queue_depth") == 6, what="6 waiting events")
    item = EnrichmentItem(
        event_id="e", pseudonym="p", type="t", source="s", severity=1, occurred_at_us=0, summary_length=0,
        detail_count=0, details={},
    )  # fmt: skip
    enricher.submit([item, item])
    assert depth("enrichment_queue_depth") == 2
    for task in waiting:
        task.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)
    engine.dispose()


# --- traces -------------------------------------------------------------------------------------


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    spans = InMemorySpanExporter()
    provider = configure_tracing(service="ingest-test", extra_processor=SimpleSpanProcessor(spans))
    current = trace.get_tracer_provider()
    if current is not provider and isinstance(current, TracerProvider):  # installed by someone else
        current.add_span_processor(SimpleSpanProcessor(spans))
    yield spans
    spans.shutdown()  # later spans are no longer kept


@pytest.fixture
async def traced_suite(tmp_path: Path) -> AsyncIterator[Suite]:
    env = {"AWARENESS_INGEST_CHECKPOINT_EVERY": "1"}
    async with suite(tmp_path, services=("signing", "gdpr", "policy", "ingest"), ingest_env=env) as running:
        _scoring, server = await start_scoring(running)
        # As serve() does for a real process: the ingest engine's statements become spans.
        instrumentor = SQLAlchemyInstrumentor()
        instrumentor.instrument(engines=[running.services["ingest"].context.engine])
        try:
            yield running
        finally:
            instrumentor.uninstrument()
            await server.stop(0)


def _service(span: ReadableSpan) -> str:
    return str((span.attributes or {}).get("awareness.service", ""))


async def test_background_work_joins_the_trace_of_the_append(
    exporter: InMemorySpanExporter, traced_suite: Suite
) -> None:
    exporter.clear()
    with trace.get_tracer("test").start_as_current_span("caller") as caller:
        trace_id = caller.get_span_context().trace_id
        await traced_suite.client().AppendEvent(ingest_pb2.AppendEventRequest(event=make_event()))

    def in_trace() -> list[ReadableSpan]:
        return [s for s in exporter.get_finished_spans() if s.context and s.context.trace_id == trace_id]

    wanted = {
        ("ingest", "ingest.group_commit"),
        ("ingest", "ingest.enrich"),
        ("ingest", "ingest.checkpoint"),
        ("scoring", "/awareness.scoring.v1.ScoringService/ScoreEvents"),
        ("policy", "/awareness.policy.v1.PolicyService/EvaluateEvents"),
        ("signing", "/awareness.signing.v1.SigningService/SignCheckpoint"),
    }
    await eventually(
        lambda: wanted <= {(_service(s), s.name) for s in in_trace()}, timeout=30, what=f"spans {wanted}"
    )
    spans = in_trace()
    by_name = {s.name: s for s in spans}
    # A batch of one request is that request's child, with no links.
    assert by_name["ingest.enrich"].parent is not None and not by_name["ingest.enrich"].links
    commit = by_name["ingest.group_commit"]
    assert commit.context is not None
    # The commit's database work is traced under the group-commit span.
    assert any(
        s.parent is not None
        and s.parent.span_id == commit.context.span_id
        and "db.system" in (s.attributes or {})
        for s in spans
    )


def _context(trace_id: int, span_id: int) -> SpanContext:
    return SpanContext(trace_id=trace_id, span_id=span_id, is_remote=True, trace_flags=TraceFlags(1))


def test_a_batch_from_several_traces_links_to_each(exporter: InMemorySpanExporter) -> None:
    first, second = _context(0xA1, 0x1), _context(0xB2, 0x2)
    with batch_span("ingest.enrich", service="ingest", origins=[first, second, first, None]):
        pass
    with batch_span("ingest.enrich", service="ingest", origins=[second]):
        pass
    linked, child = [s for s in exporter.get_finished_spans() if s.name == "ingest.enrich"][-2:]
    assert linked.parent is None
    assert [link.context.trace_id for link in linked.links] == [0xA1, 0xB2]
    assert child.context is not None and child.context.trace_id == 0xB2
    assert child.parent is not None and child.parent.span_id == 0x2 and not child.links
