"""The gRPC door: the public contract methods on a port of their own, for internal systems that
use the generated stubs of the ``awareness-client`` wheel instead of HTTP/JSON.

- **What it serves.** Every method a role can be granted (``door_methods``): the HTTP routes'
  rule without the need for an HTTP binding, so client-streaming ``StreamAppendEvents`` is in.
  ``internal:call`` methods answer UNIMPLEMENTED, as unknown ones do.
- **Bytes through.** Requests and answers pass as bytes. The owning service parses and
  validates them; the door never re-serialises.
- **The same admission as HTTP.** ``authorization: Bearer <API key or JWT>`` metadata, the same
  roles, permissions and rate limits (``Admission``). A client stream counts one request per
  message it sends. Refusals are gRPC statuses with ErrorInfo, as the services' own.
- **Nothing the caller sends in metadata reaches a service.** The call carries the gateway's
  signed credential for the admitted principal, and the trace context.
- **A caller's deadline never reaches the breaker.** The backend call runs under the method's
  own timeout; a caller that gives up cancels it, and a cancellation is not a failure of the
  service (``services.runtime.clients.is_business_error``).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeAlias

import grpc
from grpc_reflection.v1alpha import reflection
from grpc_status import rpc_status
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from services.gateway.admission import Admission, Admitted, RefusedError, rate_limited
from services.gateway.domain.descriptors import DoorMethod
from services.runtime import auth
from services.runtime.clients import ChannelFactory
from services.runtime.errors import AwarenessError
from services.runtime.metrics import ServiceMetrics, grpc_method_label

log = logging.getLogger("awareness.gateway.door")

# A client stream (StreamAppendEvents) may run much longer than one unary call.
STREAM_TIMEOUT_SECONDS = 3600.0
STATUS_DETAILS_KEY = "grpc-status-details-bin"

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]


def peer_ip(peer: str) -> str:
    """The address of ``ipv4:10.0.0.1:5000``, ``ipv6:[::1]:5000`` or ``unix:...`` as a rate-limit key."""
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        return rest.rsplit(":", 1)[0].strip("[]")
    return peer or "unknown"


class _Call:
    """What one call through the door knows: who was admitted, and from where."""

    def __init__(self, admitted: Admitted, ip: str) -> None:
        self.admitted = admitted
        self.ip = ip


class GrpcDoor(grpc.GenericRpcHandler):  # type: ignore[misc]
    def __init__(
        self,
        *,
        methods: Sequence[DoorMethod],
        channels: ChannelFactory,
        admission: Admission,
        timeout_seconds: float,
        method_timeouts: Mapping[str, float],
        metrics: ServiceMetrics,
    ) -> None:
        self._channels = channels
        self._admission = admission
        self._timeout_seconds = timeout_seconds
        self._method_timeouts = dict(method_timeouts)
        self._requests = metrics.counter(
            "door_requests_total", "gRPC door calls by method and status code", ["method", "code"]
        )
        self._latency = metrics.histogram(
            "door_request_duration_seconds", "gRPC door call latency by method", ["method"]
        )
        self._tracer = trace.get_tracer("awareness.gateway")
        self._handlers = {method.rpc: self._method_handler(method) for method in methods}

    @property
    def methods(self) -> list[str]:
        return sorted(self._handlers)

    @property
    def services(self) -> list[str]:
        """The full names of the services with a method at the door."""
        return sorted({rpc.strip("/").split("/", 1)[0] for rpc in self._handlers})

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        return self._handlers.get(handler_call_details.method)

    def _method_handler(self, method: DoorMethod) -> grpc.RpcMethodHandler:
        # No (de)serializers: the handlers get and return bytes.
        if method.client_streaming and method.server_streaming:
            return grpc.stream_stream_rpc_method_handler(self._stream_stream(method))
        if method.client_streaming:
            return grpc.stream_unary_rpc_method_handler(self._stream_unary(method))
        if method.server_streaming:
            return grpc.unary_stream_rpc_method_handler(self._unary_stream(method))
        return grpc.unary_unary_rpc_method_handler(self._unary_unary(method))

    def _backend(self, method: DoorMethod, kind: str) -> Any:
        channel = self._channels.channel(method.service)
        return getattr(channel, kind)(method.rpc)

    def _timeout(self, method: DoorMethod) -> float:
        default = STREAM_TIMEOUT_SECONDS if method.client_streaming else self._timeout_seconds
        return self._method_timeouts.get(method.rpc, default)

    @asynccontextmanager
    async def _serving(self, method: DoorMethod, context: Context) -> AsyncIterator[_Call]:
        """Admit the caller and sign its backend calls as it; turn every failure into a status."""
        started = time.perf_counter()
        ip = peer_ip(context.peer())
        code = grpc.StatusCode.OK
        token = None
        metadata = [
            (key, value) for key, value in context.invocation_metadata() or () if isinstance(value, str)
        ]
        span = self._tracer.start_span(
            method.rpc,
            # A caller's own trace continues here, as over HTTP; its other metadata goes nowhere.
            context=propagate.extract(carrier=dict(metadata)),
            kind=SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.method": method.rpc},
        )
        attached = otel_context.attach(trace.set_span_in_context(span))
        try:
            authorization = next((value for key, value in metadata if key == "authorization"), None)
            admitted = await self._admission.admit(
                authorization=authorization, ip=ip, permission=method.permission, method=method.rpc
            )
            token = auth.set_current_principal(admitted.principal)
            yield _Call(admitted, ip)
        except RefusedError as refused:
            code = refused.error.code
            await context.abort_with_status(rpc_status.to_status(refused.error.to_status()))
        except AwarenessError as error:  # e.g. the breaker to the service is open
            code = error.code
            await context.abort_with_status(rpc_status.to_status(error.to_status()))
        except grpc.aio.AioRpcError as error:  # the service's own answer, forwarded as it is
            code = error.code()
            trailing = tuple(
                (key, value) for key, value in error.trailing_metadata() or () if key == STATUS_DETAILS_KEY
            )
            await context.abort(code, error.details() or "", trailing_metadata=trailing)
        except asyncio.CancelledError:  # the caller gave up
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception:  # a bug of ours: say so with a reference, never with its text
            code = grpc.StatusCode.INTERNAL
            reference = uuid.uuid4().hex[:12]
            log.exception("door call failed", extra={"method": method.rpc, "error_reference": reference})
            internal = AwarenessError(f"internal error (reference {reference})", reason="INTERNAL_ERROR")
            await context.abort_with_status(rpc_status.to_status(internal.to_status()))
        finally:
            if token is not None:
                auth.set_current_principal(None)
            if code != grpc.StatusCode.OK:
                span.set_status(Status(StatusCode.ERROR, code.name))
            span.set_attribute("rpc.grpc.status_code", code.value[0])
            span.end()
            otel_context.detach(attached)
            label = grpc_method_label(method.rpc)
            self._requests.labels(label, code.name).inc()
            self._latency.labels(label).observe(time.perf_counter() - started)

    def _limited(
        self, call: _Call, requests: AsyncIterator[bytes], refused: list[RefusedError]
    ) -> AsyncIterator[bytes]:
        """The caller's messages; the first was counted at admission, each later one counts anew.
        A refused message ends the stream, so the service answers what came before it."""

        async def messages() -> AsyncIterator[bytes]:
            first = True
            async for message in requests:
                if not first:
                    decision = await self._admission.limit(ip=call.ip, principal=call.admitted.principal)
                    if not decision.allowed:
                        refused.append(RefusedError(rate_limited(decision), decision))
                        return
                first = False
                yield message

        return messages()

    def _unary_unary(self, method: DoorMethod) -> Callable[[bytes, Context], Any]:
        async def relay(request: bytes, context: Context) -> bytes:
            async with self._serving(method, context):
                answer: bytes = await self._backend(method, "unary_unary")(
                    request, timeout=self._timeout(method)
                )
                return answer
            raise AssertionError("unreachable: a refusal aborts the call")

        return relay

    def _unary_stream(self, method: DoorMethod) -> Callable[[bytes, Context], AsyncIterator[bytes]]:
        async def relay(request: bytes, context: Context) -> AsyncIterator[bytes]:
            async with self._serving(method, context):
                async for answer in self._backend(method, "unary_stream")(
                    request, timeout=self._timeout(method)
                ):
                    yield answer

        return relay

    def _stream_unary(self, method: DoorMethod) -> Callable[[AsyncIterator[bytes], Context], Any]:
        async def relay(requests: AsyncIterator[bytes], context: Context) -> bytes:
            async with self._serving(method, context) as call:
                refused: list[RefusedError] = []
                answer: bytes = await self._backend(method, "stream_unary")(
                    self._limited(call, requests, refused), timeout=self._timeout(method)
                )
                if refused:
                    raise refused[0]
                return answer
            raise AssertionError("unreachable: a refusal aborts the call")

        return relay

    def _stream_stream(
        self, method: DoorMethod
    ) -> Callable[[AsyncIterator[bytes], Context], AsyncIterator[bytes]]:
        async def relay(requests: AsyncIterator[bytes], context: Context) -> AsyncIterator[bytes]:
            async with self._serving(method, context) as call:
                refused: list[RefusedError] = []
                async for answer in self._backend(method, "stream_stream")(
                    self._limited(call, requests, refused), timeout=self._timeout(method)
                ):
                    yield answer
                if refused:
                    raise refused[0]

        return relay


def renewing_server_credentials(chain_file: Path, key_file: Path) -> grpc.ServerCredentials:
    """TLS credentials that pick up a renewed certificate (cert-manager rewrites the Secret's files)
    at the next handshake after the files change, without a restart."""

    def load() -> tuple[tuple[int, int], Any]:
        stamps = (chain_file.stat().st_mtime_ns, key_file.stat().st_mtime_ns)
        pair = (key_file.read_bytes(), chain_file.read_bytes())
        return stamps, grpc.ssl_server_certificate_configuration([pair])

    current = [load()]

    def fetch() -> Any:
        try:
            stamps = (chain_file.stat().st_mtime_ns, key_file.stat().st_mtime_ns)
            if stamps == current[0][0]:
                return None  # unchanged: keep serving the one loaded
            current[0] = load()
        except (OSError, ValueError) as error:  # half-written during a renewal: retry next handshake
            log.warning("could not reload the door's certificate", extra={"error": str(error)})
            return None
        log.info("the door's certificate was reloaded")
        return current[0][1]

    return grpc.dynamic_ssl_server_credentials(current[0][1], fetch)


def create_door_server(
    door: GrpcDoor, *, host: str, port: int, tls: tuple[Path, Path] | None, reuse_port: bool = False
) -> tuple[grpc.aio.Server, int]:
    """The door's server (not started) and its bound port; ``tls``: (certificate chain, key) PEM files.
    ``reuse_port``: the gateway's workers share the port (SO_REUSEPORT); otherwise a taken port fails."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", 32 * 1024 * 1024),
            ("grpc.so_reuseport", 1 if reuse_port else 0),
        ]
    )
    server.add_generic_rpc_handlers([door])
    # Reflection shows the contracts (as public as the client wheel), so grpcurl works unaided.
    reflection.enable_server_reflection((*door.services, reflection.SERVICE_NAME), server)
    address = f"{host}:{port}"
    if tls is None:
        bound = server.add_insecure_port(address)
    else:
        bound = server.add_secure_port(address, renewing_server_credentials(*tls))
    return server, bound
