"""In-process fixtures: the real gateway app in front of fake backends on real gRPC ports.

The fakes run behind the runtime's real server interceptor, one per service and each with that
service's certificate (the gateway's channel to ingest accepts only ingest's), so the gateway's
certificate and the principal it names are checked exactly as in production; each fake records
what it received.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from awareness.gdpr.v1 import gdpr_pb2, gdpr_pb2_grpc
from awareness.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from awareness.policy.v1 import policy_pb2, policy_pb2_grpc
from awareness.signing.v1 import signing_pb2, signing_pb2_grpc
from starlette.applications import Starlette

from services.gateway.app import create_gateway
from services.runtime import auth
from services.runtime.config import SERVICES, load_settings
from services.runtime.errors import FailedPreconditionError, FieldViolation, NotFoundError
from tests.support.servers import IDENTITY_ENV, serving

EXPORT_CHUNKS = (b'{"subject": ', b'"alice@example.org", ', b'"events": []}')


@dataclass
class Seen:
    """What the fake backends received, for assertions."""

    principals: list[auth.Principal] = field(default_factory=list)
    events: dict[str, ingest_pb2.Event] = field(default_factory=dict)
    requests: list[Any] = field(default_factory=list)
    traceparents: list[str] = field(default_factory=list)  # W3C trace context of each ingest call


class FakeIngest(ingest_pb2_grpc.IngestServiceServicer):
    def __init__(self, seen: Seen) -> None:
        self.seen = seen

    def _record(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        principal = auth.current_principal()
        assert principal is not None
        self.seen.principals.append(principal)
        self.seen.requests.append(request)
        for key, value in context.invocation_metadata() or ():
            if key == "traceparent":
                self.seen.traceparents.append(str(value))

    async def AppendEvent(self, request: ingest_pb2.AppendEventRequest, context: Any) -> Any:
        self._record(request, context)
        event_id = request.event.event_id or f"generated-{len(self.seen.events)}"
        replayed = event_id in self.seen.events
        self.seen.events.setdefault(event_id, request.event)
        receipt = ingest_pb2.Receipt(event_id=event_id, state=ingest_pb2.Receipt.STATE_ACCEPTED)
        return ingest_pb2.AppendEventResponse(receipt=receipt, replayed=replayed)

    async def GetEvent(self, request: ingest_pb2.GetEventRequest, context: Any) -> Any:
        self._record(request, context)
        event_id = request.name.removeprefix("events/")
        if event_id not in self.seen.events:
            raise NotFoundError(
                f"no event {request.name}", reason="EVENT_NOT_FOUND", metadata={"name": request.name}
            )
        event = ingest_pb2.Event()
        event.CopyFrom(self.seen.events[event_id])
        event.name = f"events/{event_id}"
        return event

    async def ListEvents(self, request: ingest_pb2.ListEventsRequest, context: Any) -> Any:
        self._record(request, context)
        return ingest_pb2.ListEventsResponse(events=list(self.seen.events.values()), next_page_token="")

    async def LabelEvent(self, request: ingest_pb2.LabelEventRequest, context: Any) -> Any:
        self._record(request, context)
        return ingest_pb2.Event(name=request.name)


class FakePolicy(policy_pb2_grpc.PolicyServiceServicer):
    def __init__(self, seen: Seen) -> None:
        self.seen = seen

    async def ApprovePolicy(self, request: policy_pb2.ApprovePolicyRequest, context: Any) -> Any:
        self.seen.requests.append(request)
        raise FailedPreconditionError(
            "policy is not in review",
            reason="POLICY_NOT_IN_REVIEW",
            violations=[FieldViolation("name", "policy is a DRAFT")],
        )

    async def UpdatePolicy(self, request: policy_pb2.UpdatePolicyRequest, context: Any) -> Any:
        self.seen.requests.append(request)
        return request.policy


class FakeGdpr(gdpr_pb2_grpc.GdprServiceServicer):
    def __init__(self, seen: Seen) -> None:
        self.seen = seen

    async def ExportSubject(self, request: gdpr_pb2.ExportSubjectRequest, context: Any) -> Any:
        self.seen.requests.append(request)
        if request.subject == "nobody@example.org":
            raise NotFoundError("no such subject", reason="SUBJECT_NOT_FOUND")
        for chunk in EXPORT_CHUNKS:
            yield gdpr_pb2.ExportSubjectResponse(data=chunk)


class FakeSigning(signing_pb2_grpc.SigningServiceServicer):
    def __init__(self, seen: Seen) -> None:
        self.seen = seen

    async def Timestamp(self, request: signing_pb2.TimestampRequest, context: Any) -> Any:
        self.seen.requests.append(request)
        return signing_pb2.TimestampResponse(response=b"reply:" + request.request)


def register_fakes(service: str, seen: Seen) -> Callable[[grpc.aio.Server], None]:
    """The fake of ``service``'s API (none for scoring and analytics: their calls are UNIMPLEMENTED)."""

    def register(server: grpc.aio.Server) -> None:
        if service == "ingest":
            ingest_pb2_grpc.add_IngestServiceServicer_to_server(FakeIngest(seen), server)  # type: ignore[abstract]
        elif service == "policy":
            policy_pb2_grpc.add_PolicyServiceServicer_to_server(FakePolicy(seen), server)  # type: ignore[abstract]
        elif service == "gdpr":
            gdpr_pb2_grpc.add_GdprServiceServicer_to_server(FakeGdpr(seen), server)  # type: ignore[abstract]
        elif service == "signing":
            signing_pb2_grpc.add_SigningServiceServicer_to_server(FakeSigning(seen), server)  # type: ignore[abstract]

    return register


FAKE_SERVICE_NAMES: Mapping[str, tuple[str, ...]] = {
    "ingest": ("awareness.ingest.v1.IngestService",),
    "policy": ("awareness.policy.v1.PolicyService",),
    "gdpr": ("awareness.gdpr.v1.GdprService",),
    "signing": ("awareness.signing.v1.SigningService",),
    "scoring": (),
    "analytics": (),
}

# Where the gateway finds each backend: one address per service, or one address for all of them
# (where nothing listens, or nothing the gateway's channels would accept).
Backends = Mapping[str, str] | str


@asynccontextmanager
async def fake_backends(seen: Seen) -> AsyncIterator[dict[str, str]]:
    """One fake server per service, each served under that service's name and certificate."""
    async with AsyncExitStack() as stack:
        addresses: dict[str, str] = {}
        for service in SERVICES:
            fake = await stack.enter_async_context(
                serving(service, register_fakes(service, seen), FAKE_SERVICE_NAMES[service])
            )
            addresses[service] = fake.address
        yield addresses


GOPHISH_SECRET = "gophish-test-secret-0123456789abcdef"


def gateway_env(tmp_path: Path, backend: Backends, **extra: str) -> dict[str, str]:
    addresses = {s: backend for s in SERVICES} if isinstance(backend, str) else dict(backend)
    env = {
        "AWARENESS_DATA_DIR": str(tmp_path),
        **IDENTITY_ENV,
        "AWARENESS_GOPHISH_SECRET": GOPHISH_SECRET,
        "AWARENESS_BREAKER_RESET_SECONDS": "30",
        **{f"AWARENESS_{s.upper()}_TARGET": address for s, address in addresses.items()},
    }
    env.update(extra)
    return env


class FakeClock:
    """A clock that moves only when a test sets ``now``."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Harness:
    client: httpx.AsyncClient
    app: Starlette
    seen: Seen
    tmp_path: Path
    env: dict[str, str]


@pytest.fixture
def seen() -> Seen:
    return Seen()


@pytest.fixture
async def backend(seen: Seen) -> AsyncIterator[dict[str, str]]:
    async with fake_backends(seen) as addresses:
        yield addresses


async def open_harness(tmp_path: Path, backend: Backends, seen: Seen, **extra: str) -> Harness:
    env = gateway_env(tmp_path, backend, **extra)
    app = create_gateway(load_settings("gateway", env))
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway.test")
    return Harness(client=client, app=app, seen=seen, tmp_path=tmp_path, env=env)


async def admin_get(harness: Harness, path: str) -> httpx.Response:
    """GET on the gateway's admin app: /metrics and /health/dependencies are not on the public port."""
    transport = httpx.ASGITransport(app=harness.app.state.admin)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway-admin.test") as admin:
        return await admin.get(path)


async def close_harness(harness: Harness) -> None:
    await harness.client.aclose()
    await harness.app.state.gateway.close()


@asynccontextmanager
async def running_gateway(
    tmp_path: Path, backend: Backends, seen: Seen, **extra: str
) -> AsyncIterator[Harness]:
    """The gateway app (settings ``extra`` on top of the harness's) in front of the fakes at ``backend``."""
    harness = await open_harness(tmp_path, backend, seen, **extra)
    try:
        yield harness
    finally:
        await close_harness(harness)


@pytest.fixture
async def gateway(tmp_path: Path, backend: Backends, seen: Seen) -> AsyncIterator[Harness]:
    async with running_gateway(tmp_path, backend, seen) as harness:
        yield harness


def run_cli(harness_env: dict[str, str], *argv: str) -> tuple[int, str]:
    """Run the real ``awareness`` CLI in process against the harness's store only."""
    import contextlib
    import io
    import os

    from services.cli import main

    out = io.StringIO()
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update({k: v for k, v in saved.items() if k not in ("DATABASE_URL", "REDIS_URL")})
    os.environ.update(harness_env)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
            code = main(list(argv))
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return code, out.getvalue()


def create_key(harness_env: dict[str, str], *roles: str, expires_in_days: int | None = None) -> str:
    """A key created through the real CLI code path (same store as the gateway)."""
    argv = ["keys", "create", "--name", "test"]
    for role in roles:
        argv += ["--role", role]
    if expires_in_days is not None:
        argv += ["--expires-in-days", str(expires_in_days)]
    code, out = run_cli(harness_env, *argv)
    assert code == 0
    return out.strip()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def status_reason(body: dict[str, Any]) -> str:
    for detail in body.get("details", []):
        if detail.get("@type", "").endswith("google.rpc.ErrorInfo"):
            return str(detail.get("reason", ""))
    return ""


@pytest.fixture
def env_guard() -> Iterator[None]:
    import os

    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def dumps(value: Any) -> bytes:
    return json.dumps(value).encode()
