"""A one-method service run as a real process by the SIGTERM drain test."""

from __future__ import annotations

import asyncio
import sys

import grpc

from services.runtime.config import load_settings
from services.runtime.server import ServiceApp, ServiceContext, serve
from tests.support.servers import unary_app


def create_app(_context: ServiceContext) -> ServiceApp:
    async def sleep(request: bytes, _context: grpc.aio.ServicerContext) -> bytes:
        await asyncio.sleep(float(request.decode() or "1"))
        return b"done:" + request

    return unary_app("test.Slow", {"Sleep": sleep})


if __name__ == "__main__":
    serve(load_settings("test"), create_app, with_database=False)
    sys.exit(0)
