"""EvaluateEvents over gRPC: violations, run-time errors, restarts, replicas, SQLite against PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime
import time
from pathlib import Path

import grpc
import pytest
from awareness.policy.v1 import policy_pb2
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from tests.policy.conftest import (
    ALICE,
    ANALYST,
    CAROL,
    PolicyStore,
    Replica,
    activate,
    create,
    event,
    name_of,
    refused,
)

NIGHT = datetime.datetime(2024, 5, 15, 22, 30, tzinfo=datetime.UTC)  # a Wednesday, outside 8-18
NOON = datetime.datetime(2024, 5, 15, 12, 0, tzinfo=datetime.UTC)

RULES = {
    "after-hours-click": 'event.type == "phishing.clicked" && event.outside_hours',
    "overdue-clicker": 'event.type == "phishing.clicked" && subject.training_overdue',
    "busy-subject": "subject.events_24h > 3",
    "usb-weekend": 'event.type == "usb.inserted" && event.weekday >= 5',
    "campaign-c7": 'event.details["campaign"] == "c-7"',  # errors when the event has no campaign
    "risky": 'subject.facts["risk"] > 2.5',  # errors when the risk fact is missing
}

EVENTS = [
    event("click-night", at=NIGHT, details={"campaign": "c-7"}, facts={"training_overdue": 1, "risk": 3.0}),
    event("click-noon", at=NOON, details={"campaign": "c-1"}, facts={"events_24h": 5, "risk": 1.0}),
    event(
        "usb-saturday", event_type="usb.inserted", at=datetime.datetime(2024, 5, 18, 10, tzinfo=datetime.UTC)
    ),
]

EXPECTED_VIOLATIONS = {
    "click-night": ["after-hours-click", "campaign-c7", "overdue-clicker", "risky"],
    "click-noon": ["busy-subject"],
    "usb-saturday": ["usb-weekend"],
}
EXPECTED_ERRORS = {"click-night": [], "click-noon": [], "usb-saturday": ["campaign-c7", "risky"]}


async def _activate_all(replica: Replica) -> None:
    for policy_id, rule in RULES.items():
        await activate(replica, policy_id, rule=rule)


async def _evaluate(replica: Replica) -> policy_pb2.EvaluateEventsResponse:
    response: policy_pb2.EvaluateEventsResponse = await replica.as_(ANALYST).EvaluateEvents(
        policy_pb2.EvaluateEventsRequest(events=EVENTS)
    )
    return response


def _summary(
    response: policy_pb2.EvaluateEventsResponse,
) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    violations = {
        result.event_id: sorted(v.policy.removeprefix("policies/") for v in result.violations)
        for result in response.results
    }
    errors = {
        result.event_id: sorted(e.policy.removeprefix("policies/") for e in result.errors)
        for result in response.results
    }
    return violations, errors


async def test_same_events_give_the_same_violations_before_and_after_a_restart(store: PolicyStore) -> None:
    first = await store.start()
    await _activate_all(first)
    # A draft and a retired policy must not be evaluated.
    await create(first.as_(ALICE), "draft-only", rule="true")
    await activate(first, "retired-one", rule="true")
    await first.as_(CAROL).RetirePolicy(policy_pb2.RetirePolicyRequest(name=name_of("retired-one")))

    before = await _evaluate(first)
    assert [result.event_id for result in before.results] == [e.event_id for e in EVENTS]
    assert _summary(before) == (EXPECTED_VIOLATIONS, EXPECTED_ERRORS)
    night = before.results[0].violations[0]
    assert (night.version, night.severity, night.title) == (
        1,
        policy_pb2.SEVERITY_HIGH,
        "Phishing click after hours",
    )

    await store.stop_all()
    second = await store.start()
    after = await _evaluate(second)
    assert after == before


@pytest.mark.postgres
async def test_sqlite_and_postgres_give_the_same_violations(tmp_path: Path, fresh_postgres_db: str) -> None:
    responses = []
    for url in (f"sqlite:///{tmp_path / 'policy.db'}", fresh_postgres_db):
        store = PolicyStore(url=url, data_dir=tmp_path)
        try:
            replica = await store.start()
            await _activate_all(replica)
            responses.append(await _evaluate(replica))
        finally:
            await store.stop_all()
    sqlite_response, postgres_response = responses
    assert _summary(sqlite_response) == (EXPECTED_VIOLATIONS, EXPECTED_ERRORS)
    assert sqlite_response == postgres_response


async def test_a_new_user_over_grpc_sees_the_violation_of_the_policy_they_wrote(replica: Replica) -> None:
    author, approver = replica.as_(ALICE), replica.as_(CAROL)
    policy = await author.CreatePolicy(
        policy_pb2.CreatePolicyRequest(
            policy_id="usb-at-night",
            policy=policy_pb2.Policy(
                title="USB stick inserted at night",
                rule='event.type == "usb.inserted" && (event.hour < 6 || event.hour >= 22)',
                severity=policy_pb2.SEVERITY_HIGH,
            ),
        )
    )
    await author.SubmitPolicy(policy_pb2.SubmitPolicyRequest(name=policy.name))
    own = await refused(author.ApprovePolicy(policy_pb2.ApprovePolicyRequest(name=policy.name)))
    assert own.code == grpc.StatusCode.PERMISSION_DENIED
    approved = await approver.ApprovePolicy(policy_pb2.ApprovePolicyRequest(name=policy.name))
    assert approved.state == policy_pb2.Policy.STATE_ACTIVE

    usb_night = event(
        "evt-1", event_type="usb.inserted", at=datetime.datetime(2024, 5, 15, 23, tzinfo=datetime.UTC)
    )
    usb_day = event("evt-2", event_type="usb.inserted", at=NOON)
    response = await author.EvaluateEvents(policy_pb2.EvaluateEventsRequest(events=[usb_night, usb_day]))
    night, day = response.results
    assert night.event_id == "evt-1"
    assert [(v.policy, v.version, v.severity, v.title) for v in night.violations] == [
        (policy.name, 1, policy_pb2.SEVERITY_HIGH, "USB stick inserted at night")
    ]
    assert (list(day.violations), list(night.errors), list(day.errors)) == ([], [], [])


async def test_failing_and_runaway_rules_are_errors_of_their_policy_not_of_the_call(replica: Replica) -> None:
    items = "[" + ",".join(str(number) for number in range(200)) + "]"
    await activate(replica, "runaway", rule=f"{items}.all(a, {items}.all(b, {items}.all(c, a + b + c >= 0)))")
    await activate(replica, "needs-key", rule='event.details["missing"] == "x"')
    await activate(replica, "always", rule="true")
    response = await replica.as_(ANALYST).EvaluateEvents(
        policy_pb2.EvaluateEventsRequest(events=[event("e1"), event("e2")])
    )
    for result in response.results:
        assert [violation.policy for violation in result.violations] == [name_of("always")]
        errors = {error.policy: error.message for error in result.errors}
        assert sorted(errors) == [name_of("needs-key"), name_of("runaway")]
        assert "budget" in errors[name_of("runaway")].lower()
        assert "missing" in errors[name_of("needs-key")]

    registry = replica.context.metrics.registry
    assert registry.get_sample_value("awareness_policy_evaluations_total") == 2
    assert registry.get_sample_value("awareness_policy_evaluation_errors_total") == 4
    assert registry.get_sample_value("awareness_policy_violations_total") == 2
    assert registry.get_sample_value("awareness_policy_active_policies") == 3
    assert registry.get_sample_value("awareness_policy_evaluation_duration_seconds_count") == 2


async def test_evaluation_refuses_events_without_required_fields(replica: Replica) -> None:
    incomplete = policy_pb2.EvaluationInput(event_id="e1", type="phishing.clicked")
    refusal = await refused(
        replica.as_(ANALYST).EvaluateEvents(
            policy_pb2.EvaluateEventsRequest(events=[event("ok"), incomplete])
        )
    )
    assert refusal.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [violation.field for violation in refusal.violations] == ["events[1].occurred_at"]


async def _violations_on(replica: Replica, policy_id: str) -> bool:
    response = await replica.as_(ANALYST).EvaluateEvents(
        policy_pb2.EvaluateEventsRequest(events=[event("e")])
    )
    return name_of(policy_id) in {violation.policy for violation in response.results[0].violations}


async def _eventually(replica: Replica, policy_id: str, *, expected: bool) -> None:
    deadline = time.monotonic() + 15
    while await _violations_on(replica, policy_id) != expected:
        assert time.monotonic() < deadline, f"replica never saw {policy_id} {'on' if expected else 'off'}"
        await asyncio.sleep(0.1)


async def test_approvals_and_retirements_reach_other_replicas(store: PolicyStore) -> None:
    writer = await store.start(AWARENESS_POLICY_ACTIVE_SET_CHECK_SECONDS="0.2")
    reader = await store.start(AWARENESS_POLICY_ACTIVE_SET_CHECK_SECONDS="0.2")
    assert not await _violations_on(reader, "everything")  # the reader has cached the empty set
    await activate(writer, "everything", rule="true")
    assert await _violations_on(writer, "everything"), "the approving replica sees its change at once"
    await _eventually(reader, "everything", expected=True)
    await writer.as_(CAROL).RetirePolicy(policy_pb2.RetirePolicyRequest(name=name_of("everything")))
    assert not await _violations_on(writer, "everything")
    await _eventually(reader, "everything", expected=False)


@pytest.mark.postgres
async def test_a_store_outage_keeps_evaluation_on_the_cached_policies(
    tmp_path: Path, fresh_postgres_db: str, postgres_url: str
) -> None:
    store = PolicyStore(url=fresh_postgres_db, data_dir=tmp_path)
    try:
        replica = await store.start(AWARENESS_POLICY_ACTIVE_SET_CHECK_SECONDS="0")
        await activate(replica, "everything", rule="true")
        assert await _violations_on(replica, "everything")
        admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            database = make_url(fresh_postgres_db).database
            connection.execute(text(f'DROP DATABASE "{database}" WITH (FORCE)'))
        admin.dispose()
        assert await _violations_on(replica, "everything"), "evaluation goes on with the last known set"
        refusal = await refused(
            replica.as_(ANALYST).GetPolicy(policy_pb2.GetPolicyRequest(name=name_of("everything")))
        )
        assert (refusal.code, refusal.reason) == (grpc.StatusCode.UNAVAILABLE, "STORE_UNAVAILABLE")
    finally:
        await store.stop_all()
