"""The server interceptor every service uses: auth, tracing, metrics, logs, error mapping, audit.

One interceptor (not six) keeps a single wrapper on the hot path. Order inside it:
take the caller's identity from its certificate, open the server span from the incoming W3C context,
run the handler, map any error to ``google.rpc.Status``, record metrics and a log line, and queue
an access record when the proto declares the method audited.
"""

from __future__ import annotations

import inspect
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

import grpc
from google.protobuf.message import Message
from grpc_status import rpc_status
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from services.runtime import audit, auth, identity
from services.runtime.db import is_store_outage, store_unavailable
from services.runtime.errors import (
    AwarenessError,
    PermissionDeniedError,
    UnimplementedError,
)
from services.runtime.metrics import ServiceMetrics, grpc_method_label
from services.runtime.protos import UNDECLARED, allowed_callers, audit_action, required_permission
from services.runtime.tracing import extract_context
from services.runtime.validation import check_request

log = logging.getLogger("awareness.rpc")

EXEMPT_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")
INTERNAL_PERMISSION = "internal:call"
PermissionLookup = Callable[[str], str | None]


def _metadata(context: grpc.aio.ServicerContext[Any, Any]) -> list[tuple[str, str | bytes]]:
    return list(context.invocation_metadata() or ())


class ServerInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(
        self,
        *,
        service: str,
        metrics: ServiceMetrics,
        permission_for: PermissionLookup | None = None,
        validated_fields: frozenset[str] = frozenset(),
        recorder: audit.AuditRecorder | None = None,
    ) -> None:
        self._service = service
        self._recorder = recorder
        self._validated_fields = validated_fields
        self._metrics = metrics
        self._permission_for = permission_for or required_permission
        self._tracer = trace.get_tracer("awareness.grpc.server")

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or method.startswith(EXEMPT_PREFIXES):
            return handler
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(method, handler.unary_unary, streamed=False),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(method, handler.unary_stream, streamed=False),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._wrap_unary(method, handler.stream_unary, streamed=True),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return grpc.stream_stream_rpc_method_handler(
            self._wrap_stream(method, handler.stream_stream, streamed=True),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _identify(self, context: grpc.aio.ServicerContext[Any, Any]) -> auth.Principal:
        return auth.principal_of_call(
            caller=identity.peer_service(context), callee=self._service, metadata=_metadata(context)
        )

    def _authorize(self, method: str, principal: auth.Principal) -> None:
        permission = self._permission_for(method)
        if permission == UNDECLARED:
            raise PermissionDeniedError(f"{method} declares no permission", reason="PERMISSION_UNDECLARED")
        if permission:
            auth.require_permission(permission, principal)
        callers = allowed_callers(method)
        if callers is None and permission == INTERNAL_PERMISSION:
            raise PermissionDeniedError(f"{method} names no allowed callers", reason="CALLERS_UNDECLARED")
        if callers is not None:
            auth.require_caller(method, callers, principal)

    def _checked(self, request: Any, *, streamed: bool) -> Any:
        """The request after the generic check (services.runtime.validation); a stream checks each message."""
        if streamed:
            return self._checked_stream(request)
        if isinstance(request, Message):
            check_request(request, skip=self._validated_fields)
        return request

    async def _checked_stream(self, requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
        async for request in requests:
            if isinstance(request, Message):
                check_request(request, skip=self._validated_fields)
            yield request

    def _start(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> tuple[Any, Any]:
        carrier = {k: v for k, v in _metadata(context) if isinstance(v, str)}
        parent = extract_context(carrier)
        span = self._tracer.start_span(
            method,
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.method": method, "awareness.service": self._service},
        )
        token = otel_context.attach(trace.set_span_in_context(span))
        return span, token

    async def _fail(
        self, method: str, context: grpc.aio.ServicerContext[Any, Any], exc: Exception, span: Any
    ) -> None:
        if isinstance(exc, NotImplementedError):
            exc = UnimplementedError(f"{method} is not implemented yet")
        elif is_store_outage(exc):
            # The service's own database is unreachable: retry later (health is NOT_SERVING too).
            exc = store_unavailable()
        if isinstance(exc, AwarenessError):
            level = logging.WARNING if exc.code == grpc.StatusCode.INTERNAL else logging.INFO
            log.log(
                level, "rpc refused", extra={"method": method, "code": exc.code.name, "reason": exc.reason}
            )
            span.set_status(Status(StatusCode.ERROR, exc.reason))
            await context.abort_with_status(rpc_status.to_status(exc.to_status()))
        reference = uuid.uuid4().hex[:12]
        log.exception("unhandled error", extra={"method": method, "error_reference": reference})
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
        internal = AwarenessError(f"internal error (reference {reference})", reason="INTERNAL_ERROR")
        await context.abort_with_status(rpc_status.to_status(internal.to_status()))

    def _record(self, method: str, name: str, started: float) -> None:
        elapsed = time.perf_counter() - started
        label = grpc_method_label(method)
        self._metrics.requests.labels(label, name).inc()
        self._metrics.latency.labels(label).observe(elapsed)
        log.debug("rpc", extra={"method": method, "code": name, "duration_ms": round(elapsed * 1000, 3)})

    def _audit(
        self,
        method: str,
        action: str,
        principal: auth.Principal,
        notes: audit.AuditNotes,
        request: Any,
        outcome: str,
    ) -> None:
        if notes.skipped or self._recorder is None:
            return
        self._recorder.record(
            audit.AccessRecord(
                principal=principal.subject,
                action=action,
                method=method,
                # What the handler vouched for; else the request's name, as typed only when the
                # call succeeded (a refused caller may have typed anything, an e-mail address too).
                resource=notes.resource
                or (
                    audit.resource_of(request)
                    if outcome == "OK"
                    else audit.refused_resource(audit.resource_of(request))
                ),
                outcome=outcome,
                time=audit.now(),
                pseudonyms=tuple(notes.pseudonyms),
                details=notes.details,
            )
        )

    @asynccontextmanager
    async def _serving(
        self, method: str, context: grpc.aio.ServicerContext[Any, Any], request: Any = None
    ) -> AsyncIterator[None]:
        """Around one call's handler: the span, the caller's principal, error mapping, metrics, audit."""
        started = time.perf_counter()
        span, token = self._start(method, context)
        action = audit_action(method) if self._recorder is not None else None
        notes_token = audit.begin() if action else None
        principal: auth.Principal | None = None
        principal_token = None
        try:
            principal = self._identify(context)
            self._authorize(method, principal)
            principal_token = auth.set_current_principal(principal)
            yield
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # every error becomes a google.rpc.Status
            await self._fail(method, context, exc, span)
            raise
        finally:
            if principal_token is not None:
                auth._current.reset(principal_token)
            code = context.code()
            name = (
                code.name if isinstance(code, grpc.StatusCode) else "OK" if code in (None, 0) else str(code)
            )
            if notes_token is not None:
                notes = audit.end(notes_token)
                # An unauthenticated call names nobody to hold to account; refusing it is enough.
                if action and principal is not None:
                    self._audit(method, action, principal, notes, request, name)
            self._record(method, name, started)
            span.end()
            otel_context.detach(token)

    async def _handle(
        self,
        behavior: Callable[..., Any],
        request: Any,
        context: grpc.aio.ServicerContext[Any, Any],
        *,
        streamed: bool,
    ) -> Any:
        result = behavior(self._checked(request, streamed=streamed), context)
        if inspect.isawaitable(result):
            result = await result
        return result

    def _wrap_unary(
        self, method: str, behavior: Callable[..., Any], *, streamed: bool
    ) -> Callable[..., Awaitable[Any]]:
        async def wrapped(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            async with self._serving(method, context, None if streamed else request):
                return await self._handle(behavior, request, context, streamed=streamed)

        return wrapped

    def _wrap_stream(
        self, method: str, behavior: Callable[..., Any], *, streamed: bool
    ) -> Callable[..., AsyncIterator[Any]]:
        async def wrapped(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            async with self._serving(method, context, None if streamed else request):
                result = await self._handle(behavior, request, context, streamed=streamed)
                if hasattr(result, "__aiter__"):
                    async for item in result:
                        yield item
                elif isinstance(result, Iterable):
                    for item in result:
                        yield item

        return wrapped
