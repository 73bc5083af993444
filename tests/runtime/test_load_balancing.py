"""Calls between services are balanced per call, and connections do not live forever.

Real server processes (``tests/runtime/peer_server.py`` through ``serve``) on 127.0.0.1; each
answer names the server port that handled the call and the client connection it came on.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.runtime import auth
from services.runtime.clients import CHANNEL_OPTIONS, ChannelFactory
from services.runtime.config import ConfigError, load_settings
from services.runtime.identity import channel_options
from services.runtime.server import connection_age_options
from tests.conftest import IDENTITY_ENV, free_port
from tests.support.servers import identity_of, mtls_channel

WHO = "/test.Peer/Who"
SLEEP = "/test.Peer/Sleep"


@dataclass
class Peer:
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


class StartPeers(Protocol):
    def __call__(self, count: int = 1, **env: str) -> list[Peer]: ...


def _wait_serving(peer: Peer, deadline: float) -> None:
    while time.monotonic() < deadline:
        if peer.proc.poll() is not None:
            raise AssertionError(f"peer server on {peer.port} exited with {peer.proc.returncode}")
        with grpc.secure_channel(
            peer.address, identity_of("test").channel_credentials(), options=channel_options("test")
        ) as probe:
            try:
                health_pb2_grpc.HealthStub(probe).Check(health_pb2.HealthCheckRequest(), timeout=0.5)
                return
            except grpc.RpcError:
                time.sleep(0.1)
    raise AssertionError(f"peer server on {peer.port} did not start")


@pytest.fixture
def peers(tmp_path: Path) -> Iterator[StartPeers]:
    started: list[Peer] = []

    def start(count: int = 1, **env: str) -> list[Peer]:
        batch: list[Peer] = []
        for _ in range(count):
            port = free_port()
            log = (tmp_path / f"peer-{port}.log").open("wb")
            proc = subprocess.Popen(
                [sys.executable, "-m", "tests.runtime.peer_server"],
                env={
                    **os.environ,
                    "AWARENESS_DATA_DIR": str(tmp_path),
                    **IDENTITY_ENV,
                    "AWARENESS_HOST": "127.0.0.1",
                    "AWARENESS_GRPC_PORT": str(port),
                    "AWARENESS_METRICS_PORT": "0",
                    "AWARENESS_SHUTDOWN_GRACE_SECONDS": "1",
                    **env,
                },
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            log.close()
            batch.append(Peer(port=port, proc=proc))
        started.extend(batch)
        deadline = time.monotonic() + 30
        for peer in batch:
            _wait_serving(peer, deadline)
        return batch

    yield start
    for peer in started:
        if peer.proc.poll() is None:
            peer.proc.send_signal(signal.SIGTERM)
    for peer in started:
        try:
            peer.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            peer.proc.kill()
            peer.proc.wait()


def factory_for(target: str, **overrides: Any) -> ChannelFactory:
    options: dict[str, Any] = {
        "targets": {"test": target},
        "service": "gateway",
        "identity": auth.Principal.for_service("gateway"),
        "mtls": identity_of("gateway"),
        "timeout_seconds": 5.0,
        "attempts": 1,
        "breaker_fail_max": 5,
        "breaker_reset_seconds": 1.0,
    }
    options.update(overrides)
    return ChannelFactory(**options)


def parse(answer: bytes) -> tuple[int, str]:
    """(server port, client connection) of one answer."""
    port, _pid, peer = answer.decode().split("|", 2)
    return int(port), peer


async def who(factory: ChannelFactory) -> tuple[int, str]:
    return parse(await factory.channel("test").unary_unary(WHO)(b""))


def multi_address_target(*peers: Peer) -> str:
    # gRPC's static resolver: one name, several addresses, as a headless Service's DNS answer gives.
    return "ipv4:" + ",".join(peer.address for peer in peers)


# --- settings ----------------------------------------------------------------------------------


def test_connection_age_is_off_by_default_and_read_from_the_environment() -> None:
    default = load_settings("test", IDENTITY_ENV)
    assert default.grpc_max_connection_age_seconds == 0
    assert connection_age_options(default) == []
    configured = load_settings(
        "test",
        {
            **IDENTITY_ENV,
            "AWARENESS_GRPC_MAX_CONNECTION_AGE_SECONDS": "300",
            "AWARENESS_GRPC_MAX_CONNECTION_AGE_GRACE_SECONDS": "1800",
        },
    )
    assert dict(connection_age_options(configured)) == {
        "grpc.max_connection_age_ms": 300_000,
        "grpc.max_connection_age_grace_ms": 1_800_000,
    }
    # The grace defaults to the longest deadline in the suite (TrainModel from the retraining job).
    only_age = load_settings(
        "test",
        {
            **IDENTITY_ENV,
            "AWARENESS_GRPC_MAX_CONNECTION_AGE_SECONDS": "60",
        },
    )
    assert dict(connection_age_options(only_age))["grpc.max_connection_age_grace_ms"] == 1_800_000


@pytest.mark.parametrize("value", ["-1", "soon"])
def test_a_bad_connection_age_is_refused(value: str) -> None:
    with pytest.raises(ConfigError, match="AWARENESS_GRPC_MAX_CONNECTION_AGE_SECONDS"):
        load_settings("test", {"AWARENESS_GRPC_MAX_CONNECTION_AGE_SECONDS": value})


def test_channels_ask_for_round_robin_and_ignore_resolver_service_configs() -> None:
    options = dict(CHANNEL_OPTIONS)
    config = json.loads(str(options["grpc.service_config"]))
    assert config == {"loadBalancingConfig": [{"round_robin": {}}]}
    assert options["grpc.service_config_disable_resolution"] == 1


# --- round robin -------------------------------------------------------------------------------


async def test_unary_calls_are_spread_over_every_address_of_a_target(peers: StartPeers) -> None:
    first, second = peers(2)
    factory = factory_for(multi_address_target(first, second))
    try:
        # round_robin connects to every address; until both connections are READY, calls go to
        # the ready one, so warm up until both servers have answered (bounded).
        seen: set[int] = set()
        deadline = time.monotonic() + 10
        while seen != {first.port, second.port} and time.monotonic() < deadline:
            seen.add((await who(factory))[0])
        assert seen == {first.port, second.port}

        answers = [await who(factory) for _ in range(40)]
        per_server = Counter(port for port, _ in answers)
        assert set(per_server) == {first.port, second.port}
        assert abs(per_server[first.port] - per_server[second.port]) <= 2, per_server
        # One long-lived connection per server, shared by every call: calls are balanced, not connections.
        connections = {port: {peer for p, peer in answers if p == port} for port in per_server}
        assert all(len(peer_set) == 1 for peer_set in connections.values()), connections
    finally:
        await factory.close()


async def test_without_round_robin_every_call_sticks_to_one_server(peers: StartPeers) -> None:
    """The problem being fixed: gRPC's default policy (pick_first) on the same two addresses."""
    first, second = peers(2)
    async with mtls_channel(multi_address_target(first, second), server="test", caller="gateway") as channel:
        call = channel.unary_unary(WHO)
        answers = [parse(await call(b"", timeout=5)) for _ in range(20)]
    assert len({port for port, _ in answers}) == 1


async def test_a_dead_address_is_skipped_without_failing_calls(peers: StartPeers) -> None:
    (alive,) = peers(1)
    dead = free_port()  # nothing listens there: a pod that went away before DNS caught up
    factory = factory_for(f"ipv4:127.0.0.1:{dead},{alive.address}")
    try:
        answers = [await who(factory) for _ in range(20)]
        assert {port for port, _ in answers} == {alive.port}
        assert factory.breaker_states()["test"] == "closed"
    finally:
        await factory.close()


async def test_a_single_address_target_keeps_one_connection(peers: StartPeers) -> None:
    (only,) = peers(1)
    factory = factory_for(only.address)  # what `awareness up` uses
    try:
        answers = [await who(factory) for _ in range(10)]
        assert {port for port, _ in answers} == {only.port}
        assert len({peer for _, peer in answers}) == 1
    finally:
        await factory.close()


# --- maximum connection age --------------------------------------------------------------------


async def test_max_connection_age_makes_clients_reconnect(peers: StartPeers) -> None:
    (aged,) = peers(1, AWARENESS_GRPC_MAX_CONNECTION_AGE_SECONDS="0.5")
    (unaged,) = peers(1)  # the default: no maximum age
    aged_factory = factory_for(aged.address)
    unaged_factory = factory_for(unaged.address)
    try:
        aged_connections: list[str] = []
        unaged_connections: set[str] = set()
        started = time.monotonic()
        # Bounded: gRPC jitters the age by +/-10 %, so 3 connections take about 1 s.
        while len(set(aged_connections)) < 3 and time.monotonic() - started < 15:
            # Every call must succeed: a GOAWAY moves new calls to a new connection, it fails none.
            aged_connections.append((await who(aged_factory))[1])
            unaged_connections.add((await who(unaged_factory))[1])
            await asyncio.sleep(0.05)
        elapsed = time.monotonic() - started
        assert len(set(aged_connections)) >= 3, aged_connections
        # The connection changes only when the age has passed, not on every call.
        assert len(aged_connections) > 2 * len(set(aged_connections))
        assert elapsed >= 0.9  # two ages (0.5 s, -10 % jitter) before the third connection
        assert len(unaged_connections) == 1, "without a maximum age the connection lives on"
    finally:
        await aged_factory.close()
        await unaged_factory.close()


async def test_a_call_longer_than_the_age_finishes_within_the_grace(peers: StartPeers) -> None:
    (generous,) = peers(
        1,
        AWARENESS_GRPC_MAX_CONNECTION_AGE_SECONDS="0.5",
        AWARENESS_GRPC_MAX_CONNECTION_AGE_GRACE_SECONDS="10",
    )
    (stingy,) = peers(
        1,
        AWARENESS_GRPC_MAX_CONNECTION_AGE_SECONDS="0.5",
        AWARENESS_GRPC_MAX_CONNECTION_AGE_GRACE_SECONDS="0.2",
    )
    generous_factory = factory_for(generous.address)
    stingy_factory = factory_for(stingy.address)
    try:
        # A 2 s call opened on a fresh connection outlives its 0.5 s age: the generous grace lets
        # it finish, a grace shorter than the call cuts it. This is why the chart's grace covers
        # the longest deadline in the suite.
        slow_ok = generous_factory.channel("test").unary_unary(SLEEP)(b"2", timeout=10)
        slow_cut = stingy_factory.channel("test").unary_unary(SLEEP)(b"2", timeout=10)
        results: tuple[Any, Any] = await asyncio.gather(slow_ok, slow_cut, return_exceptions=True)
        ok, cut = results
        assert isinstance(ok, bytes) and parse(ok)[0] == generous.port
        assert isinstance(cut, grpc.aio.AioRpcError), cut
        assert cut.code() == grpc.StatusCode.UNAVAILABLE
        # The channel reconnects by itself for the next call.
        assert (await who(stingy_factory))[0] == stingy.port
    finally:
        await generous_factory.close()
        await stingy_factory.close()
