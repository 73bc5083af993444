"""One in-process server harness for every service's tests.

A service (its real wiring, or a test double's registration) is served by the runtime's own
``create_server`` (mTLS, and its interceptor authorising by the caller's certificate as in
production) on 127.0.0.1, port 0 unless given, and reached through the runtime's ``ChannelFactory``.

Every process of a test run takes its certificate from one directory, ``MTLS_DIR``, made once per
run by :func:`issue_test_identities` (the ``_test_identities`` fixture in tests/conftest.py).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from services.runtime.auth import Principal
from services.runtime.clients import ChannelFactory
from services.runtime.config import ALL_PROCESSES, MTLS_DIR_VAR, SERVICE_SECRET_VAR, load_settings
from services.runtime.devtls import ensure_identity_certificate
from services.runtime.health import HealthReporter
from services.runtime.identity import MtlsFiles, channel_options
from services.runtime.server import ServiceApp, ServiceContext, build_context, create_server

SERVICE_SECRET = b"test-service-secret-0123456789abcdef"
MTLS_DIR = Path(tempfile.gettempdir()) / f"awareness-tests-{os.getpid()}-mtls"
# What every process of a test run is given to prove who it is: its certificate and service secret.
IDENTITY_ENV = {MTLS_DIR_VAR: str(MTLS_DIR), SERVICE_SECRET_VAR: SERVICE_SECRET.decode()}
# Services the tests serve besides the real ones.
TEST_IDENTITIES = (*ALL_PROCESSES, "test")


def issue_test_identities() -> None:
    """Every identity a test may serve or call as, before any process of the run needs one."""
    for name in TEST_IDENTITIES:
        ensure_identity_certificate(MTLS_DIR, name)


def identity_of(service: str) -> MtlsFiles:
    """``service``'s test certificate (issued now if it is not one of ``TEST_IDENTITIES``)."""
    ensure_identity_certificate(MTLS_DIR, service)
    return MtlsFiles.in_directory(MTLS_DIR, service)


def mtls_channel(address: str, *, server: str, caller: str = "gateway") -> grpc.aio.Channel:
    """A bare channel to ``server`` at ``address``, proving itself as ``caller``: no principal is
    added, so a test sends exactly the metadata it means to."""
    return grpc.aio.secure_channel(
        address, identity_of(caller).channel_credentials(), options=channel_options(server)
    )


def service_env(data_dir: Path, *, database_url: str | None = None, **extra: str) -> dict[str, str]:
    """What every in-process service is given: its data directory, the tests' identities and a
    quick health probe; ``DATABASE_URL`` when one is given (else its SQLite file), then ``extra``."""
    env = {
        "AWARENESS_DATA_DIR": str(data_dir),
        **IDENTITY_ENV,
        "AWARENESS_HEALTH_PROBE_SECONDS": "0.2",
        **extra,
    }
    if database_url:
        env["DATABASE_URL"] = database_url
    return env


def targets_env(addresses: Mapping[str, str]) -> dict[str, str]:
    """``AWARENESS_<SERVICE>_TARGET`` for each service's address."""
    return {f"AWARENESS_{name.upper()}_TARGET": address for name, address in addresses.items()}


def client_factory(
    targets: Mapping[str, str],
    principal: Principal,
    *,
    timeout_seconds: float = 20.0,
    attempts: int = 1,
    breaker_fail_max: int = 100,
    breaker_reset_seconds: float = 1.0,
) -> ChannelFactory:
    """Channels that call ``targets`` as ``principal``: a service with its own certificate, anyone
    else carried by the gateway's."""
    caller = principal.service or "gateway"
    return ChannelFactory(
        targets=dict(targets),
        service=caller,
        identity=principal,
        mtls=identity_of(caller),
        timeout_seconds=timeout_seconds,
        attempts=attempts,
        breaker_fail_max=breaker_fail_max,
        breaker_reset_seconds=breaker_reset_seconds,
    )


@dataclass
class Clients:
    """Channel factories to ``targets`` handed out to a test (one per principal), closed at once."""

    targets: dict[str, str]
    timeout_seconds: float = 20.0
    attempts: int = 1
    breaker_fail_max: int = 100
    breaker_reset_seconds: float = 1.0
    factories: dict[Principal, ChannelFactory] = field(default_factory=dict)

    def channel(self, service: str, principal: Principal) -> grpc.aio.Channel:
        factory = self.factories.get(principal)
        if factory is None:
            factory = client_factory(
                self.targets,
                principal,
                timeout_seconds=self.timeout_seconds,
                attempts=self.attempts,
                breaker_fail_max=self.breaker_fail_max,
                breaker_reset_seconds=self.breaker_reset_seconds,
            )
            self.factories[principal] = factory
        return factory.channel(service)

    async def close(self) -> None:
        for factory in self.factories.values():
            await factory.close()
        self.factories.clear()


@dataclass
class RunningServer:
    """One server started by :func:`start_server`; :meth:`stop` undoes every step of it."""

    app: ServiceApp
    context: ServiceContext
    server: grpc.aio.Server
    health: HealthReporter
    port: int
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    recording: asyncio.Task[None] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def stop(self) -> None:
        """As ``run_server`` drains, without grace: health, server, records, jobs, on_stop, peers, store."""
        await self.health.shutdown()
        await self.server.stop(0)
        if self.recording is not None and self.context.audit is not None:
            self.recording.cancel()
            await asyncio.gather(self.recording, return_exceptions=True)
            await self.context.audit.drain(timeout_seconds=1.0)
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.app.on_stop is not None:
            await self.app.on_stop()
        await self.context.channels.close()
        if self.context.engine is not None:
            self.context.engine.dispose()


@dataclass
class Served:
    """A test's handle on one :class:`RunningServer`, with its address and context at hand."""

    running: RunningServer

    @property
    def address(self) -> str:
        return self.running.address

    @property
    def context(self) -> ServiceContext:
        return self.running.context


async def start_server(
    app: ServiceApp,
    context: ServiceContext,
    *,
    port: int = 0,
    background_jobs: bool = True,
    health_loop: bool = False,
) -> RunningServer:
    """Serve ``app`` as ``run_server`` does: on_start, the server, a first health check, then (unless
    a test drives them itself) the app's background jobs; the periodic probe only on request."""
    server, health, bound = create_server(app, context, port=port)
    if app.audit_sink is not None and context.audit is not None:
        context.audit.sink = app.audit_sink
    if app.on_start is not None:
        await app.on_start()
    await server.start()
    await health.check_once()
    if health_loop:
        health.start()
    jobs = app.background if background_jobs else []
    tasks = [asyncio.create_task(job()) for job in jobs]
    recording = asyncio.create_task(context.audit.run()) if context.audit is not None else None
    return RunningServer(
        app=app, context=context, server=server, health=health, port=bound, tasks=tasks, recording=recording
    )


async def start_service(
    name: str,
    env: Mapping[str, str],
    create_app: Callable[[ServiceContext], ServiceApp],
    *,
    port: int = 0,
    background_jobs: bool = True,
    health_loop: bool = False,
) -> RunningServer:
    """``build_context`` (with migrations) on ``env``, ``create_app``, then :func:`start_server`."""
    context = build_context(load_settings(name, dict(env)))
    app = create_app(context)
    return await start_server(
        app, context, port=port, background_jobs=background_jobs, health_loop=health_loop
    )


@asynccontextmanager
async def serving(
    name: str, register: Callable[[grpc.aio.Server], None], service_names: Iterable[str]
) -> AsyncIterator[RunningServer]:
    """A test double (``register`` adds its servicers) behind the runtime's server, without a store."""
    context = build_context(load_settings(name, IDENTITY_ENV), with_database=False)
    app = ServiceApp(name=name, service_names=list(service_names), register=register)
    running = await start_server(app, context)
    try:
        yield running
    finally:
        await running.stop()


def unary_app(
    service: str,
    methods: Mapping[str, Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]],
    *,
    ready: Callable[[], bool] = lambda: True,
) -> ServiceApp:
    """A test service of raw-bytes unary methods (no protos), e.g. ``test.Peer/Who``."""
    handler = grpc.method_handlers_generic_handler(
        service, {name: grpc.unary_unary_rpc_method_handler(method) for name, method in methods.items()}
    )
    return ServiceApp(
        name="test",
        service_names=[service],
        register=lambda server: server.add_generic_rpc_handlers((handler,)),
        ready=ready,
    )
