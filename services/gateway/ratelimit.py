"""Rate limiting in Redis through one atomic Lua script, with an in-process fallback.

The script checks every scope of a request and records it only if all have room, in one
round trip and atomically, so concurrent gateway replicas cannot overshoot a limit. It
reads Redis' own clock (TIME), so replicas with skewed clocks still agree on the window.
When Redis errors or times out, a circuit breaker opens and the gateway limits in
process until Redis answers again: limits stay on (per replica), logged and counted.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import uuid
from collections.abc import Sequence
from typing import Any, Final, Protocol

import pybreaker
import redis.asyncio as redis_asyncio
from prometheus_client import Counter
from redis.exceptions import RedisError

from services.gateway.domain.ratelimit import (
    WINDOW_SECONDS,
    Decision,
    InProcessLimiter,
    Scope,
    ScopeState,
    decide,
)

log = logging.getLogger("awareness.gateway.ratelimit")

RATE_KEY_LABEL: Final = b"awareness gateway rate-limit keys v1"

# KEYS: one sorted set per scope. ARGV[1]: window (ms); ARGV[2]: unique member; ARGV[3..]: limits.
# Returns {rejected scope index or 0, count_1, reset_ms_1, count_2, reset_ms_2, ...}.
SLIDING_WINDOW_LUA: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local result = {0}
for i, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  local count = redis.call('ZCARD', key)
  local reset = 0
  local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  if oldest[2] then reset = tonumber(oldest[2]) + window - now end
  if count >= tonumber(ARGV[i + 2]) and result[1] == 0 then result[1] = i end
  result[#result + 1] = count
  result[#result + 1] = reset
end
if result[1] == 0 then
  for _, key in ipairs(KEYS) do
    redis.call('ZADD', key, now, ARGV[2])
    redis.call('PEXPIRE', key, window)
  end
end
return result
"""


class RateLimiter(Protocol):
    async def check(self, scopes: Sequence[Scope]) -> Decision: ...

    async def close(self) -> None: ...


class LocalRateLimiter:
    def __init__(self, *, window_seconds: float = WINDOW_SECONDS) -> None:
        self._local = InProcessLimiter(window_seconds=window_seconds)

    async def check(self, scopes: Sequence[Scope]) -> Decision:
        return self._local.check(scopes)

    async def close(self) -> None:
        return None


class RedisRateLimiter:
    def __init__(
        self,
        *,
        url: str,
        key_prefix: str,
        breaker: pybreaker.CircuitBreaker,
        fallback_total: Counter,
        timeout_seconds: float,
        window_seconds: float = WINDOW_SECONDS,
        key_secret: bytes = b"",
    ) -> None:
        self._client: Any = redis_asyncio.Redis.from_url(
            url,
            socket_timeout=timeout_seconds,
            socket_connect_timeout=timeout_seconds,
            retry_on_timeout=False,
            health_check_interval=0,
        )
        self._script = self._client.register_script(SLIDING_WINDOW_LUA)
        self._prefix = key_prefix
        # Scope keys name callers (a JWT subject, an address): Redis sees only a keyed digest.
        self._key_secret = hmac.new(key_secret, RATE_KEY_LABEL, hashlib.sha256).digest()
        self._breaker = breaker
        self._fallback = InProcessLimiter(window_seconds=window_seconds)
        self._fallback_total = fallback_total
        self._timeout = timeout_seconds
        self._window = window_seconds
        self._degraded = False

    async def check(self, scopes: Sequence[Scope]) -> Decision:
        if not scopes:
            return decide([])
        try:
            with self._breaker.calling():
                async with asyncio.timeout(self._timeout * 2):  # no extra task, unlike wait_for
                    raw = await self._script(
                        keys=[self.redis_key(scope) for scope in scopes],
                        args=[int(self._window * 1000), uuid.uuid4().hex, *(s.limit for s in scopes)],
                    )
        except (pybreaker.CircuitBreakerError, RedisError, OSError, TimeoutError) as exc:
            self._fallback_total.inc()
            if not self._degraded:
                self._degraded = True
                log.warning(
                    "Redis rate limiter unavailable; limiting in process",
                    extra={"error": type(exc).__name__, "breaker": str(self._breaker.current_state)},
                )
            return self._fallback.check(scopes)
        if self._degraded:
            self._degraded = False
            log.info("Redis rate limiter recovered")
        values = [int(v) for v in raw]
        states = [
            ScopeState(scope=scope, count_before=values[1 + 2 * i], reset_seconds=values[2 + 2 * i] / 1000)
            for i, scope in enumerate(scopes)
        ]
        return decide(states, window_seconds=self._window)

    def redis_key(self, scope: Scope) -> str:
        digest = hmac.new(self._key_secret, scope.key.encode(), hashlib.sha256).hexdigest()[:32]
        return f"{self._prefix}:{scope.name}:{digest}"

    @property
    def degraded(self) -> bool:
        return self._degraded

    @property
    def breaker_state(self) -> str:
        return str(self._breaker.current_state)

    async def close(self) -> None:
        await self._client.aclose()
