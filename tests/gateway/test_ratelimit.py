"""Sliding-window limits: the arithmetic, the Lua script on real Redis, and the fallback."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter

from services.gateway.domain.gophish import SIGNATURE_HEADER as SIGNATURE
from services.gateway.domain.ratelimit import Decision, InProcessLimiter, Scope, ScopeState, decide
from services.gateway.ratelimit import RedisRateLimiter
from services.runtime.clients import new_breaker
from tests.conftest import free_port
from tests.gateway.conftest import (
    Backends,
    FakeClock,
    Harness,
    Seen,
    admin_get,
    bearer,
    create_key,
    running_gateway,
    status_reason,
)

EVENTS = "/v1/events"
GOPHISH = "/v1/integrations/gophish"


def test_in_process_window_admits_the_limit_then_refuses_until_the_oldest_expires() -> None:
    clock = FakeClock()
    limiter = InProcessLimiter(window_seconds=60, clock=clock)
    scope = [Scope("principal", "p:alice", 3)]
    decisions = []
    for _ in range(3):
        decisions.append(limiter.check(scope))
        clock.now += 10
    assert [d.allowed for d in decisions] == [True, True, True]
    assert [d.remaining for d in decisions] == [2, 1, 0]
    refused = limiter.check(scope)  # at t=30: the first request (t=0) frees at t=60
    assert not refused.allowed
    assert refused.retry_after_seconds == 30
    assert refused.rejected_scope == "principal"
    clock.now += 25  # t=55: still full; refusals were not recorded, so nothing moved
    assert not limiter.check(scope).allowed
    clock.now += 6  # t=61
    assert limiter.check(scope).allowed


def test_a_request_is_recorded_only_when_every_scope_has_room() -> None:
    limiter = InProcessLimiter(window_seconds=60, clock=FakeClock())
    tight = Scope("principal", "p:bob", 1)
    loose = Scope("ip", "ip:1", 10)
    assert limiter.check([tight, loose]).allowed
    for _ in range(5):
        assert limiter.check([tight, loose]).rejected_scope == "principal"
    # The refused requests did not consume the IP scope.
    assert limiter.check([loose]).remaining == 8


def test_headers_report_the_tightest_scope() -> None:
    states = [
        ScopeState(Scope("principal", "p", 100), count_before=10, reset_seconds=5),
        ScopeState(Scope("ip", "i", 1000), count_before=995, reset_seconds=12.2),
    ]
    decision = decide(states)
    assert (decision.scope, decision.limit, decision.remaining, decision.reset_seconds) == ("ip", 1000, 4, 13)


def _limiter(
    url: str, prefix: str, registry: CollectorRegistry | None = None, **kw: float
) -> RedisRateLimiter:
    registry = registry or CollectorRegistry()
    return RedisRateLimiter(
        url=url,
        key_prefix=prefix,
        breaker=new_breaker(
            target="redis", fail_max=int(kw.get("fail_max", 3)), reset_seconds=kw.get("reset", 30.0)
        ),
        fallback_total=Counter("fallback_total", "test", registry=registry),
        timeout_seconds=kw.get("timeout", 2.0),
    )


@pytest.mark.redis
async def test_lua_script_on_real_redis_limits_and_reports(redis_url: str) -> None:
    limiter = _limiter(redis_url, f"test:{uuid.uuid4().hex}")
    try:
        scope = [Scope("principal", "p:carol", 3), Scope("ip", "ip:127.0.0.1", 50)]
        allowed = [await limiter.check(scope) for _ in range(3)]
        assert [d.remaining for d in allowed] == [2, 1, 0]
        assert all(d.scope == "principal" and d.limit == 3 for d in allowed)
        refused = await limiter.check(scope)
        assert not refused.allowed
        assert refused.rejected_scope == "principal"
        assert 1 <= refused.retry_after_seconds <= 60
        assert not limiter.degraded
    finally:
        await limiter.close()


@pytest.mark.redis
async def test_lua_script_is_atomic_under_concurrency(redis_url: str) -> None:
    prefix = f"test:{uuid.uuid4().hex}"
    limiters = [_limiter(redis_url, prefix) for _ in range(4)]  # four "replicas", one Redis
    try:
        scope = [Scope("global", "global", 7)]
        results = await asyncio.gather(*(limiters[i % 4].check(scope) for i in range(40)))
        assert not any(limiter.degraded for limiter in limiters)  # every answer came from Redis
        assert sum(d.allowed for d in results) == 7
    finally:
        for limiter in limiters:
            await limiter.close()


def _concurrent_requests() -> list[list[Scope]]:
    """Three principals behind two addresses under one global budget, interleaved: every scope
    runs out at some point, and refusals by one scope must not spend the others."""
    requests = []
    for i in range(60):
        requests.append(
            [
                Scope("principal", f"p:{i % 3}", 9),
                Scope("ip", f"ip:{i % 5 % 2}", 15),  # addresses cut across principals
                Scope("global", "global", 25),
            ]
        )
    return requests


@pytest.mark.redis
async def test_concurrent_checks_share_script_calls_and_decide_as_one_at_a_time(redis_url: str) -> None:
    limiter = _limiter(redis_url, f"test:{uuid.uuid4().hex}")
    reference = InProcessLimiter(window_seconds=60, clock=FakeClock())
    requests = _concurrent_requests()
    try:
        shared = await asyncio.gather(*(limiter.check(scopes) for scopes in requests))
        assert not limiter.degraded
        assert limiter.script_calls < len(requests) // 4  # one call served many checks
        alone = [reference.check(scopes) for scopes in requests]  # arrival order, one at a time

        def verdict(decision: Decision) -> tuple[bool, str | None, str | None, int, int]:
            return (
                decision.allowed,
                decision.rejected_scope,
                decision.scope,
                decision.limit,
                decision.remaining,
            )

        assert [verdict(d) for d in shared] == [verdict(d) for d in alone]
        assert sum(d.allowed for d in shared) == 25  # the global budget
        assert {d.rejected_scope for d in shared} == {None, "principal", "ip", "global"}
        # Every window began within this test, so each reports the full minute until it frees.
        assert all(d.reset_seconds >= 59 for d in shared)
        # Later single checks see what the shared calls recorded.
        assert not (await limiter.check(requests[0])).allowed
        assert limiter.script_calls >= 2
    finally:
        await limiter.close()


async def test_unreachable_redis_falls_back_for_every_check_of_a_shared_call() -> None:
    registry = CollectorRegistry()
    limiter = _limiter(f"redis://127.0.0.1:{free_port()}/0", "test:down", registry, fail_max=5, timeout=0.2)
    try:
        scope = [Scope("principal", "p:erin", 2)]
        decisions = await asyncio.gather(*(limiter.check(scope) for _ in range(6)))
        assert sum(d.allowed for d in decisions) == 2
        assert limiter.degraded
        assert registry.get_sample_value("fallback_total") == 6
        assert limiter.breaker_state == "closed"  # the shared calls failed fewer times than checks
    finally:
        await limiter.close()


async def test_unreachable_redis_falls_back_to_in_process_limits() -> None:
    registry = CollectorRegistry()
    limiter = _limiter(f"redis://127.0.0.1:{free_port()}/0", "test:down", registry, fail_max=2, timeout=0.2)
    try:
        scope = [Scope("principal", "p:dave", 2)]
        decisions = [await limiter.check(scope) for _ in range(4)]
        assert [d.allowed for d in decisions] == [True, True, False, False]
        assert limiter.degraded
        assert registry.get_sample_value("fallback_total") == 4
    finally:
        await limiter.close()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A private redis-server we may stop (never the machine's Redis)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server not installed")
    port = free_port()
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import redis

    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.exceptions.ConnectionError:
            if time.monotonic() > deadline:
                proc.kill()
                raise
            time.sleep(0.05)
    client.close()
    try:
        yield f"redis://127.0.0.1:{port}/0", proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


async def test_gateway_limits_through_redis_then_falls_back_when_it_stops(
    own_redis: tuple[str, subprocess.Popen[bytes]], tmp_path: Path, backend: Backends, seen: Seen
) -> None:
    url, proc = own_redis
    async with running_gateway(
        tmp_path,
        backend,
        seen,
        REDIS_URL=url,
        AWARENESS_GATEWAY_RATE_PRINCIPAL_PER_MIN="3",
        AWARENESS_GATEWAY_RATE_KEY_PREFIX=f"test:{uuid.uuid4().hex}",
        AWARENESS_BREAKER_FAIL_MAX="1",
    ) as harness:
        key = create_key(harness.env, "analyst")
        assert (await harness.client.get(EVENTS, headers=bearer(key))).status_code == 200
        dependencies = (await admin_get(harness, "/health/dependencies")).json()
        assert dependencies["rate_limiter"] == {"backend": "redis", "degraded": False, "breaker": "closed"}
        proc.kill()  # our own redis-server, by pid
        proc.wait(timeout=10)
        # Redis is gone: the in-process fallback starts empty and still enforces the limit.
        statuses = [(await harness.client.get(EVENTS, headers=bearer(key))).status_code for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
        dependencies = (await admin_get(harness, "/health/dependencies")).json()
        assert dependencies["rate_limiter"]["degraded"] is True
        assert dependencies["rate_limiter"]["breaker"] == "open"
        metrics = (await admin_get(harness, "/metrics")).text
        assert "awareness_gateway_ratelimit_fallback_total 4.0" in metrics
        assert 'awareness_gateway_ratelimit_rejections_total{scope="principal"} 1.0' in metrics


@pytest.mark.redis
async def test_gateway_429_with_headers_against_real_redis(
    redis_url: str, tmp_path: Path, backend: Backends, seen: Seen
) -> None:
    async with running_gateway(
        tmp_path,
        backend,
        seen,
        AWARENESS_GATEWAY_RATE_PRINCIPAL_PER_MIN="3",
        AWARENESS_GATEWAY_RATE_IP_PER_MIN="1000",
        **limits_in_redis(redis_url),
    ) as harness:
        key = create_key(harness.env, "analyst")
        responses = [await harness.client.get(EVENTS, headers=bearer(key)) for _ in range(4)]
        assert [r.status_code for r in responses] == [200, 200, 200, 429]
        assert [r.headers["x-ratelimit-limit"] for r in responses] == ["3"] * 4
        assert [r.headers["x-ratelimit-remaining"] for r in responses] == ["2", "1", "0", "0"]
        refused = responses[-1]
        retry_after = int(refused.headers["retry-after"])
        assert 1 <= retry_after <= 60
        assert int(refused.headers["x-ratelimit-reset"]) == retry_after
        assert refused.json()["code"] == 8  # RESOURCE_EXHAUSTED
        assert status_reason(refused.json()) == "RATE_LIMITED"
        assert "retry-after" not in responses[0].headers
        # Another principal from the same IP is not affected by alice's limit.
        other = create_key(harness.env, "analyst")
        assert (await harness.client.get(EVENTS, headers=bearer(other))).status_code == 200
        metrics = (await admin_get(harness, "/metrics")).text
        assert 'awareness_gateway_ratelimit_rejections_total{scope="principal"} 1.0' in metrics
        assert "awareness_gateway_ratelimit_fallback_total 0.0" in metrics


def limits_in_redis(redis_url: str) -> dict[str, str]:
    """The gateway's limiter on ``redis_url``, under a key prefix of the test's own."""
    return {
        "REDIS_URL": redis_url,
        "AWARENESS_GATEWAY_RATE_KEY_PREFIX": f"test:{uuid.uuid4().hex}",
        "AWARENESS_GATEWAY_REDIS_TIMEOUT_SECONDS": "2",
    }


async def _flood_then_valid(tmp_path: Path, backend: Backends, seen: Seen, **limiter_env: str) -> str:
    """Bad keys and bad webhook signatures from one address, then a valid key from it, through a
    gateway allowing 3 failed authentications and 5 requests a minute per address; its metrics."""
    async with running_gateway(
        tmp_path,
        backend,
        seen,
        AWARENESS_GATEWAY_RATE_AUTH_FAILURES_PER_MIN="3",
        AWARENESS_GATEWAY_RATE_IP_PER_MIN="5",
        **limiter_env,
    ) as harness:
        await _assert_failures_spend_their_own_bucket(harness)
        return (await admin_get(harness, "/metrics")).text


async def _assert_failures_spend_their_own_bucket(harness: Harness) -> None:
    bad = [(await harness.client.get(EVENTS, headers=bearer("awk_bad"))).status_code for _ in range(3)]
    bad += [
        (await harness.client.post(GOPHISH, content=b"{}", headers={SIGNATURE: "sha256=00"})).status_code
        for _ in range(3)
    ]
    assert bad == [401, 401, 401, 429, 429, 429]
    refused = await harness.client.get(EVENTS, headers=bearer("awk_bad"))
    assert status_reason(refused.json()) == "RATE_LIMITED"
    assert refused.json()["details"][0]["metadata"]["scope"] == "auth_failures"
    # The IP budget (5) is whole: the flood spent only the failed-authentication bucket.
    key = create_key(harness.env, "analyst")
    ok = [(await harness.client.get(EVENTS, headers=bearer(key))).status_code for _ in range(5)]
    assert ok == [200] * 5
    assert (await harness.client.get(EVENTS, headers=bearer(key))).json()["details"][0]["metadata"][
        "scope"
    ] == "ip"


async def test_failed_authentication_has_its_own_bucket_in_process(
    tmp_path: Path, backend: Backends, seen: Seen
) -> None:
    await _flood_then_valid(tmp_path, backend, seen)


@pytest.mark.redis
async def test_failed_authentication_has_its_own_bucket_in_redis(
    redis_url: str, tmp_path: Path, backend: Backends, seen: Seen
) -> None:
    metrics = await _flood_then_valid(tmp_path, backend, seen, **limits_in_redis(redis_url))
    assert "awareness_gateway_ratelimit_fallback_total 0.0" in metrics  # Redis decided, not the fallback
    assert 'awareness_gateway_ratelimit_rejections_total{scope="auth_failures"} 4.0' in metrics
