"""The policy service in-process over real sockets, on a SQLite file or a fresh PostgreSQL database."""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from awareness.policy.v1 import policy_pb2, policy_pb2_grpc
from google.protobuf import timestamp_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from services.policy.app import create_app
from services.runtime import auth
from services.runtime.errors import FieldViolation, error_info, field_violations
from tests.support.servers import Clients, Served, service_env, start_service

ALICE = auth.Principal("alice", frozenset({"policy_author"}))
BOB = auth.Principal("bob", frozenset({"policy_author"}))
CAROL = auth.Principal("carol", frozenset({"policy_approver"}))
DAVE = auth.Principal("dave", frozenset({"policy_approver"}))
# Holds both roles: may write and approve, but never approve what they wrote or submitted.
ERIN = auth.Principal("erin", frozenset({"policy_author", "policy_approver"}))
ANALYST = auth.Principal("ivan", frozenset({"analyst"}))

AFTER_HOURS_CLICK = 'event.type == "phishing.clicked" && event.outside_hours'


@dataclass
class Replica(Served):
    """One running policy server; ``as_(principal)`` gives a stub calling it as that principal."""

    clients: Clients

    def as_(self, principal: auth.Principal) -> policy_pb2_grpc.PolicyServiceAsyncStub:
        channel = self.clients.channel("policy", principal)
        return policy_pb2_grpc.PolicyServiceStub(channel)  # type: ignore[return-value]

    async def stop(self) -> None:
        await self.clients.close()
        await self.running.stop()


@dataclass
class PolicyStore:
    """A database the tests start (and restart) policy servers on."""

    url: str
    data_dir: Path
    replicas: list[Replica] = field(default_factory=list)

    async def start(self, **extra_env: str) -> Replica:
        env = service_env(
            self.data_dir,
            **{"AWARENESS_POLICY_DATABASE_URL": self.url, "AWARENESS_METRICS_PORT": "0", **extra_env},
        )
        running = await start_service("policy", env, create_app)
        replica = Replica(running, Clients({"policy": running.address}, breaker_fail_max=1000))
        self.replicas.append(replica)
        return replica

    async def stop_all(self) -> None:
        while self.replicas:
            await self.replicas.pop().stop()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store' / 'policy.db'}"
    url: str = request.getfixturevalue("fresh_postgres_db")
    return url


@pytest.fixture
async def store(database_url: str, tmp_path: Path) -> AsyncIterator[PolicyStore]:
    policy_store = PolicyStore(url=database_url, data_dir=tmp_path)
    yield policy_store
    await policy_store.stop_all()


@pytest.fixture
async def replica(store: PolicyStore) -> Replica:
    return await store.start()


# ------------------------------------------------------------------------------------------- helpers


@dataclass(frozen=True)
class Refusal:
    code: grpc.StatusCode
    reason: str
    metadata: dict[str, str]
    violations: list[FieldViolation]
    message: str


async def refused(call: Awaitable[Any]) -> Refusal:
    """Await a call that must fail; its status code, ErrorInfo and BadRequest details."""
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        status: status_pb2.Status | None = rpc_status.from_call(exc)
        info = None if status is None else error_info(status)
        return Refusal(
            code=exc.code(),
            reason="" if info is None else info.reason,
            metadata={} if info is None else dict(info.metadata),
            violations=[] if status is None else field_violations(status),
            message=exc.details() or "",
        )
    raise AssertionError("the call succeeded but was expected to fail")


def bad_request(status: status_pb2.Status) -> error_details_pb2.BadRequest | None:
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            found = error_details_pb2.BadRequest()
            detail.Unpack(found)
            return found
    return None


def name_of(policy_id: str) -> str:
    return f"policies/{policy_id}"


async def create(
    stub: policy_pb2_grpc.PolicyServiceAsyncStub,
    policy_id: str,
    *,
    rule: str = AFTER_HOURS_CLICK,
    severity: policy_pb2.Severity.ValueType = policy_pb2.SEVERITY_HIGH,
    title: str = "Phishing click after hours",
) -> policy_pb2.Policy:
    created: policy_pb2.Policy = await stub.CreatePolicy(
        policy_pb2.CreatePolicyRequest(
            policy_id=policy_id,
            policy=policy_pb2.Policy(title=title, description="test policy", rule=rule, severity=severity),
        )
    )
    return created


async def activate(replica: Replica, policy_id: str, *, rule: str = AFTER_HOURS_CLICK) -> policy_pb2.Policy:
    """Create a policy as alice, submit it as alice, approve it as carol."""
    await create(replica.as_(ALICE), policy_id, rule=rule)
    await replica.as_(ALICE).SubmitPolicy(policy_pb2.SubmitPolicyRequest(name=name_of(policy_id)))
    approved: policy_pb2.Policy = await replica.as_(CAROL).ApprovePolicy(
        policy_pb2.ApprovePolicyRequest(name=name_of(policy_id))
    )
    return approved


def stamp(moment: datetime.datetime) -> timestamp_pb2.Timestamp:
    value = timestamp_pb2.Timestamp()
    value.FromDatetime(moment)
    return value


def event(
    event_id: str,
    *,
    event_type: str = "phishing.clicked",
    at: datetime.datetime = datetime.datetime(2024, 5, 15, 22, 30, tzinfo=datetime.UTC),
    details: dict[str, str] | None = None,
    facts: dict[str, float] | None = None,
    severity: policy_pb2.Severity.ValueType = policy_pb2.SEVERITY_MEDIUM,
) -> policy_pb2.EvaluationInput:
    return policy_pb2.EvaluationInput(
        event_id=event_id,
        type=event_type,
        source="gophish",
        severity=severity,
        occurred_at=stamp(at),
        details=details or {},
        facts=facts or {},
    )
