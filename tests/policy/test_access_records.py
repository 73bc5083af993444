"""The access records of the policy lifecycle: the policy, its version and state, the outcome; never a
title, rule, reason, or a name a caller typed that is not a policy's (SQLite and PostgreSQL)."""

from __future__ import annotations

import grpc
from awareness.policy.v1 import policy_pb2

from tests.policy.conftest import AFTER_HOURS_CLICK, ALICE, ANALYST, CAROL, Replica, create, name_of, refused
from tests.support.access_records import RecordSink, assert_nothing_personal, capture

REASON = "rule too broad, ask carol.approver@example.org"
TYPED_NAME = "policies/bob.person@example.org"


async def test_each_lifecycle_step_records_the_policy_version_and_state(replica: Replica) -> None:
    sink = capture(replica.context)
    author, approver = replica.as_(ALICE), replica.as_(CAROL)
    name = name_of("after-hours")

    created = await create(author, "after-hours", title="Clicks by dana.person@example.org")
    edited = await author.UpdatePolicy(
        policy_pb2.UpdatePolicyRequest(
            policy=policy_pb2.Policy(name=name, description="edited", etag=created.etag),
        )
    )
    await author.SubmitPolicy(policy_pb2.SubmitPolicyRequest(name=name, etag=edited.etag))
    await approver.RejectPolicy(policy_pb2.RejectPolicyRequest(name=name, reason=REASON))
    await author.SubmitPolicy(policy_pb2.SubmitPolicyRequest(name=name))
    await approver.ApprovePolicy(policy_pb2.ApprovePolicyRequest(name=name))
    await approver.RetirePolicy(policy_pb2.RetirePolicyRequest(name=name, reason=REASON))
    revised = await author.CreatePolicyRevision(policy_pb2.CreatePolicyRevisionRequest(name=name))
    unnamed = await author.CreatePolicy(
        policy_pb2.CreatePolicyRequest(
            policy=policy_pb2.Policy(title="t", rule="true", severity=policy_pb2.SEVERITY_LOW)
        )
    )
    await author.GetPolicy(policy_pb2.GetPolicyRequest(name=name))  # a read of no personal data: not recorded

    events = await sink.settled(9)
    assert [RecordSink.row(event) for event in events] == [
        ("alice", "policy.create", name, "OK"),
        ("alice", "policy.update", name, "OK"),
        ("alice", "policy.submit", name, "OK"),
        ("carol", "policy.reject", name, "OK"),
        ("alice", "policy.submit", name, "OK"),
        ("carol", "policy.approve", name, "OK"),
        ("carol", "policy.retire", name, "OK"),
        ("alice", "policy.revise", name, "OK"),
        ("alice", "policy.create", unnamed.name, "OK"),
    ]
    assert [(event.details["version"], event.details["state"]) for event in events[:8]] == [
        ("1", "DRAFT"),
        ("1", "DRAFT"),
        ("1", "REVIEW"),
        ("1", "DRAFT"),
        ("1", "REVIEW"),
        ("1", "ACTIVE"),
        ("1", "RETIRED"),
        (str(revised.version), "DRAFT"),
    ]
    assert events[0].details["method"] == "/awareness.policy.v1.PolicyService/CreatePolicy"
    assert_nothing_personal(events, REASON, "dana.person", "carol.approver", "outside_hours", source="policy")


async def test_refused_calls_are_recorded_without_a_name_the_caller_typed(replica: Replica) -> None:
    sink = capture(replica.context)
    author = replica.as_(ALICE)
    await create(author, "mfa-off")

    bad_name = await refused(author.SubmitPolicy(policy_pb2.SubmitPolicyRequest(name=TYPED_NAME)))
    bad_id = await refused(
        author.CreatePolicy(
            policy_pb2.CreatePolicyRequest(
                policy_id="bob.person@example.org", policy=policy_pb2.Policy(title="t", rule="true")
            )
        )
    )
    not_found = await refused(author.SubmitPolicy(policy_pb2.SubmitPolicyRequest(name=name_of("missing"))))
    denied = await refused(
        replica.as_(ANALYST).ApprovePolicy(policy_pb2.ApprovePolicyRequest(name=name_of("mfa-off")))
    )
    not_ready = await refused(
        replica.as_(CAROL).ApprovePolicy(policy_pb2.ApprovePolicyRequest(name=name_of("mfa-off")))
    )
    assert (bad_name.code, bad_id.code) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert (not_found.code, denied.code) == (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED)

    events = await sink.settled(6)
    assert [RecordSink.row(event) for event in events] == [
        ("alice", "policy.create", name_of("mfa-off"), "OK"),
        ("alice", "policy.submit", "policies", "INVALID_ARGUMENT"),
        ("alice", "policy.create", "policies", "INVALID_ARGUMENT"),
        ("alice", "policy.submit", name_of("missing"), "NOT_FOUND"),
        ("ivan", "policy.approve", name_of("mfa-off"), "PERMISSION_DENIED"),
        ("carol", "policy.approve", name_of("mfa-off"), not_ready.code.name),
    ]
    assert "version" not in events[3].details
    assert_nothing_personal(events, "bob.person", source="policy")


async def test_validate_only_calls_leave_no_record(replica: Replica) -> None:
    sink = capture(replica.context)
    author = replica.as_(ALICE)
    checked = policy_pb2.Policy(title="t", rule=AFTER_HOURS_CLICK, severity=policy_pb2.SEVERITY_LOW)
    await author.CreatePolicy(
        policy_pb2.CreatePolicyRequest(policy_id="checked", policy=checked, validate_only=True)
    )
    invalid = policy_pb2.Policy(title="t", rule="event.nope", severity=policy_pb2.SEVERITY_LOW)
    await refused(
        author.CreatePolicy(
            policy_pb2.CreatePolicyRequest(policy_id="checked", policy=invalid, validate_only=True)
        )
    )
    draft = await create(author, "drafted")
    await author.UpdatePolicy(
        policy_pb2.UpdatePolicyRequest(
            policy=policy_pb2.Policy(name=draft.name, description="checked only"), validate_only=True
        )
    )
    await author.SubmitPolicy(policy_pb2.SubmitPolicyRequest(name=draft.name))

    # Records queue in call order: a record of a check would come before these two.
    events = await sink.settled(2)
    assert [RecordSink.row(event) for event in events] == [
        ("alice", "policy.create", name_of("drafted"), "OK"),
        ("alice", "policy.submit", name_of("drafted"), "OK"),
    ]
