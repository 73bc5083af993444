"""The gateway's httptools protocol caps request heads at 16 KiB (431), whatever the body's size."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from services.gateway.protocol import MAX_HEAD_BYTES, BoundedHttpToolsProtocol


async def echo_length(request: Request) -> PlainTextResponse:
    return PlainTextResponse(str(len(await request.body())))


@pytest.fixture
async def server_port() -> AsyncIterator[int]:
    app = Starlette(routes=[Route("/echo", echo_length, methods=["POST"])])
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    config = uvicorn.Config(app, host="127.0.0.1", port=port, http=BoundedHttpToolsProtocol, log_config=None)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    for _ in range(200):
        if server.started:
            break
        await asyncio.sleep(0.01)
    yield port
    server.should_exit = True
    await asyncio.wait_for(task, timeout=5)


async def exchange(port: int, raw: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout=5)  # until the server closes
    except ConnectionResetError:
        return b""
    finally:
        writer.close()


def request(*, header_bytes: int, body: bytes = b"{}", close: bool = True) -> bytes:
    head = (
        b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + b"X-Padding: "
        + b"a" * header_bytes
        + b"\r\n"
        + f"Content-Length: {len(body)}\r\n".encode()
        + (b"Connection: close\r\n" if close else b"")
        + b"\r\n"
    )
    return head + body


async def test_a_head_under_the_cap_is_served(server_port: int) -> None:
    answer = await exchange(server_port, request(header_bytes=MAX_HEAD_BYTES - 200))
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"2")


@pytest.mark.parametrize("header_bytes", [MAX_HEAD_BYTES + 10, 2 * 1024 * 1024])
async def test_a_head_over_the_cap_gets_431_and_the_connection_closes(
    server_port: int, header_bytes: int
) -> None:
    answer = await exchange(server_port, request(header_bytes=header_bytes))
    # A client still sending may see the reset instead of the answer; never a 200.
    assert answer == b"" or answer.startswith(b"HTTP/1.1 431")


async def test_a_large_body_behind_a_small_head_is_not_mistaken_for_a_head(server_port: int) -> None:
    body = b"x" * (1024 * 1024)
    answer = await exchange(server_port, request(header_bytes=100, body=body))
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(str(len(body)).encode())


async def test_pipelined_requests_each_start_a_fresh_count(server_port: int) -> None:
    # Three heads of 10 KiB each on one connection: each is under the cap on its own.
    raw = b"".join(request(header_bytes=10 * 1024, close=False) for _ in range(2)) + request(
        header_bytes=10 * 1024
    )
    answer = await exchange(server_port, raw)
    assert answer.count(b"HTTP/1.1 200") == 3
