"""The edge of every request: limits, security headers, metrics, tracing, and no stack traces.

Each HTTP request gets a SERVER span continuing the caller's W3C ``traceparent``; the span
is current while the app runs, so the runtime's channels inject it into the gRPC metadata
of the backend call.

One pure-ASGI middleware (not several BaseHTTPMiddleware layers) so streaming responses
pass straight through and the hot path stays short.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final

from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from prometheus_client import Counter, Histogram

log = logging.getLogger("awareness.gateway.http")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

SECURITY_HEADERS: Final = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'; base-uri 'none'"),
    (b"cross-origin-resource-policy", b"same-origin"),
)
NO_STORE: Final = (b"cache-control", b"no-store")
ROUTE_KEY: Final = "awareness_route"
# Metric labels and span names come from closed sets: the method from this list (else
# "other"), the route from the templates the app marks (else "unmatched"), never the path.
KNOWN_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER_METHOD: Final = "other"
UNMATCHED: Final = "unmatched"


class BodyTooLargeError(Exception):
    """The request body passed the configured limit."""


class BodyTimeoutError(Exception):
    """The client did not send its body in time (slow client)."""


def _status_body(code: int, message: str, reason: str, **metadata: str) -> bytes:
    return json.dumps(
        {
            "code": code,
            "message": message,
            "details": [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": reason,
                    "domain": "awareness.dev",
                    "metadata": metadata,
                }
            ],
        }
    ).encode()


class EdgeMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        body_timeout_seconds: float,
        requests_total: Counter,
        duration_seconds: Histogram,
        tracer: trace.Tracer | None = None,
    ) -> None:
        self.app = app
        self.tracer = tracer or trace.get_tracer("awareness.gateway")
        self.max_body_bytes = max_body_bytes
        self.body_timeout_seconds = body_timeout_seconds
        self.requests_total = requests_total
        self.duration_seconds = duration_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        scope.setdefault("state", {})
        status_holder: dict[str, Any] = {"status": 500, "started": False}
        method = method_label(scope)
        parent = propagate.extract(carrier=_header_carrier(scope))
        with self.tracer.start_as_current_span(
            method,
            context=parent,
            kind=SpanKind.SERVER,
            # The route template, never the raw path: paths can carry a subject's identifier.
            attributes={"http.method": method},
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                await self._handle(scope, receive, send, status_holder=status_holder, started=started)
            finally:
                _finish_span(span, scope, method, int(status_holder["status"]))

    async def _handle(
        self, scope: Scope, receive: Receive, send: Send, *, status_holder: dict[str, Any], started: float
    ) -> None:
        path: str = scope.get("path", "")
        api = path.startswith("/v1/")

        declared = _content_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            await self._send_error(send, 413, 8, "request body too large", "BODY_TOO_LARGE", status_holder)
            self._observe(scope, status_holder, started)
            return

        received = 0
        body_done = False

        async def limited_receive() -> Message:
            nonlocal received, body_done
            if body_done:
                return await receive()  # e.g. Starlette waiting for a disconnect while streaming
            try:
                # asyncio.timeout, not wait_for: no extra task per receive on the hot path.
                async with asyncio.timeout(self.body_timeout_seconds):
                    message = await receive()
            except TimeoutError as exc:
                raise BodyTimeoutError from exc
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise BodyTooLargeError
                body_done = not message.get("more_body", False)
            return message

        async def guarded_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
                status_holder["started"] = True
                headers = [
                    (k, v)
                    for k, v in message.get("headers", [])
                    if k.lower() not in (b"server", b"x-powered-by")
                ]
                names = {k.lower() for k, _ in headers}
                headers.extend(h for h in SECURITY_HEADERS if h[0] not in names)
                if api and b"cache-control" not in names:
                    headers.append(NO_STORE)
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except BodyTooLargeError:
            await self._send_error(send, 413, 8, "request body too large", "BODY_TOO_LARGE", status_holder)
        except BodyTimeoutError:
            await self._send_error(
                send, 408, 4, "request body not received in time", "BODY_TIMEOUT", status_holder
            )
        except Exception:
            reference = uuid.uuid4().hex[:12]
            log.exception(
                "unhandled error", extra={"error_reference": reference, "path_template": _route(scope)}
            )
            await self._send_error(
                send,
                500,
                13,
                f"internal error (reference {reference})",
                "INTERNAL_ERROR",
                status_holder,
                reference=reference,
            )
        finally:
            self._observe(scope, status_holder, started)

    async def _send_error(
        self,
        send: Send,
        http: int,
        code: int,
        message: str,
        reason: str,
        holder: dict[str, Any],
        **metadata: str,
    ) -> None:
        if holder["started"]:
            return  # the status line is out; the client sees a truncated body instead
        body = _status_body(code, message, reason, **metadata)
        holder["status"] = http
        holder["started"] = True
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            NO_STORE,
            *SECURITY_HEADERS,
        ]
        if http in (408, 413):
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": http, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _observe(self, scope: Scope, holder: dict[str, Any], started: float) -> None:
        route = _route(scope)
        method = method_label(scope)
        self.requests_total.labels(route, method, str(holder["status"])).inc()
        self.duration_seconds.labels(route, method).observe(time.perf_counter() - started)


def method_label(scope: Scope) -> str:
    method = str(scope.get("method", ""))
    return method if method in KNOWN_METHODS else OTHER_METHOD


def _header_carrier(scope: Scope) -> dict[str, str]:
    """The trace-context headers of the request, as the propagator reads them."""
    carrier: dict[str, str] = {}
    for key, value in scope.get("headers", []):
        if key in (b"traceparent", b"tracestate", b"baggage"):
            carrier[key.decode("latin-1")] = value.decode("latin-1")
    return carrier


def _finish_span(span: trace.Span, scope: Scope, method: str, status: int) -> None:
    route = _route(scope)
    if route != UNMATCHED:
        span.update_name(f"{method} {route}")
        span.set_attribute("http.route", route)
    span.set_attribute("http.status_code", status)
    if status >= 500:  # 4xx are the client's; only server faults mark the span as an error
        span.set_status(Status(StatusCode.ERROR))


def _route(scope: Scope) -> str:
    state = scope.get("state") or {}
    route = state.get(ROUTE_KEY)
    return str(route) if route else UNMATCHED


def _content_length(scope: Scope) -> int | None:
    for key, value in scope.get("headers", []):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
