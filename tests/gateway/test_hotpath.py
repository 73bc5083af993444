"""The per-request path: cached API keys, a key store outage as 503, and a SERVER span per request."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import make_url

from services.gateway import authn
from services.gateway.app import create_gateway
from services.gateway.domain.keycache import TtlCache
from services.runtime.config import load_settings
from tests.gateway.conftest import (
    Backends,
    FakeClock,
    Harness,
    Seen,
    bearer,
    create_key,
    gateway_env,
    run_cli,
    running_gateway,
    status_reason,
)

CALLER_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN_ID = "00f067aa0ba902b7"


def _use_cache_clock(harness: Harness, clock: FakeClock) -> None:
    state = harness.app.state.gateway
    state.admission.authenticator = authn.Authenticator(
        sessions=state.sessions, config=state.config, cache_clock=clock
    )


def _count_key_reads(harness: Harness) -> list[str]:
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        if "api_keys" in statement:
            statements.append(statement)

    event.listen(harness.app.state.gateway.engine, "before_cursor_execute", record)
    return statements


def test_ttl_cache_expires_entries_and_evicts_the_oldest() -> None:
    clock = FakeClock()
    cache: TtlCache[str] = TtlCache(ttl_seconds=30, max_entries=2, clock=clock)
    cache.put("a", "A")
    cache.put("b", "B")
    clock.now += 29
    assert (cache.get("a"), cache.get("b")) == ("A", "B")
    cache.put("c", "C")  # over capacity: "a", the oldest, goes
    assert (cache.get("a"), cache.get("c")) == (None, "C")
    clock.now += 1
    assert cache.get("b") is None  # 30 s after insertion
    assert cache.get("c") == "C"


def test_ttl_cache_with_zero_lifetime_stores_nothing() -> None:
    cache: TtlCache[str] = TtlCache(ttl_seconds=0, max_entries=10)
    cache.put("a", "A")
    assert cache.get("a") is None and len(cache) == 0


async def test_verified_key_is_read_from_the_store_once(gateway: Harness) -> None:
    key = create_key(gateway.env, "analyst")
    reads = _count_key_reads(gateway)
    responses = await asyncio.gather(
        *(gateway.client.get("/v1/events", headers=bearer(key)) for _ in range(8))
    )
    assert [r.status_code for r in responses] == [200] * 8
    # Concurrent first requests share one read; later ones are served from the cache.
    assert len(reads) == 1
    assert (await gateway.client.get("/v1/events", headers=bearer(key))).status_code == 200
    assert len(reads) == 1


async def test_wrong_secret_is_refused_even_when_the_key_is_cached(gateway: Harness) -> None:
    key = create_key(gateway.env, "admin")
    assert (await gateway.client.get("/v1/events", headers=bearer(key))).status_code == 200
    forged = key.rsplit("_", 1)[0] + "_" + "A" * 43
    response = await gateway.client.get("/v1/events", headers=bearer(forged))
    assert (response.status_code, status_reason(response.json())) == (401, "INVALID_CREDENTIALS")


async def test_revocation_takes_effect_when_the_cached_entry_expires(gateway: Harness) -> None:
    clock = FakeClock()
    _use_cache_clock(gateway, clock)
    key = create_key(gateway.env, "analyst")
    assert (await gateway.client.get("/v1/events", headers=bearer(key))).status_code == 200
    code, out = run_cli(gateway.env, "keys", "revoke", key.split("_")[1])
    assert code == 0 and "5 s" in out
    clock.now += 4  # still inside the documented window
    assert (await gateway.client.get("/v1/events", headers=bearer(key))).status_code == 200
    clock.now += 1.5
    response = await gateway.client.get("/v1/events", headers=bearer(key))
    assert (response.status_code, status_reason(response.json())) == (401, "KEY_REVOKED")


async def test_revocation_is_immediate_with_the_cache_off(
    tmp_path: Path, backend: Backends, seen: Seen
) -> None:
    async with running_gateway(tmp_path, backend, seen, AWARENESS_GATEWAY_KEY_CACHE_SECONDS="0") as harness:
        key = create_key(harness.env, "analyst")
        assert (await harness.client.get("/v1/events", headers=bearer(key))).status_code == 200
        code, out = run_cli(harness.env, "keys", "revoke", key.split("_")[1])
        assert code == 0 and "key cache" not in out
        response = await harness.client.get("/v1/events", headers=bearer(key))
        assert (response.status_code, status_reason(response.json())) == (401, "KEY_REVOKED")


@pytest.mark.slow
async def test_key_store_down_gives_503_and_cached_keys_keep_working(
    tmp_path: Path, backend: Backends, seen: Seen, fresh_postgres_db: str
) -> None:
    async with running_gateway(
        tmp_path, backend, seen, AWARENESS_GATEWAY_DATABASE_URL=fresh_postgres_db
    ) as harness:
        assert harness.app.state.gateway.engine.dialect.name == "postgresql"
        verified = create_key(harness.env, "analyst")
        never_seen = create_key(harness.env, "analyst")
        assert (await harness.client.get("/v1/events", headers=bearer(verified))).status_code == 200

        name = make_url(fresh_postgres_db).database
        admin = create_engine(
            make_url(fresh_postgres_db).set(database="postgres"), isolation_level="AUTOCOMMIT"
        )
        try:
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        finally:
            admin.dispose()

        response = await harness.client.get("/v1/events", headers=bearer(never_seen))
        assert response.status_code == 503
        assert status_reason(response.json()) == "KEY_STORE_UNAVAILABLE"
        assert "www-authenticate" not in response.headers
        assert (await harness.client.get("/v1/events", headers=bearer(verified))).status_code == 200


@asynccontextmanager
async def _traced_gateway(
    tmp_path: Path, backend: Backends
) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, str], InMemorySpanExporter]]:
    """A gateway whose spans go to an in-memory exporter: its client, settings and the exporter."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    env = gateway_env(tmp_path, backend)
    app = create_gateway(load_settings("gateway", env), tracer=provider.get_tracer("test"))
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway.test")
    try:
        yield client, env, exporter
    finally:
        await client.aclose()
        await app.state.gateway.close()


async def test_request_runs_in_a_server_span_propagated_to_the_backend(
    tmp_path: Path, backend: Backends, seen: Seen
) -> None:
    async with _traced_gateway(tmp_path, backend) as (client, env, exporter):
        key = create_key(env, "analyst")
        headers = {**bearer(key), "traceparent": f"00-{CALLER_TRACE_ID}-{CALLER_SPAN_ID}-01"}
        assert (await client.get("/v1/events", headers=headers)).status_code == 200

    (span,) = exporter.get_finished_spans()
    assert span.kind == SpanKind.SERVER
    assert span.name == "GET /v1/events"
    assert dict(span.attributes or {}) == {
        "http.method": "GET",
        "http.route": "/v1/events",
        "http.status_code": 200,
    }
    assert format(span.context.trace_id, "032x") == CALLER_TRACE_ID
    assert span.parent is not None and format(span.parent.span_id, "016x") == CALLER_SPAN_ID
    # The backend call carried the server span as its parent.
    assert seen.traceparents == [f"00-{CALLER_TRACE_ID}-{format(span.context.span_id, '016x')}-01"]


async def test_unauthenticated_request_is_traced_with_its_status(
    tmp_path: Path, backend: Backends, seen: Seen
) -> None:
    async with _traced_gateway(tmp_path, backend) as (client, _env, exporter):
        assert (await client.get("/v1/events")).status_code == 401
    (span,) = exporter.get_finished_spans()
    assert span.parent is None  # no traceparent: a new trace starts here
    assert (span.attributes or {})["http.status_code"] == 401
    assert seen.traceparents == []
