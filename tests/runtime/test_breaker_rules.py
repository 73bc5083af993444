"""Which failures open a breaker that every caller of a peer shares."""

from __future__ import annotations

import asyncio

import grpc
import pybreaker
import pytest

from services.runtime.clients import new_breaker


def _fail_with(breaker: pybreaker.CircuitBreaker, error: BaseException) -> None:
    with pytest.raises(type(error)), breaker.calling():
        raise error


def test_a_cancelled_call_is_no_evidence_against_the_peer() -> None:
    breaker = new_breaker(target="ingest", fail_max=2, reset_seconds=60)
    for _ in range(5):  # a client that gives up on purpose, again and again
        _fail_with(breaker, asyncio.CancelledError())
    assert breaker.current_state == pybreaker.STATE_CLOSED


def test_an_unavailable_peer_opens_the_breaker() -> None:
    breaker = new_breaker(target="ingest", fail_max=2, reset_seconds=60)
    unavailable = grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata())
    _fail_with(breaker, unavailable)
    with pytest.raises((grpc.aio.AioRpcError, pybreaker.CircuitBreakerError)), breaker.calling():
        raise unavailable
    assert breaker.current_state == pybreaker.STATE_OPEN
