"""The HTTP/JSON gateway: the only door from outside.

Routes, permissions and the OpenAPI document are built at start-up from the contracts'
descriptor set. Each request is authenticated (API key or JWT), rate limited, checked for
the route's permission, transcoded to protobuf and sent to the owning service with the
principal in signed metadata; the answer comes back as proto3 JSON, or as a
google.rpc.Status JSON body with the grpc-gateway status mapping.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import uvicorn
from awareness.ingest.v1 import ingest_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry import trace
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp

from services.gateway import authn
from services.gateway.admission import Admission, RefusedError, rate_limited
from services.gateway.appends import AppendCoalescer
from services.gateway.config import GatewayConfig, load_gateway_config
from services.gateway.domain import gophish
from services.gateway.domain.descriptors import (
    HttpRoute,
    build_routes,
    collect_comments,
    door_methods,
    import_generated_modules,
    load_descriptor_set,
)
from services.gateway.domain.openapi import build_openapi
from services.gateway.domain.ratelimit import Decision
from services.gateway.domain.transcode import RequestError, strict_json_loads
from services.gateway.door import GrpcDoor, create_door_server
from services.gateway.middleware import ROUTE_KEY, EdgeMiddleware
from services.gateway.protocol import BoundedHttpToolsProtocol
from services.gateway.ratelimit import LocalRateLimiter, RateLimiter, RedisRateLimiter
from services.gateway.responses import (
    awareness_error_response,
    error_response,
    rate_limit_headers,
    rpc_error_response,
)
from services.gateway.transcoder import Backend, MediaTypeError, Router, parse_http_request, response_payload
from services.portal.app import create_portal
from services.portal.config import load_portal_config
from services.runtime import audit, auth, db, identity, migrations, recovery
from services.runtime.audit import AuditRecorder
from services.runtime.clients import ChannelFactory, new_breaker
from services.runtime.config import SERVICE_NAMES, SERVICES, Settings, with_identity
from services.runtime.errors import AwarenessError
from services.runtime.identity import MtlsFiles
from services.runtime.logs import configure_logging
from services.runtime.metrics import ServiceMetrics
from services.runtime.process import run_main, tune_garbage_collector
from services.runtime.tracing import configure_tracing, shutdown_tracing
from services.runtime.workers import reuse_port_socket

log = logging.getLogger("awareness.gateway")

TIMESTAMP_RPC = "/awareness.signing.v1.SigningService/Timestamp"
APPEND_EVENT_RPC = "/awareness.ingest.v1.IngestService/AppendEvent"
APPEND_EVENTS_RPC = "/awareness.ingest.v1.IngestService/AppendEvents"
TIMESTAMP_QUERY = "application/timestamp-query"
TIMESTAMP_REPLY = "application/timestamp-reply"
GOPHISH_PRINCIPAL = auth.Principal(subject="integration:gophish", roles=frozenset({"integration"}))
# Signs calls made outside any request (health checks): no roles, so no permissions.
ANONYMOUS_GATEWAY = auth.Principal(subject="service:gateway", roles=frozenset())


@dataclass
class GatewayMetrics:
    base: ServiceMetrics
    ratelimit_fallback: Counter
    ratelimit_rejections: Counter
    auth_failures: Counter
    append_events_per_call: Histogram

    @classmethod
    def create(cls) -> GatewayMetrics:
        base = ServiceMetrics("gateway")
        return cls(
            base=base,
            ratelimit_fallback=base.counter(
                "ratelimit_fallback_total", "Rate-limit decisions taken in process because Redis failed"
            ),
            ratelimit_rejections=base.counter(
                "ratelimit_rejections_total", "Requests refused with 429, by scope", ["scope"]
            ),
            auth_failures=base.counter(
                "auth_failures_total", "Requests refused with 401, by reason", ["reason"]
            ),
            append_events_per_call=base.histogram(
                "append_events_per_call",
                "Single events per call to ingest: concurrent POST /v1/events of one principal share one",
                buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500),
            ),
        )


@dataclass
class GatewayState:
    settings: Settings
    config: GatewayConfig
    metrics: GatewayMetrics
    channels: ChannelFactory
    router: Router
    backend: Backend
    openapi: dict[str, Any]
    admission: Admission
    engine: Engine
    sessions: sessionmaker[Session]
    routes_by_rpc: dict[str, HttpRoute]
    door: GrpcDoor
    appends: AppendCoalescer | None  # None: every append is its own call
    health_stubs: dict[str, health_pb2_grpc.HealthStub] = field(default_factory=dict)
    health_channels: list[grpc.aio.Channel] = field(default_factory=list)

    async def close(self) -> None:
        await self.channels.close()
        for channel in self.health_channels:
            await channel.close()
        self.health_channels.clear()
        self.health_stubs.clear()
        await self.admission.limiter.close()
        self.engine.dispose()


def _state(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.gateway
    return state


def _mark_route(request: Request, template: str) -> None:
    request.scope.setdefault("state", {})[ROUTE_KEY] = template


# --- health and metrics -------------------------------------------------------------------


async def live(request: Request) -> Response:
    _mark_route(request, "/health/live")
    return JSONResponse({"status": "live"})


async def _backend_health(state: GatewayState, service: str) -> str:
    stub = state.health_stubs.get(service)
    if stub is None:
        # A plain channel: probes must not trip (or be blocked by) the API calls' breaker.
        channel = state.channels.probe_channel(service)
        state.health_channels.append(channel)
        stub = health_pb2_grpc.HealthStub(channel)
        state.health_stubs[service] = stub
    try:
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAMES[service]), timeout=1.0)
    except grpc.aio.AioRpcError as exc:
        return f"UNREACHABLE ({exc.code().name})"
    except Exception as exc:  # breaker open or channel failure
        return f"UNREACHABLE ({type(exc).__name__})"
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


async def _key_store_ok(state: GatewayState) -> bool:
    return await db.run_db(db.ping, state.engine)


async def dependencies(request: Request) -> Response:
    _mark_route(request, "/health/dependencies")
    return JSONResponse(await dependency_report(_state(request)))


async def dependency_report(state: GatewayState) -> dict[str, Any]:
    """Each service's health and breaker, the key store and the rate limiter, as this replica sees
    them (/health/dependencies, and the portal's health page)."""
    statuses, key_store = await asyncio.gather(
        asyncio.gather(*(_backend_health(state, s) for s in SERVICES)), _key_store_ok(state)
    )
    breakers = state.channels.breaker_states()
    body: dict[str, Any] = {
        service: {"health": status, "breaker": breakers.get(service, "closed")}
        for service, status in zip(SERVICES, statuses, strict=True)
    }
    body["key_store"] = {"health": "SERVING" if key_store else "UNREACHABLE"}
    limiter = state.admission.limiter
    if isinstance(limiter, RedisRateLimiter):
        body["rate_limiter"] = {
            "backend": "redis",
            "degraded": limiter.degraded,
            "breaker": limiter.breaker_state,
        }
    else:
        body["rate_limiter"] = {"backend": "in-process", "degraded": False, "breaker": "n/a"}
    return body


async def ready(request: Request) -> Response:
    _mark_route(request, "/health/ready")
    state = _state(request)
    statuses, key_store = await asyncio.gather(
        asyncio.gather(*(_backend_health(state, s) for s in SERVICES)), _key_store_ok(state)
    )
    degraded = [s for s, status in zip(SERVICES, statuses, strict=True) if status != "SERVING"]
    # Readiness is the gateway's own: with its key store it can authenticate and answer every
    # route (a down backend gives that route a 503). Gating on backends would turn one service's
    # outage into a whole-API outage, against docs/architecture.md "When a dependency fails".
    if not key_store:
        return JSONResponse(
            {"status": "not ready", "not_serving": ["key_store"], "degraded_backends": degraded},
            status_code=503,
        )
    return JSONResponse({"status": "ready", "degraded_backends": degraded})


async def metrics(request: Request) -> Response:
    _mark_route(request, "/metrics")
    return Response(generate_latest(_state(request).metrics.base.registry), media_type=CONTENT_TYPE_LATEST)


async def openapi(request: Request) -> Response:
    _mark_route(request, "/openapi.json")
    return JSONResponse(_state(request).openapi)


# --- authentication, limits, permission ---------------------------------------------------


def _client_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"


async def _limit(state: GatewayState, request: Request, principal: auth.Principal | None) -> Decision:
    return await state.admission.limit(ip=_client_ip(request), principal=principal)


async def _limit_failed_auth(state: GatewayState, request: Request) -> Decision:
    return await state.admission.limit_failed_auth(ip=_client_ip(request))


def _too_many(decision: Decision) -> Response:
    return awareness_error_response(rate_limited(decision), headers=rate_limit_headers(decision))


@dataclass(frozen=True, slots=True)
class Admitted:
    principal: auth.Principal
    headers: dict[str, str]


async def _admit(
    state: GatewayState, request: Request, route: HttpRoute, bindings: Mapping[str, str] | None = None
) -> Admitted | Response:
    """Authenticate, rate limit, authorize: an Admitted caller or the refusal to send."""
    bound = bindings or {}
    try:
        admitted = await state.admission.admit(
            authorization=request.headers.get("authorization"),
            ip=_client_ip(request),
            permission=route.permission,
            method=route.rpc,
            resource=audit.refused_resource(bound.get("name") or bound.get("parent") or ""),
        )
    except RefusedError as refused:
        headers = rate_limit_headers(refused.decision) if refused.decision is not None else {}
        return awareness_error_response(refused.error, headers=headers)
    return Admitted(principal=admitted.principal, headers=rate_limit_headers(admitted.decision))


def _request_error(exc: RequestError, headers: dict[str, str]) -> Response:
    if isinstance(exc, MediaTypeError):
        return error_response(
            grpc.StatusCode.INVALID_ARGUMENT,
            exc.description,
            reason="UNSUPPORTED_MEDIA_TYPE",
            http=415,
            headers=headers,
        )
    return error_response(
        grpc.StatusCode.INVALID_ARGUMENT,
        str(exc),
        reason="INVALID_REQUEST",
        violations=[(exc.field, exc.description)],
        headers=headers,
    )


async def _backend_failure(exc: Exception, headers: dict[str, str]) -> Response:
    if isinstance(exc, grpc.aio.AioRpcError):
        return rpc_error_response(exc, headers=headers)
    if isinstance(exc, AwarenessError):
        return awareness_error_response(exc, headers=headers)
    raise exc


# --- the transcoded API -------------------------------------------------------------------


async def api(request: Request) -> Response:
    state = _state(request)
    raw_path = request.scope.get("raw_path") or request.url.path.encode()
    found = state.router.match(request.method, raw_path.decode("latin-1").split("?", 1)[0])
    if found is None:
        return error_response(grpc.StatusCode.NOT_FOUND, "no such route", reason="ROUTE_NOT_FOUND")
    if isinstance(found, set):
        return error_response(
            grpc.StatusCode.UNIMPLEMENTED,
            f"method {request.method} not allowed here",
            reason="METHOD_NOT_ALLOWED",
            http=405,
            headers={"Allow": ", ".join(sorted(found))},
        )
    route = found.route
    _mark_route(request, route.template.source)
    admitted = await _admit(state, request, route, found.bindings)
    if not isinstance(admitted, Admitted):
        return admitted
    body = await request.body()
    try:
        message = parse_http_request(
            route=route,
            request_class=state.backend.message_class(route.input_type),
            bindings=found.bindings,
            query=list(request.query_params.multi_items()),
            body=body,
            content_type=request.headers.get("content-type"),
        )
    except RequestError as exc:
        return _request_error(exc, admitted.headers)
    try:
        if route.server_streaming:
            first, rest = await auth.acting_as(
                admitted.principal, lambda: state.backend.stream(route, message)
            )
            return StreamingResponse(
                _prepend(first, rest), media_type="application/json", headers=admitted.headers
            )
        response = await auth.acting_as(admitted.principal, lambda: _unary(state, route, message))
    except (grpc.aio.AioRpcError, AwarenessError) as exc:
        return await _backend_failure(exc, admitted.headers)
    return JSONResponse(response_payload(route, response), headers=admitted.headers)


async def _unary(state: GatewayState, route: HttpRoute, message: Any) -> Any:
    """The route's call; a single append may share its call with others (services/gateway/appends.py)."""
    if route.rpc == APPEND_EVENT_RPC and state.appends is not None:
        return await state.appends.append(message)
    return await state.backend.unary(route, message)


async def _prepend(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    if first:
        yield first
    try:
        async for chunk in rest:
            yield chunk
    except grpc.aio.AioRpcError as exc:
        # The status line is already sent; end the body early and say why in the log.
        log.warning("stream failed after the first chunk", extra={"code": exc.code().name})


# --- RFC 3161 time-stamping (raw DER) -----------------------------------------------------


async def timestamp(request: Request) -> Response:
    _mark_route(request, "/v1/timestamp")
    state = _state(request)
    route = state.routes_by_rpc.get(TIMESTAMP_RPC)
    if route is None:
        return error_response(
            grpc.StatusCode.NOT_FOUND, "time-stamping is not exposed", reason="ROUTE_NOT_FOUND"
        )
    admitted = await _admit(state, request, route)
    if not isinstance(admitted, Admitted):
        return admitted
    media_type = (request.headers.get("content-type") or "").split(";", 1)[0].strip().lower()
    if media_type != TIMESTAMP_QUERY:
        return error_response(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"Content-Type must be {TIMESTAMP_QUERY}",
            reason="UNSUPPORTED_MEDIA_TYPE",
            violations=[("Content-Type", f"expected {TIMESTAMP_QUERY}")],
            headers=admitted.headers,
        )
    body = await request.body()
    if not body:
        return error_response(
            grpc.StatusCode.INVALID_ARGUMENT,
            "empty TimeStampReq",
            reason="INVALID_REQUEST",
            violations=[("request", "a DER TimeStampReq is required")],
            headers=admitted.headers,
        )
    request_class = state.backend.message_class(route.input_type)
    try:
        reply: Any = await auth.acting_as(
            admitted.principal, lambda: state.backend.unary(route, request_class(request=body))
        )
    except (grpc.aio.AioRpcError, AwarenessError) as exc:
        return await _backend_failure(exc, admitted.headers)
    return Response(bytes(reply.response), media_type=TIMESTAMP_REPLY, headers=admitted.headers)


# --- GoPhish webhook ----------------------------------------------------------------------


async def gophish_webhook(request: Request) -> Response:
    _mark_route(request, "/v1/integrations/gophish")
    state = _state(request)
    secret = state.config.gophish_secret
    if not secret:
        return error_response(
            grpc.StatusCode.UNIMPLEMENTED, "the GoPhish webhook is not configured", reason="WEBHOOK_DISABLED"
        )
    body = await request.body()
    if not gophish.signature_valid(secret, body, request.headers.get(gophish.SIGNATURE_HEADER)):
        state.metrics.auth_failures.labels("BAD_WEBHOOK_SIGNATURE").inc()
        decision = await _limit_failed_auth(state, request)
        if not decision.allowed:
            return _too_many(decision)
        return error_response(
            grpc.StatusCode.UNAUTHENTICATED,
            "missing or invalid X-Gophish-Signature",
            reason="BAD_WEBHOOK_SIGNATURE",
            headers={**rate_limit_headers(decision), "WWW-Authenticate": 'Bearer realm="awareness"'},
        )
    decision = await _limit(state, request, GOPHISH_PRINCIPAL)
    headers = rate_limit_headers(decision)
    if not decision.allowed:
        return _too_many(decision)
    try:
        mapped = gophish.map_event(strict_json_loads(body), id_key=gophish.event_id_key(secret))
    except RequestError as exc:
        return _request_error(exc, headers)
    except gophish.WebhookError as exc:
        return _request_error(RequestError(exc.field, exc.description), headers)
    if mapped is None:
        return JSONResponse({"status": "ignored"}, status_code=202, headers=headers)
    route = state.routes_by_rpc[APPEND_EVENT_RPC]
    try:
        message = parse_http_request(
            route=route,
            request_class=state.backend.message_class(route.input_type),
            bindings={},
            query=[],
            body=_json_bytes(mapped.as_json()),
            content_type="application/json",
        )
    except RequestError as exc:
        return _request_error(exc, headers)
    try:
        await auth.acting_as(GOPHISH_PRINCIPAL, lambda: _unary(state, route, message))
    except (grpc.aio.AioRpcError, AwarenessError) as exc:
        if not _already_recorded(exc):
            return await _backend_failure(exc, headers)
    # One answer whether the event is new, a redelivery, or a redelivery whose stored copy can no
    # longer be compared (its subject was erased): anything else would tell the sender of a
    # delivery for a guessed address whether that person was erased.
    return JSONResponse({"status": "accepted", "eventId": mapped.event_id}, status_code=202, headers=headers)


def _already_recorded(exc: Exception) -> bool:
    """ingest's EVENT_ID_CONFLICT: an event with this delivery's id is in the log already."""
    if isinstance(exc, grpc.aio.AioRpcError):
        return bool(exc.code() == grpc.StatusCode.ALREADY_EXISTS)
    return isinstance(exc, AwarenessError) and exc.reason == "EVENT_ID_CONFLICT"


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value).encode()


# --- errors Starlette raises itself -------------------------------------------------------


async def http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        return error_response(
            grpc.StatusCode.UNIMPLEMENTED,
            "method not allowed",
            reason="METHOD_NOT_ALLOWED",
            http=405,
            headers=dict(exc.headers or {}),
        )
    if exc.status_code == 404:
        return error_response(grpc.StatusCode.NOT_FOUND, "no such route", reason="ROUTE_NOT_FOUND")
    return error_response(
        grpc.StatusCode.INVALID_ARGUMENT, str(exc.detail), reason="BAD_REQUEST", http=exc.status_code
    )


# --- wiring -------------------------------------------------------------------------------


def _make_limiter(settings: Settings, config: GatewayConfig, metrics: GatewayMetrics) -> RateLimiter:
    if not settings.redis_url:
        return LocalRateLimiter()
    breaker = new_breaker(
        target="redis",
        fail_max=settings.breaker_fail_max,
        reset_seconds=settings.breaker_reset_seconds,
        metrics=metrics.base,
    )
    return RedisRateLimiter(
        url=settings.redis_url,
        key_prefix=config.rate_key_prefix,
        breaker=breaker,
        fallback_total=metrics.ratelimit_fallback,
        timeout_seconds=config.redis_timeout_seconds,
        key_secret=settings.service_secret,
    )


def create_gateway(settings: Settings, *, tracer: trace.Tracer | None = None) -> Starlette:
    """The ASGI app; opens nothing but the SQLite/PostgreSQL engine (lazily) and gRPC channels.

    ``tracer`` defaults to the process-wide provider's (tests pass their own).
    """
    state = _build_state(with_identity(settings))
    portal = create_portal(
        channels=state.channels,
        admission=state.admission,
        store=state.sessions,
        config=load_portal_config(settings.env),
        secret=state.settings.service_secret,
        health=lambda: dependency_report(state),
    )
    app = Starlette(
        routes=_public_routes(portal),
        middleware=_middleware_stack(state, tracer),
        exception_handlers={HTTPException: http_exception},
        lifespan=_lifespan(state),
    )
    app.state.gateway = state
    app.state.admin = create_admin_app(state)
    return app


def _own_records_sink(channels: ChannelFactory) -> audit.Sink:
    """The gateway's access records (its refusals) go to ingest as the gateway itself: the
    channel acts for the current principal, and a background task has none."""
    append = audit.ingest_sink(lambda: channels.channel("ingest"))

    async def sink(events: Sequence[ingest_pb2.Event]) -> None:
        await auth.acting_as(auth.Principal.for_service("gateway"), lambda: append(events))

    return sink


def _build_state(settings: Settings) -> GatewayState:
    """Channels, routes from the descriptor set, the migrated key store and the rate limiter."""
    config = load_gateway_config(settings)
    gateway_metrics = GatewayMetrics.create()
    channels = ChannelFactory(
        targets=dict(settings.targets),
        service="gateway",
        identity=lambda: auth.current_principal() or ANONYMOUS_GATEWAY,
        mtls=settings.identity,
        timeout_seconds=settings.call_timeout_seconds,
        attempts=settings.retry_attempts,
        breaker_fail_max=settings.breaker_fail_max,
        breaker_reset_seconds=settings.breaker_reset_seconds,
        metrics=gateway_metrics.base,
    )
    import_generated_modules()
    descriptor_set = load_descriptor_set()
    comments = collect_comments(descriptor_set)
    routes = build_routes(descriptor_set, comments)
    engine = db.create_db_engine(settings.database_url, service="gateway")
    recovery.refuse_if_restored(engine, service="gateway")
    migrations.upgrade("gateway", engine)
    sessions = db.session_factory(engine)
    limiter = _make_limiter(settings, config, gateway_metrics)
    admission = Admission(
        config=config,
        authenticator=authn.Authenticator(sessions=sessions, config=config),
        limiter=limiter,
        rejections=gateway_metrics.ratelimit_rejections,
        auth_failures=gateway_metrics.auth_failures,
        recorder=AuditRecorder(
            source="gateway",
            sink=_own_records_sink(channels) if "ingest" in settings.targets else None,
            metrics=gateway_metrics.base,
        ),
    )
    backend = Backend(
        channels=channels,
        timeout_seconds=settings.call_timeout_seconds,
        method_timeouts=config.method_timeouts,
    )
    routes_by_rpc = {r.rpc: r for r in routes}
    return GatewayState(
        settings=settings,
        config=config,
        metrics=gateway_metrics,
        channels=channels,
        router=Router([r for r in routes if r.rpc != TIMESTAMP_RPC]),
        backend=backend,
        openapi=build_openapi(routes, comments),
        admission=admission,
        engine=engine,
        sessions=sessions,
        routes_by_rpc=routes_by_rpc,
        appends=_append_coalescer(config, backend, routes_by_rpc, gateway_metrics),
        door=GrpcDoor(
            methods=door_methods(descriptor_set),
            channels=channels,
            admission=admission,
            timeout_seconds=settings.call_timeout_seconds,
            method_timeouts=config.method_timeouts,
            metrics=gateway_metrics.base,
        ),
    )


def _append_coalescer(
    config: GatewayConfig, backend: Backend, routes_by_rpc: dict[str, HttpRoute], metrics: GatewayMetrics
) -> AppendCoalescer | None:
    if config.append_calls_in_flight == 0:
        return None
    one, many = routes_by_rpc[APPEND_EVENT_RPC], routes_by_rpc[APPEND_EVENTS_RPC]

    async def append_one(request: ingest_pb2.AppendEventRequest) -> ingest_pb2.AppendEventResponse:
        response = await backend.unary(one, request)
        assert isinstance(response, ingest_pb2.AppendEventResponse)
        return response

    async def append_many(request: ingest_pb2.AppendEventsRequest) -> ingest_pb2.AppendEventsResponse:
        response = await backend.unary(many, request)
        assert isinstance(response, ingest_pb2.AppendEventsResponse)
        return response

    return AppendCoalescer(
        append_one=append_one,
        append_many=append_many,
        calls_in_flight=config.append_calls_in_flight,
        events_per_call=metrics.append_events_per_call,
    )


async def to_portal(request: Request) -> Response:
    _mark_route(request, "/")
    return RedirectResponse("/portal/", status_code=307)


def _public_routes(portal: ASGIApp) -> list[BaseRoute]:
    api_methods = ["GET", "POST", "PUT", "PATCH", "DELETE"]
    return [
        # People in a browser land on the portal; the JSON API lives under /v1.
        Route("/", to_portal, methods=["GET"]),
        Route("/portal", to_portal, methods=["GET"]),
        Mount("/portal", app=portal),
        Route("/health/live", live, methods=["GET"]),
        Route("/health/ready", ready, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/v1/timestamp", timestamp, methods=["POST"]),
        Route("/v1/integrations/gophish", gophish_webhook, methods=["POST"]),
        Route("/{path:path}", api, methods=api_methods),
    ]


def _middleware_stack(state: GatewayState, tracer: trace.Tracer | None) -> list[Middleware]:
    """The edge (body limits, request metrics, tracing) first, then CORS when origins are configured."""
    config = state.config
    http_requests = state.metrics.base.counter(
        "http_requests_total",
        "HTTP requests by route template, method and status",
        ["route", "method", "status"],
    )
    http_latency = state.metrics.base.histogram(
        "http_request_duration_seconds",
        "HTTP request latency by route template and method",
        ["route", "method"],
    )
    middleware = [
        Middleware(
            EdgeMiddleware,
            max_body_bytes=config.max_body_bytes,
            body_timeout_seconds=config.body_timeout_seconds,
            requests_total=http_requests,
            duration_seconds=http_latency,
            tracer=tracer,
        )
    ]
    if config.cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(config.cors_origins),
                allow_methods=["GET", "POST", "PATCH", "DELETE"],
                allow_headers=["Authorization", "Content-Type"],
                expose_headers=[
                    "X-RateLimit-Limit",
                    "X-RateLimit-Remaining",
                    "X-RateLimit-Reset",
                    "Retry-After",
                ],
                max_age=600,
            )
        )
    return middleware


def _lifespan(state: GatewayState) -> Callable[[Starlette], AbstractAsyncContextManager[None]]:
    """Appends the gateway's access records while the app runs; closes the state (channels, limiter,
    engine) when it stops, after the records still queued are out."""

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        recorder = state.admission.recorder
        recording = asyncio.create_task(recorder.run(), name="audit") if recorder is not None else None
        try:
            yield
        finally:
            if recording is not None and recorder is not None:
                recording.cancel()
                await asyncio.gather(recording, return_exceptions=True)
                await recorder.drain(timeout_seconds=state.settings.shutdown_grace_seconds)
            await state.close()

    return lifespan


def create_admin_app(state: GatewayState) -> Starlette:
    """/metrics and /health/dependencies, on the admin port only: the ingress never routes to it and
    the NetworkPolicy opens it to Prometheus alone. The probes answer here too. Shares the public app's
    state, whose lifespan closes it."""
    admin = Starlette(
        routes=[
            Route("/health/live", live, methods=["GET"]),
            Route("/health/ready", ready, methods=["GET"]),
            Route("/health/dependencies", dependencies, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
        ]
    )
    admin.state.gateway = state
    return admin


def run_gateway(settings: Settings) -> None:
    settings = with_identity(settings)
    from services.gateway.bootstrap import bootstrap_dev

    bootstrap_dev(settings.data_dir)  # idempotent; a no-op in Kubernetes or when the secret is configured
    configure_logging(service="gateway", level=settings.log_level)
    configure_tracing(service="gateway", exporter=settings.traces_exporter)
    app = create_gateway(settings)
    config = load_gateway_config(settings)
    public = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.grpc_port,
        log_config=None,
        access_log=False,
        server_header=False,
        date_header=True,
        proxy_headers=bool(config.forwarded_allow_ips),
        forwarded_allow_ips=config.forwarded_allow_ips or None,
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds),
        timeout_keep_alive=config.keep_alive_seconds,
        limit_concurrency=config.max_concurrency,
        http=BoundedHttpToolsProtocol,
    )
    # Several workers share the public port: each binds it with SO_REUSEPORT (uvicorn cannot) and the
    # kernel spreads connections among them.
    shared = [reuse_port_socket(settings.host, settings.grpc_port)] if settings.workers > 1 else None
    servers = [_Server(public, sockets=shared)]
    if config.admin_port:
        admin = uvicorn.Config(
            app.state.admin,
            host=settings.host,
            port=config.admin_port,
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
            timeout_graceful_shutdown=int(settings.shutdown_grace_seconds),
            limit_concurrency=16,
        )
        servers.append(_Server(admin))
    door = (
        _door_server(app.state.gateway, settings.host, reuse_port=settings.workers > 1)
        if config.grpc_port
        else None
    )
    tune_garbage_collector()
    try:
        run_main(
            _serve_all(
                servers, door, grace_seconds=settings.shutdown_grace_seconds, renewal=settings.identity
            ),
            event_loop=settings.event_loop,
        )
    finally:
        shutdown_tracing()


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signals to ``_serve_all`` (two servers share one loop), listening
    on ``sockets`` when given (a port the workers share), else on its configured host and port."""

    def __init__(self, config: uvicorn.Config, *, sockets: list[socket.socket] | None = None) -> None:
        super().__init__(config)
        self.listen_sockets = sockets

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _door_server(state: GatewayState, host: str, *, reuse_port: bool) -> Callable[[], grpc.aio.Server]:
    """Builds the gRPC door's server inside the serving loop (grpc.aio binds to the running loop)."""
    config = state.config
    tls = None
    if config.grpc_tls_cert_file:
        tls = (Path(config.grpc_tls_cert_file), Path(config.grpc_tls_key_file))

    def build() -> grpc.aio.Server:
        server, bound = create_door_server(
            state.door, host=host, port=config.grpc_port, tls=tls, reuse_port=reuse_port
        )
        log.info("gRPC door listening", extra={"port": bound, "tls": tls is not None})
        return server

    return build


async def _serve_all(
    servers: list[_Server],
    door: Callable[[], grpc.aio.Server] | None,
    *,
    grace_seconds: float,
    renewal: MtlsFiles | None = None,
) -> None:
    """Run the public and admin servers and the gRPC door; SIGTERM/SIGINT, either HTTP server
    stopping, or a renewed mTLS certificate stops them all (the door drains its calls for the grace
    period)."""

    def stop() -> None:
        for server in servers:
            server.should_exit = True

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop)
    door_server = door() if door is not None else None
    if door_server is not None:
        await door_server.start()
    tasks = [asyncio.create_task(server.serve(sockets=server.listen_sockets)) for server in servers]
    watch = asyncio.create_task(identity.renewed(renewal)) if renewal is not None else None
    try:
        await asyncio.wait([*tasks, *([watch] if watch else [])], return_when=asyncio.FIRST_COMPLETED)
        stop()
        if door_server is not None:
            await door_server.stop(grace_seconds)
        await asyncio.gather(*tasks)
    finally:
        if watch is not None:
            watch.cancel()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
