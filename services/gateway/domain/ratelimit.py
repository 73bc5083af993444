"""Sliding-window rate limits: the arithmetic shared by the Redis and in-process limiters.

An authenticated request is checked against up to three scopes (principal, client IP,
global); a refused credential only against its address's ``auth_failures`` scope, so bad
keys never spend the budget valid keys rely on. A request is admitted only if every scope
has room, and only an admitted request is recorded, so a client hammering past its limit
does not push its own window forward. The window is a sliding log: a request counts until
exactly ``window`` after it was made.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

WINDOW_SECONDS: Final = 60.0


@dataclass(frozen=True, slots=True)
class Scope:
    name: str  # "principal", "ip", "global", "auth_failures"
    key: str
    limit: int


@dataclass(frozen=True, slots=True)
class ScopeState:
    scope: Scope
    count_before: int  # requests in the window before this one
    reset_seconds: float  # until the oldest counted request leaves the window (0 if none)


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset_seconds: int
    retry_after_seconds: int
    rejected_scope: str | None
    scope: str | None  # the scope reported in the headers (the tightest)


def decide(states: Sequence[ScopeState], *, window_seconds: float = WINDOW_SECONDS) -> Decision:
    """Admit or refuse, and the header values for the tightest scope."""
    if not states:
        return Decision(True, 0, 0, 0, 0, None, None)
    rejected = next((s for s in states if s.count_before >= s.scope.limit), None)
    if rejected is not None:
        retry = max(1, math.ceil(rejected.reset_seconds))
        return Decision(
            allowed=False,
            limit=rejected.scope.limit,
            remaining=0,
            reset_seconds=retry,
            retry_after_seconds=retry,
            rejected_scope=rejected.scope.name,
            scope=rejected.scope.name,
        )

    def remaining(state: ScopeState) -> int:
        return max(0, state.scope.limit - state.count_before - 1)

    tightest = min(states, key=lambda s: (remaining(s), s.scope.limit))
    reset = tightest.reset_seconds if tightest.count_before else window_seconds
    return Decision(
        allowed=True,
        limit=tightest.scope.limit,
        remaining=remaining(tightest),
        reset_seconds=max(0, math.ceil(reset)),
        retry_after_seconds=0,
        rejected_scope=None,
        scope=tightest.scope.name,
    )


class InProcessLimiter:
    """The same sliding log in memory: the default without Redis, and the fallback when it fails."""

    def __init__(
        self, *, window_seconds: float = WINDOW_SECONDS, clock: Callable[[], float] = time.monotonic
    ):
        self._window = window_seconds
        self._clock = clock
        self._logs: dict[str, deque[float]] = {}
        self._lock = threading.Lock()
        self._checks = 0

    def check(self, scopes: Sequence[Scope]) -> Decision:
        with self._lock:
            now = self._clock()
            states: list[ScopeState] = []
            for scope in scopes:
                log = self._logs.setdefault(scope.key, deque())
                while log and log[0] <= now - self._window:
                    log.popleft()
                reset = (log[0] + self._window - now) if log else 0.0
                states.append(ScopeState(scope=scope, count_before=len(log), reset_seconds=reset))
            decision = decide(states, window_seconds=self._window)
            if decision.allowed:
                for scope in scopes:
                    self._logs[scope.key].append(now)
            self._checks += 1
            if self._checks % 1024 == 0:
                self._evict(now)
            return decision

    def _evict(self, now: float) -> None:
        for key in [k for k, log in self._logs.items() if not log or log[-1] <= now - self._window]:
            del self._logs[key]
