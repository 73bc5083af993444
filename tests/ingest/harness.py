"""Run the REAL ingest, gdpr and signing services in-process (each its own server, store and
settings, talking mTLS over 127.0.0.1), and make clients for them with the suite's certificates."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
from awareness.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from google.protobuf.timestamp_pb2 import Timestamp

from services.ingest.app import IngestRuntime, app_for, load_ingest_settings
from services.ingest.domain.events import EventInput, new_event_id
from services.runtime import auth
from services.runtime.clients import ChannelFactory
from services.runtime.config import load_settings
from services.runtime.server import build_context
from tests.support.resources import free_port
from tests.support.servers import Served, client_factory, mtls_channel, start_server, targets_env
from tests.support.servers import service_env as shared_service_env
from tests.support.suite import REPO, run_module

FAST_INGEST = {
    "AWARENESS_INGEST_INTEGRATE_INTERVAL_MS": "20",
    "AWARENESS_INGEST_CHECKPOINT_INTERVAL_MS": "50",
    "AWARENESS_INGEST_RECONCILE_INTERVAL_SECONDS": "0.2",
    "AWARENESS_INGEST_RECONCILE_SETTLE_SECONDS": "0",
    "AWARENESS_BREAKER_RESET_SECONDS": "0.3",
    "AWARENESS_CALL_TIMEOUT_SECONDS": "3",
}


def service_env(
    *, data_dir: Path, ports: dict[str, int], database_url: str | None = None, **extra: str
) -> dict[str, str]:
    addresses = {name: f"127.0.0.1:{port}" for name, port in ports.items()}
    return shared_service_env(
        data_dir,
        database_url=database_url,
        **{"AWARENESS_METRICS_PORT": "0", **targets_env(addresses), **extra},
    )


@dataclass
class Running(Served):
    """One started service, and ingest's runtime (integrator, reconciler, ...) when it is ingest."""

    runtime: IngestRuntime | None = None

    async def stop(self) -> None:
        await self.running.stop()


async def start_service(name: str, env: dict[str, str], *, port: int) -> Running:
    context = build_context(load_settings(name, env))
    runtime: IngestRuntime | None = None
    if name == "ingest":
        runtime = IngestRuntime(context, load_ingest_settings(context.settings))
        app = app_for(runtime, context)
    else:
        app = importlib.import_module(f"services.{name}.app").create_app(context)
    return Running(await start_server(app, context, port=port), runtime)


@dataclass
class Suite:
    """Real gdpr + signing + ingest, in this event loop."""

    data_dir: Path
    database_url: str | None
    ports: dict[str, int]
    services: dict[str, Running] = field(default_factory=dict)
    factories: list[ChannelFactory] = field(default_factory=list)
    ingest_env: dict[str, str] = field(default_factory=dict)

    def env(self, **extra: str) -> dict[str, str]:
        return service_env(data_dir=self.data_dir, ports=self.ports, database_url=self.database_url, **extra)

    async def start(self, *names: str) -> None:
        for name in names:
            # Ingest feeds analytics only in a suite that runs it: elsewhere ForgetSubject could not
            # tell analytics, and would fail (for gdpr to retry) as it does in production.
            feed = {"AWARENESS_INGEST_ANALYTICS": "true" if "analytics" in self.services else "false"}
            extra = {**FAST_INGEST, **feed, **self.ingest_env} if name == "ingest" else {}
            self.services[name] = await start_service(name, self.env(**extra), port=self.ports[name])

    async def stop(self, name: str) -> None:
        running = self.services.pop(name, None)
        if running is not None:
            await running.stop()

    @property
    def ingest(self) -> IngestRuntime:
        runtime = self.services["ingest"].runtime
        assert runtime is not None
        return runtime

    def channel(
        self,
        service: str = "ingest",
        *,
        roles: Iterable[str] = ("admin",),
        address: str | None = None,
        caller: str | None = None,
    ) -> grpc.aio.Channel:
        """A channel to `service` as a tester with `roles` (carried by the gateway's certificate), or
        as the service `caller` itself (with its own certificate)."""
        targets = {name: f"127.0.0.1:{port}" for name, port in self.ports.items()}
        if address is not None:
            targets[service] = address
        principal = (
            auth.Principal.for_service(caller)
            if caller is not None
            else auth.Principal(subject="tester", roles=frozenset(roles))
        )
        factory = client_factory(
            targets, principal, timeout_seconds=10.0, breaker_fail_max=1000, breaker_reset_seconds=0.1
        )
        self.factories.append(factory)
        return factory.channel(service)

    def client(
        self, *, roles: Iterable[str] = ("admin",), address: str | None = None
    ) -> ingest_pb2_grpc.IngestServiceStub:
        """An ingest stub (of this suite's replica, or of another replica at `address`)."""
        return ingest_pb2_grpc.IngestServiceStub(self.channel("ingest", roles=roles, address=address))

    def internal(self, caller: str = "gdpr") -> ingest_pb2_grpc.IngestServiceStub:
        """An ingest stub as the service `caller` (gdpr, which erases and exports, by default)."""
        return ingest_pb2_grpc.IngestServiceStub(self.channel("ingest", caller=caller))

    async def stream(
        self, batches: Iterable[list[ingest_pb2.Event]], *, roles: Iterable[str] = ("integration",)
    ) -> list[ingest_pb2.AppendEventsResponse]:
        """StreamAppendEvents on a bare mTLS channel: the gateway's certificate, carrying a tester
        with ``roles`` in the principal headers."""
        principal = auth.Principal("tester", frozenset(roles))

        async def requests() -> AsyncIterator[ingest_pb2.AppendEventsRequest]:
            for batch in batches:
                yield ingest_pb2.AppendEventsRequest(events=batch)

        async with mtls_channel(self.services["ingest"].address, server="ingest") as channel:
            call = ingest_pb2_grpc.IngestServiceStub(channel).StreamAppendEvents(
                requests(), metadata=auth.principal_metadata(principal)
            )
            return [answer async for answer in call]

    async def close(self) -> None:
        for factory in self.factories:
            await factory.close()
        for name in list(self.services)[::-1]:
            await self.stop(name)


@contextlib.asynccontextmanager
async def suite(
    tmp_path: Path,
    *,
    database_url: str | None = None,
    services: Iterable[str] = ("signing", "gdpr", "ingest"),
    ingest_env: dict[str, str] | None = None,
) -> AsyncIterator[Suite]:
    running = Suite(
        data_dir=tmp_path,
        database_url=database_url,
        ports={name: free_port() for name in ("signing", "gdpr", "ingest", "scoring", "policy", "analytics")},
        ingest_env=dict(ingest_env or {}),
    )

    try:
        await running.start(*services)
        yield running
    finally:
        await running.close()


def timestamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def awareness_verify(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """``awareness verify <args>`` in a child process, as an auditor runs it; the caller checks
    its exit code and output."""
    return run_module(
        "services.cli", "verify", *map(str, args), env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120
    )


INPUT_NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)  # the "now" an event_input() is valid at


def event_input(**changes: object) -> EventInput:
    """An event as ingest's domain receives it, valid at INPUT_NOW, with ``changes`` applied."""
    event = EventInput(
        event_id=new_event_id(),
        type="phishing.clicked",
        source="gophish",
        subject="alice@example.com",
        occurred_at=INPUT_NOW - timedelta(minutes=1),
        severity="high",
        summary="clicked the campaign link",
        details={"campaign": "q2", "url": "https://example.test/x"},
    )
    for name, value in changes.items():
        setattr(event, name, value)
    return event


def make_event(
    *,
    subject: str = "alice@example.org",
    event_type: str = "phishing.clicked",
    source: str = "gophish",
    summary: str = "clicked the quarterly-bonus link",
    details: dict[str, str] | None = None,
    occurred_at: datetime | None = None,
    event_id: str | None = None,
    severity: int = ingest_pb2.SEVERITY_HIGH,
) -> ingest_pb2.Event:
    return ingest_pb2.Event(
        event_id=event_id if event_id is not None else str(uuid.uuid4()),
        type=event_type,
        source=source,
        subject=subject,
        occurred_at=timestamp(occurred_at or datetime.now(UTC) - timedelta(minutes=1)),
        severity=severity,  # type: ignore[arg-type]
        summary=summary,
        details=details if details is not None else default_details(event_type),
    )


def default_details(event_type: str) -> dict[str, str]:
    """Details the type declares (docs/data-minimisation.md): a dimension and, where the type has
    one, a personal or free-text key."""
    if event_type.startswith("phishing."):
        return {"campaign_id": "q3-bonus", "url": "https://bonus.example"}
    if event_type.startswith("training."):
        return {"training_module": "phishing-101", "location": "hq"}
    return {"location": "hq", "source_event_id": "src-1"}


async def eventually(
    probe: Callable[[], Any], *, timeout: float = 20.0, interval: float = 0.05, what: str = "condition"
) -> Any:
    """Poll an (async) probe until it returns a truthy value; fail after `timeout` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = probe()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(interval)
