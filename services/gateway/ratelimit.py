"""Rate limiting in Redis through one atomic Lua script, with an in-process fallback.

The script checks every scope of a request and records it only if all have room, atomically,
so concurrent gateway replicas cannot overshoot a limit. Requests that arrive while a check is in
flight go together in the next script call, each judged in arrival order as if alone. It
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
from services.runtime.batching import Coalescer

log = logging.getLogger("awareness.gateway.ratelimit")

RATE_KEY_LABEL: Final = b"awareness gateway rate-limit keys v1"
# Bounds one script call: Redis runs nothing else while a script runs.
MAX_CHECKS_PER_CALL: Final = 256

# Checks the requests of every caller waiting, in arrival order, as if each had its own call.
# KEYS: one sorted set per scope of each request, request after request.
# ARGV[1]: window (ms); ARGV[2]: member prefix, unique per call; then per request its scope
# count n and its n limits. Returns, per request, {rejected scope index or 0, count_1,
# reset_ms_1, ...}, concatenated. A key's count and oldest entry are read once per call and
# then kept in step with the members this call adds.
SLIDING_WINDOW_LUA: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local known = {}
local added = {}
local touched = {}
local result = {}
local k = 0
local a = 3
local request = 0
while a <= #ARGV do
  request = request + 1
  local n = tonumber(ARGV[a])
  local verdict = #result + 1
  result[verdict] = 0
  for i = 1, n do
    local key = KEYS[k + i]
    local state = known[key]
    if not state then
      redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
      local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
      state = {redis.call('ZCARD', key), oldest[2] and tonumber(oldest[2]) or false}
      known[key] = state
    end
    local reset = 0
    if state[2] then reset = state[2] + window - now end
    if state[1] >= tonumber(ARGV[a + i]) and result[verdict] == 0 then result[verdict] = i end
    result[#result + 1] = state[1]
    result[#result + 1] = reset
  end
  if result[verdict] == 0 then
    for i = 1, n do
      local key = KEYS[k + i]
      redis.call('ZADD', key, now, ARGV[2] .. ':' .. request)
      local state = known[key]
      state[1] = state[1] + 1
      if not state[2] then state[2] = now end
      if not added[key] then
        added[key] = true
        touched[#touched + 1] = key
      end
    end
  end
  k = k + n
  a = a + n + 1
end
for _, key in ipairs(touched) do
  redis.call('PEXPIRE', key, window)
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
        # Concurrent requests share one script call (the runtime's group commit, for Redis): under
        # load the round trip and redis-py's encoding are paid per batch instead of per request.
        self._checks: Coalescer[Sequence[Scope], list[ScopeState]] = Coalescer(
            self._check_batch, max_items=MAX_CHECKS_PER_CALL
        )

    async def check(self, scopes: Sequence[Scope]) -> Decision:
        if not scopes:
            return decide([])
        try:
            (states,) = await self._checks.submit([scopes])
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
        return decide(states, window_seconds=self._window)

    async def _check_batch(self, requests: list[Sequence[Scope]]) -> list[list[ScopeState]]:
        """Every waiting request's scopes in one script call: one round trip, one breaker call."""
        keys: list[str] = []
        args: list[int | str] = [int(self._window * 1000), uuid.uuid4().hex]
        for scopes in requests:
            keys.extend(self.redis_key(scope) for scope in scopes)
            args.append(len(scopes))
            args.extend(scope.limit for scope in scopes)
        with self._breaker.calling():
            async with asyncio.timeout(self._timeout * 2):  # no extra task, unlike wait_for
                raw = await self._script(keys=keys, args=args)
        values = [int(v) for v in raw]
        answers: list[list[ScopeState]] = []
        position = 0
        for scopes in requests:
            answers.append(
                [
                    ScopeState(
                        scope=scope,
                        count_before=values[position + 1 + 2 * i],
                        reset_seconds=values[position + 2 + 2 * i] / 1000,
                    )
                    for i, scope in enumerate(scopes)
                ]
            )
            position += 1 + 2 * len(scopes)
        return answers

    def redis_key(self, scope: Scope) -> str:
        digest = hmac.new(self._key_secret, scope.key.encode(), hashlib.sha256).hexdigest()[:32]
        return f"{self._prefix}:{scope.name}:{digest}"

    @property
    def script_calls(self) -> int:
        """Script calls made so far: fewer than checks once concurrent checks shared calls."""
        return self._checks.batches

    @property
    def degraded(self) -> bool:
        return self._degraded

    @property
    def breaker_state(self) -> str:
        return str(self._breaker.current_state)

    async def close(self) -> None:
        await self._client.aclose()
