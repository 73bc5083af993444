"""One HTTP request through the gateway yields one trace across the suite, with database spans.

Processes cannot share an in-memory exporter, so every service runs in THIS process (the shared
in-process suite, tests/gdpr/suite.py): each service's ``create_app`` behind a real gRPC server on a
loopback port (the same ``create_server`` the real processes use), and the gateway's ASGI app driven
through httpx.
One TracerProvider with an InMemorySpanExporter collects every span; SQLAlchemy engines are
instrumented as ``serve()`` does for a real process.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from bench.loadgen import make_event
from services.runtime.config import load_settings
from services.runtime.tracing import configure_tracing
from tests.conftest import IDENTITY_ENV
from tests.gdpr.suite import in_process_suite
from tests.support.suite import run_module

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

START_ORDER = ("signing", "gdpr", "policy", "scoring", "ingest")
FAST = {
    "AWARENESS_INGEST_INTEGRATE_INTERVAL_MS": "20",
    "AWARENESS_INGEST_CHECKPOINT_INTERVAL_MS": "50",
    "AWARENESS_INGEST_CHECKPOINT_EVERY": "1",
    "AWARENESS_INGEST_RECONCILE_INTERVAL_SECONDS": "0.2",
    # Longer than the enrichment linger (100 ms) and its calls: a reconciler allowed to take rows
    # of age 0 back-filled the event in a trace of its own before the enricher's batch left.
    "AWARENESS_INGEST_RECONCILE_SETTLE_SECONDS": "2",
    "AWARENESS_HEALTH_PROBE_SECONDS": "0.2",
    "AWARENESS_CALL_TIMEOUT_SECONDS": "10",
    # No default-model training in this process: ScoreEvents still answers (and is traced) without one.
    "AWARENESS_SCORING_BOOTSTRAP_MODEL": "0",
    "AWARENESS_METRICS_PORT": "0",
    "AWARENESS_GATEWAY_RATE_PRINCIPAL_PER_MIN": "100000",
}


def install_exporter() -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    provider = configure_tracing(service="tracing-test", extra_processor=SimpleSpanProcessor(exporter))
    current = trace.get_tracer_provider()
    if current is not provider and isinstance(current, TracerProvider):  # set earlier by someone else
        current.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


@contextlib.asynccontextmanager
async def traced_suite(data_dir: Path) -> AsyncIterator[httpx.AsyncClient]:
    """The shared in-process suite, the gateway's app in front, every engine instrumented."""
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    from services.gateway.app import create_gateway

    async with in_process_suite(data_dir, services=START_ORDER, **FAST) as suite:
        gateway = create_gateway(load_settings("gateway", suite.env))
        engines = [r.context.engine for r in suite.services.values() if r.context.engine is not None]
        engines.append(gateway.state.gateway.engine)
        instrumentor = SQLAlchemyInstrumentor()
        instrumentor.instrument(engines=engines)
        try:
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=gateway), base_url="http://gateway.test", timeout=30
            ) as client:
                yield client
        finally:
            await gateway.state.gateway.channels.close()
            with contextlib.suppress(Exception):
                instrumentor.uninstrument()


def api_key(data_dir: Path) -> str:
    env = {
        "PATH": "/usr/bin:/bin",
        "AWARENESS_DATA_DIR": str(data_dir),
        **IDENTITY_ENV,
    }
    completed = run_module("services.cli", "keys", "create", "--name", "tracing", "--role", "admin", env=env)
    assert completed.returncode == 0, completed.stderr
    return completed.stdout.strip().splitlines()[0]


def service_of(span: ReadableSpan) -> str:
    attributes = span.attributes or {}
    return str(attributes.get("awareness.service", ""))


def in_trace(span: ReadableSpan, trace_id: int) -> bool:
    """In the trace, or linked to it (batched background work names its triggers as links)."""
    if span.context is not None and span.context.trace_id == trace_id:
        return True
    return any(link.context.trace_id == trace_id for link in span.links)


def names(spans: Iterable[ReadableSpan]) -> list[str]:
    return sorted({span.name for span in spans})


async def wait_for(predicate: Any, *, timeout: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def test_one_request_yields_one_trace_across_every_service_with_database_spans(tmp_path: Path) -> None:
    exporter = install_exporter()
    key = await asyncio.to_thread(api_key, tmp_path)
    async with traced_suite(tmp_path) as client:
        exporter.clear()
        response = await client.post(
            "/v1/events", json=make_event(1), headers={"Authorization": f"Bearer {key}"}
        )
        assert response.status_code == 200, response.text
        event_id = response.json()["receipt"]["eventId"]

        def append_span() -> ReadableSpan | None:
            for span in exporter.get_finished_spans():
                if span.name.endswith("/AppendEvent") and service_of(span) == "ingest":
                    return span
            return None

        await wait_for(lambda: append_span() is not None, timeout=10, what="the ingest AppendEvent span")
        append = append_span()
        assert append is not None and append.context is not None
        trace_id = append.context.trace_id

        def services_reached() -> set[str]:
            return {service_of(s) for s in exporter.get_finished_spans() if in_trace(s, trace_id)}

        with contextlib.suppress(AssertionError):  # report what is missing below, not a timeout
            await wait_for(
                lambda: {"gdpr", "signing", "scoring", "policy"} <= services_reached(),
                timeout=20,
                what="spans of gdpr, signing, scoring and policy",
            )
        spans = exporter.get_finished_spans()
        traced = [s for s in spans if in_trace(s, trace_id)]
        problems: list[str] = []
        gateway_spans = [
            s for s in traced if s.kind == SpanKind.SERVER and "awareness.service" not in (s.attributes or {})
        ]
        if not gateway_spans:
            problems.append(
                "no gateway HTTP server span in the trace: the gateway does not start a span for the request "
                "(so ingest's span is the root)"
            )
        elif append.parent is None:
            problems.append("ingest's AppendEvent span has no parent: the gateway does not propagate context")
        for service in ("gdpr", "signing", "scoring", "policy"):
            reached = [s for s in traced if service_of(s) == service]
            if not reached:
                elsewhere = names(s for s in spans if service_of(s) == service)
                problems.append(f"no {service} span in the trace (its spans, in other traces: {elsewhere})")
        database = [
            s
            for s in traced
            if "db.system" in (s.attributes or {}) or "db.system.name" in (s.attributes or {})
        ]
        if not database:
            problems.append("no database span in the trace")
        assert not problems, f"event {event_id}, trace {trace_id:032x}:\n- " + "\n- ".join(problems)
