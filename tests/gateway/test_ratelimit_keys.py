"""What the Redis rate limiter leaves in Redis: no caller's name or address in clear."""

from __future__ import annotations

import uuid

import pytest
import redis
from prometheus_client import CollectorRegistry, Counter

from services.gateway.domain.ratelimit import Scope
from services.gateway.ratelimit import RedisRateLimiter
from services.runtime.clients import new_breaker

pytestmark = pytest.mark.redis


def _limiter(url: str, prefix: str, secret: bytes) -> RedisRateLimiter:
    return RedisRateLimiter(
        url=url,
        key_prefix=prefix,
        breaker=new_breaker(target="redis", fail_max=3, reset_seconds=30.0),
        fallback_total=Counter("fallback_total", "test", registry=CollectorRegistry()),
        timeout_seconds=2.0,
        key_secret=secret,
    )


def _keys(url: str, prefix: str) -> list[bytes]:
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        return list(client.scan_iter(match=f"{prefix}:*", count=1000))
    finally:
        client.close()


async def test_scope_keys_reach_redis_only_as_keyed_digests(redis_url: str) -> None:
    prefix = f"test:{uuid.uuid4().hex}"
    caller = f"erin.{uuid.uuid4().hex[:8]}@idp.example"
    scopes = [Scope("principal", f"principal:jwt:{caller}", 2), Scope("ip", "ip:192.0.2.77", 50)]
    replicas = [_limiter(redis_url, prefix, b"shared-secret") for _ in range(2)]
    other_deployment = _limiter(redis_url, prefix, b"another-secret")
    try:
        decisions = [await limiter.check(scopes) for limiter in replicas]
        assert [d.remaining for d in decisions] == [1, 0]  # replicas with one secret share a window
        assert (await other_deployment.check(scopes)).remaining == 1  # another secret, other keys
        keys = _keys(redis_url, prefix)
        assert len(keys) == 4
        assert not [key for key in keys if caller.encode() in key or b"192.0.2.77" in key], keys
    finally:
        for limiter in [*replicas, other_deployment]:
            await limiter.close()
