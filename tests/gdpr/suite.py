"""The real services started in-process, each on its own port with its own store, as `serve` runs them.

Each service goes through the same steps as ``services.runtime.server.run_server``: ``build_context``
(migrations), its own ``create_app``, ``create_server``, ``on_start``, its background jobs and its health
probe; calls between them go over real sockets with the signed internal credential.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from services.launcher import prepare_data_dir
from services.runtime.auth import Principal
from services.runtime.server import ServiceApp, ServiceContext
from tests.support.resources import free_port
from tests.support.servers import Clients, RunningServer, service_env, start_service, targets_env


@dataclass
class Suite:
    data_dir: Path
    addresses: dict[str, str]
    services: dict[str, RunningServer] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)  # the services' settings, for a gateway in front
    clients: Clients = field(init=False)

    def __post_init__(self) -> None:
        self.clients = Clients(self.addresses, timeout_seconds=30.0, attempts=3, breaker_fail_max=1000)

    def channel(self, service: str, principal: Principal) -> grpc.aio.Channel:
        return self.clients.channel(service, principal)


def _create_app(name: str) -> Callable[[ServiceContext], ServiceApp]:
    module = importlib.import_module(f"services.{name}.app")
    create_app: Callable[[ServiceContext], ServiceApp] = module.create_app
    return create_app


@asynccontextmanager
async def in_process_suite(
    data_dir: Path, *, services: tuple[str, ...], database_url: str = "", **extra_env: str
) -> AsyncIterator[Suite]:
    """Start ``services`` (in dependency order) on free ports; every other target points nowhere."""
    prepare_data_dir(data_dir)  # the development keys `awareness up` creates
    ports = {name: free_port() for name in ("ingest", "policy", "scoring", "signing", "gdpr", "analytics")}
    addresses = {name: f"127.0.0.1:{port}" for name, port in ports.items()}
    env = service_env(
        data_dir,
        database_url=database_url,
        **{
            "AWARENESS_HEALTH_PROBE_SECONDS": "0.5",
            "AWARENESS_BREAKER_RESET_SECONDS": "1",
            # Ingest tells analytics of each ForgetSubject, and fails it while it cannot.
            "AWARENESS_INGEST_ANALYTICS": "true" if "analytics" in services else "false",
            **targets_env(addresses),
            **extra_env,
        },
    )
    suite = Suite(data_dir=data_dir, addresses=addresses, env=env)
    try:
        for name in services:
            suite.services[name] = await start_service(
                name, env, _create_app(name), port=ports[name], health_loop=True
            )
        yield suite
    finally:
        await suite.clients.close()
        for name in reversed(list(suite.services)):
            await suite.services[name].stop()
