"""The real services started in-process, each on its own port with its own store, as `serve` runs them.

Each service goes through the same steps as ``services.runtime.server.run_server``: ``build_context``
(migrations), its own ``create_app``, ``create_server``, ``on_start``, its background jobs and its health
probe; calls between them go over real sockets with the signed internal credential.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from services.launcher import prepare_data_dir
from services.runtime.auth import Principal
from services.runtime.clients import ChannelFactory
from services.runtime.config import load_settings
from services.runtime.server import ServiceApp, ServiceContext, build_context, create_server
from tests.conftest import INTERNAL_SECRET, free_port


@dataclass
class Running:
    name: str
    context: ServiceContext
    app: ServiceApp
    server: grpc.aio.Server
    health: Any
    tasks: list[asyncio.Task[None]]


@dataclass
class Suite:
    data_dir: Path
    addresses: dict[str, str]
    services: dict[str, Running] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)  # the services' settings, for a gateway in front
    _factories: list[ChannelFactory] = field(default_factory=list)

    def channel(self, service: str, principal: Principal) -> grpc.aio.Channel:
        factory = ChannelFactory(
            targets=self.addresses,
            identity=principal,
            internal_secret=INTERNAL_SECRET,
            timeout_seconds=30.0,
            attempts=3,
            breaker_fail_max=1000,
            breaker_reset_seconds=1.0,
        )
        self._factories.append(factory)
        return factory.channel(service)


async def _start(name: str, env: Mapping[str, str], port: int) -> Running:
    context = build_context(load_settings(name, env))
    module = importlib.import_module(f"services.{name}.app")
    app: ServiceApp = module.create_app(context)
    server, health, _ = create_server(app, context, port=port)
    if app.on_start is not None:
        await app.on_start()
    await server.start()
    await health.check_once()
    health.start()
    tasks = [asyncio.create_task(job()) for job in app.background]
    return Running(name=name, context=context, app=app, server=server, health=health, tasks=tasks)


async def _stop(running: Running) -> None:
    await running.health.shutdown()
    await running.server.stop(0)
    for task in running.tasks:
        task.cancel()
    for task in running.tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    if running.app.on_stop is not None:
        await running.app.on_stop()
    await running.context.channels.close()
    if running.context.engine is not None:
        running.context.engine.dispose()


@asynccontextmanager
async def in_process_suite(
    data_dir: Path, *, services: tuple[str, ...], database_url: str = "", **extra_env: str
) -> AsyncIterator[Suite]:
    """Start ``services`` (in dependency order) on free ports; every other target points nowhere."""
    prepare_data_dir(data_dir)  # the development keys `awareness up` creates
    ports = {name: free_port() for name in ("ingest", "policy", "scoring", "signing", "gdpr")}
    env = {
        "AWARENESS_DATA_DIR": str(data_dir),
        "AWARENESS_INTERNAL_SECRET": INTERNAL_SECRET.decode(),
        "AWARENESS_HEALTH_PROBE_SECONDS": "0.5",
        "AWARENESS_BREAKER_RESET_SECONDS": "1",
        **{f"AWARENESS_{name.upper()}_TARGET": f"127.0.0.1:{port}" for name, port in ports.items()},
        **extra_env,
    }
    if database_url:
        env["DATABASE_URL"] = database_url
    suite = Suite(
        data_dir=data_dir, addresses={name: f"127.0.0.1:{port}" for name, port in ports.items()}, env=env
    )
    try:
        for name in services:
            suite.services[name] = await _start(name, env, ports[name])
        yield suite
    finally:
        for factory in suite._factories:
            await factory.close()
        for name in reversed(list(suite.services)):
            await _stop(suite.services[name])
