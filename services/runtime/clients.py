"""Channels to other services: a deadline on every call, one circuit breaker per target,
retries with jittered backoff for idempotent methods only, and the signed internal
credential plus W3C trace context on every call. Calls are spread round-robin over every
address a target resolves to (``dns:///<headless service>:<port>`` in Kubernetes).

Idempotency comes from the protos themselves (``services.runtime.protos``): methods
marked ``option idempotency_level = NO_SIDE_EFFECTS`` or ``IDEMPOTENT`` may be retried.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
import pybreaker
from grpc_status import rpc_status

from services.runtime import auth
from services.runtime.config import Settings, with_identity
from services.runtime.errors import (
    AbortedError,
    AlreadyExistsError,
    AwarenessError,
    DependencyUnavailableError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    UnimplementedError,
    error_info,
)
from services.runtime.identity import MtlsFiles, channel_options
from services.runtime.metrics import BREAKER_STATES, ServiceMetrics
from services.runtime.protos import is_idempotent
from services.runtime.tracing import inject_metadata

log = logging.getLogger("awareness.clients")

T = TypeVar("T")

# Codes that say "the dependency could not answer", as opposed to "your request was wrong": a
# caller maps these to UNAVAILABLE for its own client.
TRANSIENT_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)
# The only codes a breaker counts: failures of the peer itself (down, too slow, out of capacity
# or refusing a message over the transport's limit), which every caller of it would meet.
# INTERNAL and UNKNOWN are not counted: they come from one request's content reaching a bug (an
# unexpected exception in the callee), and a breaker that every caller shares must not open
# because one caller keeps sending that content. A callee that is really broken fails its
# health checks, and its clients see UNAVAILABLE.
BREAKER_FAILURE_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)
RETRYABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})

# A peer's refusal that our own client can act on keeps its meaning. Codes not listed here
# (UNAUTHENTICATED, CANCELLED, OUT_OF_RANGE, DATA_LOSS ...) say our call to the peer was broken, which
# our client cannot fix: they stay INTERNAL.
_REFUSALS: dict[grpc.StatusCode, type[AwarenessError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.ABORTED: AbortedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.UNIMPLEMENTED: UnimplementedError,
}


def peer_error(error: grpc.aio.AioRpcError, *, target: str) -> AwarenessError:
    """The one rule that turns a failed call to ``target`` into an error of ours.

    TRANSIENT_CODES (the peer could not answer) become UNAVAILABLE, reason ``<TARGET>_UNAVAILABLE``;
    a refusal becomes the matching error, reason ``<TARGET>_REFUSED``. The peer's own reason, if
    it sent one, is kept in the metadata as ``peer_reason``.
    """
    code = error.code()
    metadata = {"target": target, "code": code.name}
    try:
        status = rpc_status.from_call(error)
    except ValueError:
        status = None
    info = error_info(status) if status is not None else None
    if info is not None and info.reason:
        metadata["peer_reason"] = info.reason
    if code in TRANSIENT_CODES:
        return DependencyUnavailableError(
            f"{target} is unavailable ({code.name})",
            reason=f"{target.upper()}_UNAVAILABLE",
            metadata=metadata,
        )
    return _REFUSALS.get(code, AwarenessError)(
        f"{target} refused the request ({code.name}): {error.details()}",
        reason=f"{target.upper()}_REFUSED",
        metadata=metadata,
    )


async def call_peer(call: Awaitable[T], *, target: str) -> T:
    """Await a call to ``target``; any failure of it raises ``peer_error``."""
    try:
        return await call
    except grpc.aio.AioRpcError as error:
        raise peer_error(error, target=target) from error


# Balance calls, not connections: with round_robin a channel keeps a connection to every address
# its target resolves to (every ready pod behind a headless Service) and sends each call to the
# next one. gRPC's default, pick_first, sends every call down the first connection that works,
# so replicas added later would get nothing from this process. A single address (127.0.0.1:port)
# behaves exactly as before. Retries stay in the interceptor below, so the config holds no
# retryPolicy.
SERVICE_CONFIG = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})

CHANNEL_OPTIONS: tuple[tuple[str, int | str], ...] = (
    ("grpc.max_receive_message_length", 32 * 1024 * 1024),
    # gRPC's default reconnect backoff grows to 120 s; a restarted peer should
    # be found again within seconds.
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.service_config", SERVICE_CONFIG),
    # The policy is ours: a DNS TXT record must not be able to swap it.
    ("grpc.service_config_disable_resolution", 1),
)


def is_business_error(exc: BaseException) -> bool:
    """Errors that must not open this target's breaker (see BREAKER_FAILURE_CODES).

    Either the code is not a failure of the peer, or the callee answered on purpose (it
    attached an ErrorInfo) that something *behind* it is unavailable: counting that against
    the callee would cascade one service's outage into its callers' breakers.
    """
    if isinstance(exc, asyncio.CancelledError):
        # Our own caller gave up (a client's deadline or disconnect): no evidence about the peer,
        # and a client that cancels on purpose must not open a breaker every caller shares.
        return True
    if not isinstance(exc, grpc.aio.AioRpcError):
        return False
    if exc.code() not in BREAKER_FAILURE_CODES:
        return True
    try:
        status = rpc_status.from_call(exc)
    except ValueError:
        return False
    info = error_info(status) if status is not None else None
    return info is not None and info.reason != "INTERNAL_ERROR"


class _BreakerMetrics(pybreaker.CircuitBreakerListener):
    def __init__(self, metrics: ServiceMetrics | None, target: str) -> None:
        self._metrics = metrics
        self._target = target
        if metrics is not None:
            metrics.breaker_state.labels(target).set(0)

    def state_change(self, cb: pybreaker.CircuitBreaker, old_state: Any, new_state: Any) -> None:
        name = new_state.name
        if old_state is not None and old_state.name == name:
            return  # concurrent half-open calls re-enter the same state: not a transition
        log.warning(
            "circuit breaker state change",
            extra={"target": self._target, "from_state": getattr(old_state, "name", None), "to_state": name},
        )
        if self._metrics is not None:
            self._metrics.breaker_state.labels(self._target).set(BREAKER_STATES.get(name, -1))
            self._metrics.breaker_transitions.labels(self._target, name).inc()


def new_breaker(
    *, target: str, fail_max: int, reset_seconds: float, metrics: ServiceMetrics | None = None
) -> pybreaker.CircuitBreaker:
    return pybreaker.CircuitBreaker(
        fail_max=fail_max,
        reset_timeout=reset_seconds,
        exclude=[is_business_error],
        listeners=[_BreakerMetrics(metrics, target)],
        name=target,
    )


@dataclass
class CallPolicy:
    timeout_seconds: float
    attempts: int
    backoff_base_seconds: float = 0.05
    backoff_max_seconds: float = 1.0
    jitter: Callable[[], float] = field(default=random.random)

    def backoff(self, attempt: int) -> float:
        # "Full jitter": uniform in [0, min(max, base * 2^attempt)].
        jitter: float = self.jitter()
        return jitter * min(self.backoff_max_seconds, math.ldexp(self.backoff_base_seconds, attempt))


IdentitySource = auth.Principal | Callable[[], auth.Principal]


class _Metadata:
    """The principal a call acts for, and its trace context.

    A service acting as itself sends no principal: its certificate says who it is.
    """

    def __init__(self, *, service: str, identity: IdentitySource) -> None:
        self._service = service
        self._identity = identity

    def principal(self) -> auth.Principal:
        return self._identity if isinstance(self._identity, auth.Principal) else self._identity()

    def build(self, existing: Sequence[tuple[str, str | bytes]] | None) -> grpc.aio.Metadata:
        metadata = grpc.aio.Metadata(*(existing or ()))
        principal = self.principal()
        if principal.service != self._service:
            for key, value in auth.principal_metadata(principal):
                metadata.add(key, value)
        carrier: dict[str, str] = {}
        inject_metadata(carrier)
        for key, value in carrier.items():
            metadata.add(key, value)
        return metadata


def _method_name(details: grpc.aio.ClientCallDetails) -> str:
    method = details.method
    return method.decode() if isinstance(method, bytes) else method


class _UnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    def __init__(
        self,
        *,
        target: str,
        breaker: pybreaker.CircuitBreaker,
        policy: CallPolicy,
        signer: _Metadata,
        metrics: ServiceMetrics | None,
    ) -> None:
        self._target = target
        self._breaker = breaker
        self._policy = policy
        self._signer = signer
        self._metrics = metrics

    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        method = _method_name(client_call_details)
        attempts = self._policy.attempts if is_idempotent(method) else 1
        timeout = client_call_details.timeout or self._policy.timeout_seconds
        last_error: BaseException | None = None
        for attempt in range(attempts):
            details = grpc.aio.ClientCallDetails(
                method=client_call_details.method,
                timeout=timeout,
                metadata=self._signer.build(client_call_details.metadata),
                credentials=client_call_details.credentials,
                wait_for_ready=client_call_details.wait_for_ready,
            )
            try:
                with self._breaker.calling():
                    call = await continuation(details, request)
                    response = await call
                self._count(method, "OK")
                return response
            except pybreaker.CircuitBreakerError as exc:
                self._count(method, "BREAKER_OPEN")
                raise DependencyUnavailableError(
                    f"{self._target} is unavailable (circuit breaker open)",
                    reason="CIRCUIT_OPEN",
                    metadata={"target": self._target},
                ) from exc
            except grpc.aio.AioRpcError as exc:
                self._count(method, exc.code().name)
                if exc.code() not in RETRYABLE_CODES or attempt + 1 >= attempts:
                    raise
                last_error = exc
                if self._metrics is not None:
                    self._metrics.client_retries.labels(self._target, method).inc()
                await asyncio.sleep(self._policy.backoff(attempt))
        raise AssertionError("unreachable") from last_error

    def _count(self, method: str, code: str) -> None:
        if self._metrics is not None:
            self._metrics.client_calls.labels(self._target, method, code).inc()


class _StreamingBase:
    """Deadline, credential and trace context for streaming calls (no retries: not idempotent).

    grpc.aio files each interceptor under the FIRST interceptor type it matches, so every
    streaming kind needs its own class rather than one class with three bases.
    """

    def __init__(self, *, policy: CallPolicy, signer: _Metadata) -> None:
        self._policy = policy
        self._signer = signer

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        return grpc.aio.ClientCallDetails(
            method=details.method,
            timeout=details.timeout or self._policy.timeout_seconds,
            metadata=self._signer.build(details.metadata),
            credentials=details.credentials,
            wait_for_ready=details.wait_for_ready,
        )


class _UnaryStream(_StreamingBase, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _StreamUnary(_StreamingBase, grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_stream_unary(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return await continuation(self._details(details), request_iterator)


class _StreamStream(_StreamingBase, grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_stream_stream(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return await continuation(self._details(details), request_iterator)


class ChannelFactory:
    """One per process: ``channel("gdpr")`` returns the shared, guarded channel to that service."""

    def __init__(
        self,
        *,
        targets: dict[str, str] | Any,
        service: str,
        identity: IdentitySource,
        mtls: MtlsFiles,
        timeout_seconds: float,
        attempts: int,
        breaker_fail_max: int,
        breaker_reset_seconds: float,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        self._targets = dict(targets)
        self._signer = _Metadata(service=service, identity=identity)
        self._credentials = mtls.channel_credentials()
        self._policy = CallPolicy(timeout_seconds=timeout_seconds, attempts=attempts)
        self._fail_max = breaker_fail_max
        self._reset_seconds = breaker_reset_seconds
        self._metrics = metrics
        self._channels: dict[str, grpc.aio.Channel] = {}
        self.breakers: dict[str, pybreaker.CircuitBreaker] = {}

    def channel(self, name: str) -> grpc.aio.Channel:
        if name not in self._channels:
            address = self._targets.get(name, name)
            breaker = new_breaker(
                target=name, fail_max=self._fail_max, reset_seconds=self._reset_seconds, metrics=self._metrics
            )
            self.breakers[name] = breaker
            self._channels[name] = grpc.aio.secure_channel(
                address,
                self._credentials,
                interceptors=[
                    _UnaryUnary(
                        target=name,
                        breaker=breaker,
                        policy=self._policy,
                        signer=self._signer,
                        metrics=self._metrics,
                    ),
                    _UnaryStream(policy=self._policy, signer=self._signer),
                    _StreamUnary(policy=self._policy, signer=self._signer),
                    _StreamStream(policy=self._policy, signer=self._signer),
                ],
                options=[*CHANNEL_OPTIONS, *channel_options(name)],
            )
        return self._channels[name]

    def probe_channel(self, name: str) -> grpc.aio.Channel:
        """A new channel to ``name`` with this process's certificate but no breaker, retries or
        principal: health probes must not trip (or be blocked by) the calls' breaker. The caller closes it."""
        return grpc.aio.secure_channel(
            self._targets.get(name, name), self._credentials, options=channel_options(name)
        )

    def breaker_states(self) -> dict[str, str]:
        return {name: str(b.current_state) for name, b in self.breakers.items()}

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()


async def call_from_cli(
    settings: Settings,
    *,
    service: str,
    stub_class: Callable[[grpc.aio.Channel], Any],
    method: str,
    request: Any,
    identity: auth.Principal,
    timeout_seconds: float,
    attempts: int,
) -> Any:
    """One call from an operator's command to the running ``service``, acting as ``identity``.

    The command runs beside the service (on its machine, or in its pod) and proves itself with
    that service's own certificate, which may name the principal it acts for.
    """
    settings = with_identity(settings)
    channels = ChannelFactory(
        targets=dict(settings.targets),
        service=settings.service,
        identity=identity,
        mtls=settings.identity,
        timeout_seconds=timeout_seconds,
        attempts=attempts,
        breaker_fail_max=settings.breaker_fail_max,
        breaker_reset_seconds=settings.breaker_reset_seconds,
    )
    try:
        stub = stub_class(channels.channel(service))
        return await getattr(stub, method)(request)
    finally:
        await channels.close()
