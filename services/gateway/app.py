"""The HTTP/JSON gateway: the only door from outside.

This module wires the ASGI application and runs it under uvicorn.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import grpc
import uvicorn
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from services.runtime import auth
from services.runtime.clients import ChannelFactory
from services.runtime.config import SERVICES, Settings, ensure_dev_secret
from services.runtime.logs import configure_logging
from services.runtime.metrics import ServiceMetrics
from services.runtime.tracing import configure_tracing, shutdown_tracing

log = logging.getLogger("awareness.gateway")


@dataclass
class GatewayState:
    settings: Settings
    metrics: ServiceMetrics
    channels: ChannelFactory
    health_stubs: dict[str, health_pb2_grpc.HealthStub] = field(default_factory=dict)


def _state(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.gateway
    return state


async def live(_request: Request) -> Response:
    return JSONResponse({"status": "live"})


async def _backend_health(state: GatewayState, service: str) -> str:
    stub = state.health_stubs.get(service)
    if stub is None:
        stub = health_pb2_grpc.HealthStub(state.channels.channel(service))
        state.health_stubs[service] = stub
    try:
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
    except grpc.aio.AioRpcError as exc:
        return f"UNREACHABLE ({exc.code().name})"
    except Exception as exc:  # breaker open or channel failure
        return f"UNREACHABLE ({type(exc).__name__})"
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


async def dependencies(request: Request) -> Response:
    state = _state(request)
    statuses = await asyncio.gather(*(_backend_health(state, s) for s in SERVICES))
    breakers = state.channels.breaker_states()
    body = {
        service: {"health": status, "breaker": breakers.get(service, "closed")}
        for service, status in zip(SERVICES, statuses, strict=True)
    }
    return JSONResponse(body)


async def ready(request: Request) -> Response:
    state = _state(request)
    statuses = await asyncio.gather(*(_backend_health(state, s) for s in SERVICES))
    not_ready = [s for s, status in zip(SERVICES, statuses, strict=True) if status != "SERVING"]
    if not_ready:
        return JSONResponse({"status": "not ready", "not_serving": not_ready}, status_code=503)
    return JSONResponse({"status": "ready"})


async def metrics(request: Request) -> Response:
    return Response(generate_latest(_state(request).metrics.registry), media_type=CONTENT_TYPE_LATEST)


def create_gateway(settings: Settings) -> Starlette:
    gateway_metrics = ServiceMetrics("gateway")
    channels = ChannelFactory(
        targets=dict(settings.targets),
        identity=lambda: auth.current_principal() or auth.Principal.for_service("gateway"),
        internal_secret=settings.internal_secret,
        timeout_seconds=settings.call_timeout_seconds,
        attempts=settings.retry_attempts,
        breaker_fail_max=settings.breaker_fail_max,
        breaker_reset_seconds=settings.breaker_reset_seconds,
        metrics=gateway_metrics,
    )
    state = GatewayState(settings=settings, metrics=gateway_metrics, channels=channels)

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        yield
        await channels.close()

    app = Starlette(
        routes=[
            Route("/health/live", live),
            Route("/health/ready", ready),
            Route("/health/dependencies", dependencies),
            Route("/metrics", metrics),
        ],
        lifespan=lifespan,
    )
    app.state.gateway = state
    return app


def run_gateway(settings: Settings) -> None:
    if not settings.internal_secret:
        from dataclasses import replace

        settings = replace(settings, internal_secret=ensure_dev_secret(settings.data_dir / "internal-secret"))
    configure_logging(service="gateway", level=settings.log_level)
    configure_tracing(service="gateway", exporter=settings.traces_exporter)
    app = create_gateway(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.grpc_port,
        log_config=None,
        server_header=False,
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds),
        timeout_keep_alive=5,
    )
    try:
        uvicorn.Server(config).run()
    finally:
        shutdown_tracing()
