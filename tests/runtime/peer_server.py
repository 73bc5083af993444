"""A service run as a real process by the load-balancing tests: it says which server and
which client connection answered, and can hold a call open."""

from __future__ import annotations

import asyncio
import os
import sys

import grpc

from services.runtime.config import load_settings
from services.runtime.server import ServiceApp, ServiceContext, serve
from tests.support.servers import unary_app


def create_app(context: ServiceContext) -> ServiceApp:
    port = str(context.settings.grpc_port)

    async def who(_request: bytes, servicer_context: grpc.aio.ServicerContext) -> bytes:
        # context.peer() is the client's address and ephemeral port: one per connection.
        return f"{port}|{os.getpid()}|{servicer_context.peer()}".encode()

    async def sleep(request: bytes, servicer_context: grpc.aio.ServicerContext) -> bytes:
        peer = servicer_context.peer()
        await asyncio.sleep(float(request.decode() or "1"))
        return f"{port}|{os.getpid()}|{peer}".encode()

    return unary_app("test.Peer", {"Who": who, "Sleep": sleep})


if __name__ == "__main__":
    serve(load_settings("test"), create_app, with_database=False)
    sys.exit(0)
