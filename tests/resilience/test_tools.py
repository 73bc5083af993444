"""The tools the fault matrix and the bench rely on: the load generator and the TCP proxy."""

from __future__ import annotations

import json
import socket
import socketserver
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from services.loadgen import LoadConfig, LoadGenerator, percentile
from tests.resilience.harness import TcpProxy


def gateway_double(request: httpx.Request) -> httpx.Response:
    """Accepts events whose sequence detail is even; refuses odd ones with 503 UNAVAILABLE."""
    body: dict[str, Any] = json.loads(request.content)
    assert request.headers["authorization"] == "Bearer test-key"
    if request.url.path == "/v1/events:batchAppend":
        results = [
            {"index": i, "receipt": {"eventId": e["eventId"]}}
            if int(e["details"]["sequence"]) % 2 == 0
            else {"index": i, "error": {"code": 3, "details": [{"reason": "INVALID_EVENT"}]}}
            for i, e in enumerate(body["events"])
        ]
        return httpx.Response(200, json={"results": results})
    if int(body["details"]["sequence"]) % 2 == 0:
        return httpx.Response(200, json={"receipt": {"eventId": body["eventId"], "state": "STATE_ACCEPTED"}})
    return httpx.Response(503, json={"code": 14, "details": [{"reason": "CIRCUIT_OPEN"}]})


async def test_load_generator_records_every_outcome_with_its_receipt_or_reason() -> None:
    config = LoadConfig(url="http://gateway.test", api_key="test-key", rate=200, seconds=0.1, connections=4)
    result = await LoadGenerator(config, transport=httpx.MockTransport(gateway_double)).run()
    summary = result.summary()
    assert summary["requests"] == summary["events"] == 20
    assert summary["acknowledged"] == 10
    assert summary["errors"] == {"503 CIRCUIT_OPEN": 10}
    assert summary["error_rate"] == 0.5
    assert all(o.receipt == {"eventId": o.event_id, "state": "STATE_ACCEPTED"} for o in result.acknowledged)
    assert len({o.event_id for o in result.outcomes}) == 20


async def test_load_generator_batches_and_reads_each_result() -> None:
    config = LoadConfig(
        url="http://gateway.test", api_key="test-key", rate=100, seconds=0.05, batch_size=4, connections=2
    )
    result = await LoadGenerator(config, transport=httpx.MockTransport(gateway_double)).run()
    summary = result.summary()
    assert summary["requests"] == 5 and summary["events"] == 20
    assert summary["acknowledged"] == 10
    assert summary["errors"] == {"200 INVALID_EVENT": 10}


async def test_load_generator_stops_when_asked() -> None:
    config = LoadConfig(url="http://gateway.test", api_key="test-key", rate=1000, seconds=60)
    result = await LoadGenerator(config, transport=httpx.MockTransport(gateway_double)).run(
        should_stop=lambda: True
    )
    assert result.outcomes == []


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.50) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile([], 0.5) == 0.0


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(1024):
            self.request.sendall(data)


@pytest.fixture
def echo_server() -> Iterator[int]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def _echo_through(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"ping")
        return sock.recv(16)


def test_proxy_forwards_refuses_while_down_and_recovers(echo_server: int) -> None:
    proxy = TcpProxy(upstream_host="127.0.0.1", upstream_port=echo_server).start()
    try:
        assert _echo_through(proxy.port) == b"ping"
        held = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        held.sendall(b"a")
        assert held.recv(16) == b"a"
        proxy.down()
        try:
            leftover = held.recv(16)
        except ConnectionResetError:
            leftover = b""
        assert leftover == b"", "an open connection survived the outage"
        held.close()
        with pytest.raises(ConnectionRefusedError):
            _echo_through(proxy.port)
        proxy.up()
        assert _echo_through(proxy.port) == b"ping"
    finally:
        proxy.close()
