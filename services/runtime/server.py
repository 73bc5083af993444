"""Build and run a service's grpc.aio server.

``create_server`` wires health, reflection and the interceptor; ``serve`` adds the
process concerns: logging, tracing, metrics endpoint, migrations, signals and a
graceful drain on SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from sqlalchemy import Engine
from sqlalchemy import exc as sqlalchemy_exc
from sqlalchemy.orm import Session, sessionmaker

from services.runtime import audit, auth, db, identity, migrations, recovery
from services.runtime.audit import AuditRecorder
from services.runtime.clients import ChannelFactory
from services.runtime.config import Settings, with_identity
from services.runtime.health import HealthReporter
from services.runtime.interceptors import PermissionLookup, ServerInterceptor
from services.runtime.logs import configure_logging
from services.runtime.metrics import ServiceMetrics
from services.runtime.process import run_main, tune_garbage_collector
from services.runtime.tracing import configure_tracing, shutdown_tracing

log = logging.getLogger("awareness.server")


@dataclass
class ServiceContext:
    """What the runtime gives a service: settings, store, metrics and guarded channels."""

    settings: Settings
    metrics: ServiceMetrics
    channels: ChannelFactory
    engine: Engine | None = None
    sessions: sessionmaker[Session] | None = None
    audit: AuditRecorder | None = None


@dataclass
class ServiceApp:
    """What a service gives the runtime."""

    name: str
    service_names: Sequence[str]
    register: Callable[[grpc.aio.Server], None]
    ready: Callable[[], bool] = lambda: True
    permission_for: PermissionLookup | None = None
    on_start: Callable[[], Awaitable[None]] | None = None
    on_stop: Callable[[], Awaitable[None]] | None = None
    background: list[Callable[[], Coroutine[Any, Any, None]]] = field(default_factory=list)
    # Request fields the service checks item by item itself, so that one bad item refuses only
    # that item; the generic request check (services.runtime.validation) skips them.
    validated_fields: frozenset[str] = frozenset()
    # Where the service's access records go instead of ingest's AppendEvents (ingest's own writer).
    audit_sink: audit.Sink | None = None


def build_context(settings: Settings, *, with_database: bool = True, migrate: bool = True) -> ServiceContext:
    settings = with_identity(settings)
    metrics = ServiceMetrics(settings.service)
    channels = ChannelFactory(
        targets=dict(settings.targets),
        service=settings.service,
        identity=auth.Principal.for_service(settings.service),
        mtls=settings.identity,
        timeout_seconds=settings.call_timeout_seconds,
        attempts=settings.retry_attempts,
        breaker_fail_max=settings.breaker_fail_max,
        breaker_reset_seconds=settings.breaker_reset_seconds,
        metrics=metrics,
    )
    recorder = AuditRecorder(
        source=settings.service,
        # Without an ingest target (a unit under test, or ingest itself) the app may give its own sink.
        sink=audit.ingest_sink(lambda: channels.channel("ingest")) if "ingest" in settings.targets else None,
        metrics=metrics,
    )
    context = ServiceContext(settings=settings, metrics=metrics, channels=channels, audit=recorder)
    if with_database:
        context.engine = db.create_db_engine(settings.database_url, service=settings.service)
        with contextlib.suppress(sqlalchemy_exc.OperationalError):  # a down database shows in health
            recovery.refuse_if_restored(context.engine, service=settings.service)
        if migrate:
            migrations.upgrade(settings.service, context.engine)
        with contextlib.suppress(Exception):  # creates an SQLite file; a down database shows in health
            context.engine.connect().close()
        context.sessions = db.session_factory(context.engine)
    return context


# gRPC channel arguments are C ints (milliseconds); INT_MAX is gRPC's own "unlimited".
_INT_MAX = 2**31 - 1


def _milliseconds(seconds: float) -> int:
    return min(_INT_MAX, max(1, round(seconds * 1000)))


def connection_age_options(settings: Settings) -> list[tuple[str, int]]:
    """Server options that close each connection after a maximum age (none when the age is 0).

    A client holds one HTTP/2 connection per channel and never looks for new replicas while it
    lasts. When the age is reached the server sends GOAWAY (gRPC adds +/-10 % jitter so clients
    do not reconnect in step): the client opens a new connection for new calls, re-resolving
    the headless Service's DNS name on the way, while calls already in flight may run on for
    the grace period.
    """
    if settings.grpc_max_connection_age_seconds <= 0:
        return []
    return [
        ("grpc.max_connection_age_ms", _milliseconds(settings.grpc_max_connection_age_seconds)),
        ("grpc.max_connection_age_grace_ms", _milliseconds(settings.grpc_max_connection_age_grace_seconds)),
    ]


def create_server(
    app: ServiceApp, context: ServiceContext, *, port: int | None = None
) -> tuple[grpc.aio.Server, HealthReporter, int]:
    settings = context.settings
    server = grpc.aio.server(
        interceptors=[
            ServerInterceptor(
                service=app.name,
                metrics=context.metrics,
                permission_for=app.permission_for,
                validated_fields=app.validated_fields,
                recorder=context.audit,
            )
        ],
        options=[
            ("grpc.max_receive_message_length", 32 * 1024 * 1024),
            # Several workers share the port and the kernel spreads connections among them; one
            # process alone keeps 0, so a port another process holds fails the bind.
            ("grpc.so_reuseport", 1 if settings.workers > 1 else 0),
            *connection_age_options(settings),
        ],
    )
    app.register(server)
    health = HealthReporter(
        service_names=app.service_names,
        probe=app.ready,
        interval_seconds=settings.health_probe_seconds,
        metrics=context.metrics,
    )
    health_pb2_grpc.add_HealthServicer_to_server(health.servicer, server)
    reflection.enable_server_reflection(
        (*app.service_names, "grpc.health.v1.Health", reflection.SERVICE_NAME), server
    )
    address = f"{settings.host}:{settings.grpc_port if port is None else port}"
    bound = server.add_secure_port(address, settings.identity.server_credentials())
    if bound == 0:
        raise OSError(f"cannot bind {address}")
    # Plaintext for kubelet's gRPC probes, which cannot present a certificate. Every other method
    # is refused on it: the interceptor finds no client certificate.
    if settings.health_port and server.add_insecure_port(f"{settings.host}:{settings.health_port}") == 0:
        raise OSError(f"cannot bind {settings.host}:{settings.health_port}")
    return server, health, bound


async def run_server(
    app: ServiceApp,
    context: ServiceContext,
    *,
    stop_event: asyncio.Event | None = None,
    renewal_check_seconds: float = identity.RENEWAL_CHECK_SECONDS,
    renewal_spread_seconds: float = identity.RENEWAL_SPREAD_SECONDS,
) -> None:
    """Start, report health, wait for a stop signal (or a renewed certificate), then drain in-flight calls."""
    settings = context.settings
    server, health, bound = create_server(app, context)
    stop = stop_event or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread (tests)
            loop.add_signal_handler(sig, stop.set)
    if app.audit_sink is not None and context.audit is not None:
        context.audit.sink = app.audit_sink
    if app.on_start is not None:
        await app.on_start()
    await server.start()
    await health.check_once()
    health.start()
    tasks: list[asyncio.Task[None]] = [
        asyncio.create_task(job(), name=getattr(job, "__name__", "job")) for job in app.background
    ]
    recording = asyncio.create_task(context.audit.run(), name="audit") if context.audit is not None else None
    renewal = asyncio.create_task(
        identity.renewed(
            settings.identity,
            interval_seconds=renewal_check_seconds,
            spread_seconds=renewal_spread_seconds,
        )
    )
    renewal.add_done_callback(lambda _: stop.set())
    tasks.append(renewal)
    log.info(
        "serving",
        extra={
            "port": bound,
            "worker": settings.worker_index,
            "services": list(app.service_names),
            "max_connection_age_seconds": settings.grpc_max_connection_age_seconds,
        },
    )
    await stop.wait()
    log.info("draining", extra={"grace_seconds": settings.shutdown_grace_seconds})
    await health.shutdown()
    await server.stop(settings.shutdown_grace_seconds)
    if recording is not None and context.audit is not None:
        # After the last call, and while the service's own jobs still run (ingest's writer): the
        # records queued, and any that waited for ingest, go out before anything closes.
        recording.cancel()
        await asyncio.gather(recording, return_exceptions=True)
        await context.audit.drain(timeout_seconds=settings.shutdown_grace_seconds)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    if app.on_stop is not None:
        await app.on_stop()
    await context.channels.close()
    log.info("stopped")


def serve(
    settings: Settings, factory: Callable[[ServiceContext], ServiceApp], *, with_database: bool = True
) -> None:
    """The whole life of one service process (``awareness serve <service>``)."""
    configure_logging(service=settings.service, level=settings.log_level)
    configure_tracing(service=settings.service, exporter=settings.traces_exporter)
    context = build_context(settings, with_database=with_database)
    if context.engine is not None:
        _instrument_sqlalchemy(context.engine)
    context.metrics.serve(host=settings.host, port=settings.metrics_port)
    app = factory(context)
    tune_garbage_collector()
    try:
        run_main(run_server(app, context), event_loop=settings.event_loop)
    finally:
        shutdown_tracing()
        if context.engine is not None:
            context.engine.dispose()


def _instrument_sqlalchemy(engine: Engine) -> Any:
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    return SQLAlchemyInstrumentor().instrument(engine=engine)
