"""The load generator (bench/loadgen.py) that `make bench` and the fault matrix drive the gateway with."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from bench.loadgen import (
    LoadConfig,
    LoadGenerator,
    RawHttpClient,
    TransportError,
    build_parser,
    make_event,
    percentile,
)


def gateway_double(request: httpx.Request) -> httpx.Response:
    """Accepts events whose source_event_id detail is even; refuses odd ones with 503 UNAVAILABLE."""
    body: dict[str, Any] = json.loads(request.content)
    assert request.headers["authorization"] == "Bearer test-key"
    if request.url.path == "/v1/events:batchAppend":
        results = [
            {"index": i, "receipt": {"eventId": e["eventId"]}}
            if int(e["details"]["source_event_id"]) % 2 == 0
            else {"index": i, "error": {"code": 3, "details": [{"reason": "INVALID_EVENT"}]}}
            for i, e in enumerate(body["events"])
        ]
        return httpx.Response(200, json={"results": results})
    if int(body["details"]["source_event_id"]) % 2 == 0:
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


def test_events_spread_over_the_population_of_a_namespace() -> None:
    config = LoadConfig(url="http://gateway.test", api_key="k", rate=1, seconds=1, namespace="b1-r500-")
    assert config.subjects == 5000
    assert make_event(5003, namespace="b1-r500-")["subject"] == "b1-r500-user-3@example.org"
    assert build_parser().parse_args(["--url=u", "--api-key=k"]).subjects == 5000


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.50) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile([], 0.5) == 0.0


# --- the load generator's own HTTP/1.1 client -----------------------------------------------


class _HttpDouble:
    """A tiny HTTP/1.1 server: answers by path, counts connections, can close idle ones."""

    def __init__(self) -> None:
        self.connections = 0
        self.requests: list[tuple[str, bytes, dict[str, str]]] = []
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def close_idle(self) -> None:
        for writer in self.writers:
            writer.close()
        self.writers.clear()

    async def stop(self) -> None:
        await self.close_idle()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            while request_line := await reader.readline():
                headers: dict[str, str] = {}
                while (line := await reader.readline()) != b"\r\n":
                    name, _, value = line.decode().partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                path = request_line.split()[1].decode()
                self.requests.append((path, body, headers))
                if path == "/chunked":
                    writer.write(
                        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                        b'7\r\n{"a": 1\r\n1\r\n}\r\n0\r\n\r\n'
                    )
                elif path == "/close":
                    writer.write(
                        b"HTTP/1.1 503 Unavailable\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
                    )
                    await writer.drain()
                    writer.close()
                    return
                elif path == "/slow":
                    await asyncio.sleep(5)
                else:
                    answer = json.dumps({"path": path, "echo": json.loads(body)}).encode()
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(answer) + answer)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


async def test_raw_client_reuses_connections_and_reads_every_framing() -> None:
    server = _HttpDouble()
    port = await server.start()
    client = RawHttpClient(
        f"http://127.0.0.1:{port}", headers={"Authorization": "Bearer k"}, timeout_seconds=2
    )
    try:
        for n in range(3):
            status, body = await client.post("/v1/events", json.dumps({"n": n}).encode())
            assert (status, json.loads(body)) == (200, {"path": "/v1/events", "echo": {"n": n}})
        assert server.connections == 1  # keep-alive
        headers = server.requests[0][2]
        assert headers["authorization"] == "Bearer k"
        assert headers["content-type"] == "application/json"
        assert headers["host"] == f"127.0.0.1:{port}"
        assert await client.post("/chunked", b"{}") == (200, b'{"a": 1}')
        assert await client.post("/close", b"{}") == (503, b"{}")
        assert await client.post("/v1/events", b"{}") == (200, b'{"path": "/v1/events", "echo": {}}')
        assert server.connections == 2  # a new one after "Connection: close"
        # The server drops an idle connection: the next request goes out on a fresh one.
        await server.close_idle()
        await asyncio.sleep(0.05)
        assert (await client.post("/v1/events", b"{}"))[0] == 200
        assert server.connections == 3
    finally:
        await client.aclose()
        await server.stop()


async def test_raw_client_names_failures_as_httpx_did() -> None:
    server = _HttpDouble()
    port = await server.start()
    client = RawHttpClient(f"http://127.0.0.1:{port}", headers={}, timeout_seconds=0.3)
    try:
        with pytest.raises(TransportError) as timeout:
            await client.post("/slow", b"{}")
        assert timeout.value.name == "ReadTimeout"
    finally:
        await client.aclose()
        await server.stop()
    refused = RawHttpClient(f"http://127.0.0.1:{port}", headers={}, timeout_seconds=1)
    with pytest.raises(TransportError) as connect:
        await refused.post("/v1/events", b"{}")
    assert connect.value.name == "ConnectError"


async def test_load_generator_drives_a_real_socket_with_the_raw_client() -> None:
    server = _HttpDouble()
    port = await server.start()
    try:
        config = LoadConfig(url=f"http://127.0.0.1:{port}", api_key="k", rate=200, seconds=0.1, connections=3)
        result = await LoadGenerator(config).run()
    finally:
        await server.stop()
    summary = result.summary()
    assert summary["requests"] == summary["acknowledged"] == 20
    assert server.connections <= 3
    assert {path for path, _, _ in server.requests} == {"/v1/events"}
