"""The policy service over gRPC, on SQLite and PostgreSQL: lifecycle, duties, history, CEL, paging, etags."""

from __future__ import annotations

import uuid
from pathlib import Path

import grpc
import pytest
from awareness.policy.v1 import policy_pb2, policy_pb2_grpc
from google.protobuf import field_mask_pb2

from services.runtime import auth
from services.runtime.devtls import ensure_identity_certificate
from services.runtime.identity import channel_options
from tests.policy.conftest import (
    AFTER_HOURS_CLICK,
    ALICE,
    ANALYST,
    BOB,
    CAROL,
    DAVE,
    ERIN,
    Replica,
    activate,
    create,
    event,
    name_of,
    refused,
)
from tests.support.servers import identity_of, mtls_channel

State = policy_pb2.Policy
Action = policy_pb2.PolicyHistoryEntry


async def _get(replica: Replica, policy_id: str, version: int = 0) -> policy_pb2.Policy:
    found: policy_pb2.Policy = await replica.as_(ANALYST).GetPolicy(
        policy_pb2.GetPolicyRequest(name=name_of(policy_id), version=version)
    )
    return found


async def _history(
    replica: Replica, policy_id: str, *, page_size: int
) -> list[policy_pb2.PolicyHistoryEntry]:
    """Every history entry, fetched page by page (also proving the page tokens)."""
    entries: list[policy_pb2.PolicyHistoryEntry] = []
    token = ""
    pages = 0
    while True:
        response = await replica.as_(ANALYST).ListPolicyHistory(
            policy_pb2.ListPolicyHistoryRequest(
                parent=name_of(policy_id), page_size=page_size, page_token=token
            )
        )
        pages += 1
        assert len(response.entries) <= page_size
        entries.extend(response.entries)
        token = response.next_page_token
        if not token:
            return entries
        assert pages < 100, "paging does not terminate"


# ------------------------------------------------------------------------------------ legal transitions


async def test_every_legal_transition_over_grpc(replica: Replica) -> None:
    author, approver = replica.as_(ALICE), replica.as_(CAROL)
    name = name_of("after-hours")

    created = await create(author, "after-hours")
    assert (created.name, created.version, created.state) == (name, 1, State.STATE_DRAFT)
    assert created.author == "alice" and created.etag

    # DRAFT -> DRAFT (update), DRAFT -> REVIEW (submit), REVIEW -> DRAFT (reject, with its reason).
    edited = await author.UpdatePolicy(
        policy_pb2.UpdatePolicyRequest(
            policy=policy_pb2.Policy(name=name, title="After-hours phishing click", etag=created.etag),
            update_mask=field_mask_pb2.FieldMask(paths=["title"]),
        )
    )
    assert edited.title == "After-hours phishing click" and edited.state == State.STATE_DRAFT
    assert edited.etag != created.etag
    submitted = await author.SubmitPolicy(policy_pb2.SubmitPolicyRequest(name=name, etag=edited.etag))
    assert (submitted.state, submitted.submitter) == (State.STATE_REVIEW, "alice")
    rejected = await approver.RejectPolicy(policy_pb2.RejectPolicyRequest(name=name, reason="too broad"))
    assert (rejected.state, rejected.reject_reason, rejected.submitter) == (
        State.STATE_DRAFT,
        "too broad",
        "",
    )

    # DRAFT -> REVIEW -> ACTIVE.
    resubmitted = await author.SubmitPolicy(policy_pb2.SubmitPolicyRequest(name=name))
    assert (resubmitted.state, resubmitted.reject_reason) == (State.STATE_REVIEW, "")
    approved = await approver.ApprovePolicy(policy_pb2.ApprovePolicyRequest(name=name, etag=resubmitted.etag))
    assert (approved.state, approved.approver, approved.version) == (State.STATE_ACTIVE, "carol", 1)

    # ACTIVE -> new DRAFT version; approving it retires version 1 in the same step.
    revision = await replica.as_(BOB).CreatePolicyRevision(policy_pb2.CreatePolicyRevisionRequest(name=name))
    assert (revision.version, revision.state, revision.author) == (2, State.STATE_DRAFT, "bob")
    assert revision.rule == approved.rule and revision.title == approved.title
    assert (await _get(replica, "after-hours", 1)).state == State.STATE_ACTIVE, "v1 stays active meanwhile"
    await replica.as_(BOB).UpdatePolicy(
        policy_pb2.UpdatePolicyRequest(
            policy=policy_pb2.Policy(name=name, severity=policy_pb2.SEVERITY_CRITICAL),
            update_mask=field_mask_pb2.FieldMask(paths=["severity"]),
        )
    )
    await replica.as_(BOB).SubmitPolicy(policy_pb2.SubmitPolicyRequest(name=name))
    second = await replica.as_(DAVE).ApprovePolicy(policy_pb2.ApprovePolicyRequest(name=name))
    assert (second.version, second.state, second.severity) == (
        2,
        State.STATE_ACTIVE,
        policy_pb2.SEVERITY_CRITICAL,
    )
    first = await _get(replica, "after-hours", 1)
    assert first.state == State.STATE_RETIRED and "superseded by version 2" in first.retire_reason

    # ACTIVE -> RETIRED, then RETIRED -> a new DRAFT version (a retired policy returns only through review).
    retired = await approver.RetirePolicy(policy_pb2.RetirePolicyRequest(name=name, reason="campaign over"))
    assert (retired.version, retired.state, retired.retire_reason) == (
        2,
        State.STATE_RETIRED,
        "campaign over",
    )
    revived = await author.CreatePolicyRevision(policy_pb2.CreatePolicyRevisionRequest(name=name))
    assert (revived.version, revived.state) == (3, State.STATE_DRAFT)
    assert revived.severity == policy_pb2.SEVERITY_CRITICAL, "copied from the last version"
    assert (await _get(replica, "after-hours")).version == 3, "Get returns the newest version by default"


# ---------------------------------------------------------------------------------- illegal transitions


async def _policy_in(replica: Replica, policy_id: str, state: int) -> None:
    """Bring a new policy into ``state`` (version 1) through the API."""
    name = name_of(policy_id)
    await create(replica.as_(ALICE), policy_id)
    if state == State.STATE_DRAFT:
        return
    await replica.as_(ALICE).SubmitPolicy(policy_pb2.SubmitPolicyRequest(name=name))
    if state == State.STATE_REVIEW:
        return
    await replica.as_(CAROL).ApprovePolicy(policy_pb2.ApprovePolicyRequest(name=name))
    if state == State.STATE_ACTIVE:
        return
    await replica.as_(CAROL).RetirePolicy(policy_pb2.RetirePolicyRequest(name=name))


ILLEGAL = {
    State.STATE_DRAFT: {
        "approve": "POLICY_NOT_IN_REVIEW",
        "reject": "POLICY_NOT_IN_REVIEW",
        "retire": "POLICY_NOT_ACTIVE",
        "revise": "POLICY_VERSION_PENDING",
    },
    State.STATE_REVIEW: {
        "update": "POLICY_NOT_DRAFT",
        "submit": "POLICY_NOT_DRAFT",
        "retire": "POLICY_NOT_ACTIVE",
        "revise": "POLICY_VERSION_PENDING",
    },
    State.STATE_ACTIVE: {
        "update": "POLICY_NOT_DRAFT",
        "submit": "POLICY_NOT_DRAFT",
        "approve": "POLICY_NOT_IN_REVIEW",
        "reject": "POLICY_NOT_IN_REVIEW",
    },
    State.STATE_RETIRED: {
        "update": "POLICY_ALREADY_RETIRED",
        "submit": "POLICY_ALREADY_RETIRED",
        "approve": "POLICY_ALREADY_RETIRED",
        "reject": "POLICY_ALREADY_RETIRED",
        "retire": "POLICY_ALREADY_RETIRED",
    },
}


def _attempt(replica: Replica, action: str, name: str) -> object:
    """The RPC for ``action``, called by someone allowed to request it (so only the state can refuse)."""
    author, approver = replica.as_(BOB), replica.as_(DAVE)
    calls = {
        "update": lambda: author.UpdatePolicy(
            policy_pb2.UpdatePolicyRequest(
                policy=policy_pb2.Policy(name=name, title="changed"),
                update_mask=field_mask_pb2.FieldMask(paths=["title"]),
            )
        ),
        "submit": lambda: author.SubmitPolicy(policy_pb2.SubmitPolicyRequest(name=name)),
        "approve": lambda: approver.ApprovePolicy(policy_pb2.ApprovePolicyRequest(name=name)),
        "reject": lambda: approver.RejectPolicy(policy_pb2.RejectPolicyRequest(name=name, reason="no")),
        "retire": lambda: approver.RetirePolicy(policy_pb2.RetirePolicyRequest(name=name)),
        "revise": lambda: author.CreatePolicyRevision(policy_pb2.CreatePolicyRevisionRequest(name=name)),
    }
    return calls[action]()


@pytest.mark.parametrize("state", list(ILLEGAL), ids=lambda state: State.State.Name(state))
async def test_every_illegal_transition_fails_precondition_and_changes_nothing(
    replica: Replica, state: policy_pb2.Policy.State.ValueType
) -> None:
    policy_id = f"in-{State.State.Name(state).lower().replace('_', '-')}"
    await _policy_in(replica, policy_id, state)
    before = await _get(replica, policy_id)
    history_before = await _history(replica, policy_id, page_size=50)
    for action, reason in ILLEGAL[state].items():
        refusal = await refused(_attempt(replica, action, name_of(policy_id)))  # type: ignore[arg-type]
        assert (action, refusal.code, refusal.reason) == (action, grpc.StatusCode.FAILED_PRECONDITION, reason)
    after = await _get(replica, policy_id)
    assert (after.state, after.version, after.etag) == (before.state, before.version, before.etag)
    assert await _history(replica, policy_id, page_size=50) == history_before, "refusals are not history"


# ------------------------------------------------------------------------------- separation of duties


async def test_separation_of_duties(replica: Replica) -> None:
    # Erin may approve in general, but not a version she wrote.
    await create(replica.as_(ERIN), "erin-wrote")
    await replica.as_(ERIN).SubmitPolicy(policy_pb2.SubmitPolicyRequest(name=name_of("erin-wrote")))
    refusal = await refused(
        replica.as_(ERIN).ApprovePolicy(policy_pb2.ApprovePolicyRequest(name=name_of("erin-wrote")))
    )
    assert (refusal.code, refusal.reason) == (grpc.StatusCode.PERMISSION_DENIED, "SEPARATION_OF_DUTIES")

    # Nor one she only submitted, nor one she only edited.
    await create(replica.as_(ALICE), "erin-submitted")
    await replica.as_(ERIN).SubmitPolicy(policy_pb2.SubmitPolicyRequest(name=name_of("erin-submitted")))
    refusal = await refused(
        replica.as_(ERIN).ApprovePolicy(policy_pb2.ApprovePolicyRequest(name=name_of("erin-submitted")))
    )
    assert (refusal.code, refusal.reason) == (grpc.StatusCode.PERMISSION_DENIED, "SEPARATION_OF_DUTIES")
    await create(replica.as_(ALICE), "erin-edited")
    await replica.as_(ERIN).UpdatePolicy(
        policy_pb2.UpdatePolicyRequest(
            policy=policy_pb2.Policy(name=name_of("erin-edited"), title="Edited by Erin")
        )
    )
    await replica.as_(ALICE).SubmitPolicy(policy_pb2.SubmitPolicyRequest(name=name_of("erin-edited")))
    refusal = await refused(
        replica.as_(ERIN).ApprovePolicy(policy_pb2.ApprovePolicyRequest(name=name_of("erin-edited")))
    )
    assert (refusal.code, refusal.reason) == (grpc.StatusCode.PERMISSION_DENIED, "SEPARATION_OF_DUTIES")

    # Someone who neither wrote nor submitted it may approve; a pure author may not approve at all.
    refusal = await refused(
        replica.as_(BOB).ApprovePolicy(policy_pb2.ApprovePolicyRequest(name=name_of("erin-wrote")))
    )
    assert (refusal.code, refusal.reason) == (grpc.StatusCode.PERMISSION_DENIED, "MISSING_PERMISSION")
    for policy_id in ("erin-wrote", "erin-submitted", "erin-edited"):
        approved = await replica.as_(CAROL).ApprovePolicy(
            policy_pb2.ApprovePolicyRequest(name=name_of(policy_id))
        )
        assert (approved.state, approved.approver) == (State.STATE_ACTIVE, "carol")
    # An approver cannot write policies.
    refusal = await refused(create(replica.as_(CAROL), "carol-wrote"))
    assert (refusal.code, refusal.reason) == (grpc.StatusCode.PERMISSION_DENIED, "MISSING_PERMISSION")


async def test_only_the_gateways_certificate_may_name_a_principal(replica: Replica, tmp_path: Path) -> None:
    request = policy_pb2.CreatePolicyRequest(
        policy_id="anonymous",
        policy=policy_pb2.Policy(title="t", rule="true", severity=policy_pb2.SEVERITY_LOW),
    )
    alice = auth.principal_metadata(ALICE)
    # A service's own certificate acts as that service, not for the person it names.
    async with mtls_channel(replica.address, server="policy", caller="scoring") as channel:
        stub = policy_pb2_grpc.PolicyServiceStub(channel)
        for call in (
            stub.CreatePolicy(request, metadata=alice),
            stub.ListPolicies(policy_pb2.ListPoliciesRequest(), metadata=alice),
            stub.EvaluateEvents(policy_pb2.EvaluateEventsRequest(events=[event("e1")]), metadata=alice),
        ):
            refusal = await refused(call)
            assert (refusal.code, refusal.reason) == (
                grpc.StatusCode.PERMISSION_DENIED,
                "PRINCIPAL_NOT_DELEGABLE",
            )
    # A certificate the service's CA did not issue never gets past the handshake.
    stranger = ensure_identity_certificate(tmp_path / "another-ca", "gateway")
    foreign = grpc.ssl_channel_credentials(
        root_certificates=identity_of("gateway").ca_file.read_bytes(),
        private_key=stranger.key_file.read_bytes(),
        certificate_chain=stranger.chain_file.read_bytes(),
    )
    async with grpc.aio.secure_channel(
        replica.address, foreign, options=channel_options("policy")
    ) as channel:
        refusal = await refused(
            policy_pb2_grpc.PolicyServiceStub(channel).CreatePolicy(request, metadata=alice)
        )
        assert refusal.code == grpc.StatusCode.UNAVAILABLE
    # The same request from the gateway's certificate is alice's: the refusals above were about the caller.
    async with mtls_channel(replica.address, server="policy", caller="gateway") as channel:
        created = await policy_pb2_grpc.PolicyServiceStub(channel).CreatePolicy(request, metadata=alice)
        assert created.author == "alice"


# -------------------------------------------------------------------------------------------- history


async def test_history_records_each_step_with_actor_states_reason_and_changes(replica: Replica) -> None:
    name = name_of("tracked")
    await create(replica.as_(ALICE), "tracked")
    await replica.as_(BOB).UpdatePolicy(
        policy_pb2.UpdatePolicyRequest(
            policy=policy_pb2.Policy(name=name, rule='event.type == "usb.inserted"', description="changed"),
            update_mask=field_mask_pb2.FieldMask(paths=["rule", "description"]),
        )
    )
    await replica.as_(ALICE).SubmitPolicy(policy_pb2.SubmitPolicyRequest(name=name))
    await replica.as_(CAROL).RejectPolicy(policy_pb2.RejectPolicyRequest(name=name, reason="needs a source"))
    await replica.as_(ALICE).SubmitPolicy(policy_pb2.SubmitPolicyRequest(name=name))
    await replica.as_(CAROL).ApprovePolicy(policy_pb2.ApprovePolicyRequest(name=name))
    await replica.as_(BOB).CreatePolicyRevision(policy_pb2.CreatePolicyRevisionRequest(name=name))
    await replica.as_(BOB).SubmitPolicy(policy_pb2.SubmitPolicyRequest(name=name))
    await replica.as_(DAVE).ApprovePolicy(policy_pb2.ApprovePolicyRequest(name=name))
    await replica.as_(DAVE).RetirePolicy(policy_pb2.RetirePolicyRequest(name=name, reason="obsolete"))

    entries = await _history(replica, "tracked", page_size=3)
    steps = [
        (
            e.version,
            Action.Action.Name(e.action),
            e.actor,
            State.State.Name(e.from_state),
            State.State.Name(e.to_state),
        )
        for e in entries
    ]
    assert steps == [
        (1, "ACTION_CREATE", "alice", "STATE_UNSPECIFIED", "STATE_DRAFT"),
        (1, "ACTION_UPDATE", "bob", "STATE_DRAFT", "STATE_DRAFT"),
        (1, "ACTION_SUBMIT", "alice", "STATE_DRAFT", "STATE_REVIEW"),
        (1, "ACTION_REJECT", "carol", "STATE_REVIEW", "STATE_DRAFT"),
        (1, "ACTION_SUBMIT", "alice", "STATE_DRAFT", "STATE_REVIEW"),
        (1, "ACTION_APPROVE", "carol", "STATE_REVIEW", "STATE_ACTIVE"),
        (2, "ACTION_REVISE", "bob", "STATE_UNSPECIFIED", "STATE_DRAFT"),
        (2, "ACTION_SUBMIT", "bob", "STATE_DRAFT", "STATE_REVIEW"),
        (2, "ACTION_APPROVE", "dave", "STATE_REVIEW", "STATE_ACTIVE"),
        (1, "ACTION_RETIRE", "dave", "STATE_ACTIVE", "STATE_RETIRED"),
        (2, "ACTION_RETIRE", "dave", "STATE_ACTIVE", "STATE_RETIRED"),
    ]
    assert sorted(entries[1].changed_fields) == ["description", "rule"]
    assert entries[3].reason == "needs a source"
    assert "superseded by version 2" in entries[9].reason
    assert entries[10].reason == "obsolete"
    times = [entry.time.ToDatetime() for entry in entries]
    assert times == sorted(times) and all(entry.time.seconds > 0 for entry in entries)
    # One big page holds the same entries as the small pages.
    assert await _history(replica, "tracked", page_size=1000) == entries


async def test_history_is_append_only_in_the_database(replica: Replica) -> None:
    await create(replica.as_(ALICE), "immutable")
    engine = replica.context.engine
    assert engine is not None
    for statement in ("UPDATE policy_history SET actor = 'mallory'", "DELETE FROM policy_history"):
        with pytest.raises(Exception, match="append-only"), engine.begin() as connection:
            connection.exec_driver_sql(statement)
    entries = await _history(replica, "immutable", page_size=10)
    assert [(entry.actor, entry.action) for entry in entries] == [("alice", Action.ACTION_CREATE)]


# ------------------------------------------------------------------------------------------------ CEL


async def test_invalid_cel_is_refused_with_the_compiler_message_and_position(replica: Replica) -> None:
    refusal = await refused(
        create(replica.as_(ALICE), "bad-rule", rule='event.source == "x" &&\n  event.type == 1')
    )
    assert (refusal.code, refusal.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_RULE")
    assert (refusal.metadata["line"], refusal.metadata["column"]) == ("2", "14")
    assert refusal.metadata["offset"] == str(len('event.source == "x" &&\n') + 13)
    assert "no matching overload" in refusal.metadata["compiler_message"]
    assert "no matching overload" in refusal.message
    assert [violation.field for violation in refusal.violations] == ["policy.rule"]
    assert "line 2, column 14" in refusal.violations[0].description
    missing = await refused(_get(replica, "bad-rule"))
    assert missing.code == grpc.StatusCode.NOT_FOUND, "a refused create stores nothing"

    # The same check guards updates, and a rule must be boolean.
    draft = await create(replica.as_(ALICE), "good-rule")
    refusal = await refused(
        replica.as_(ALICE).UpdatePolicy(
            policy_pb2.UpdatePolicyRequest(
                policy=policy_pb2.Policy(name=draft.name, rule="event.nope"),
                update_mask=field_mask_pb2.FieldMask(paths=["rule"]),
            )
        )
    )
    assert (refusal.reason, refusal.metadata["column"]) == ("INVALID_RULE", "6")
    assert "undeclared reference" in refusal.metadata["compiler_message"]
    refusal = await refused(create(replica.as_(ALICE), "not-bool", rule="event.type"))
    assert (refusal.code, refusal.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "RULE_NOT_BOOLEAN")
    assert (await _get(replica, "good-rule")).rule == AFTER_HOURS_CLICK


async def test_other_invalid_arguments_name_their_field(replica: Replica) -> None:
    refusal = await refused(create(replica.as_(ALICE), "no-title", title=""))
    assert refusal.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [violation.field for violation in refusal.violations] == ["policy.title"]
    refusal = await refused(create(replica.as_(ALICE), "Bad_Id"))
    assert [violation.field for violation in refusal.violations] == ["policy_id"]
    refusal = await refused(create(replica.as_(ALICE), "info", severity=policy_pb2.SEVERITY_INFO))
    assert [violation.field for violation in refusal.violations] == ["policy.severity"]
    await create(replica.as_(ALICE), "to-reject")
    await replica.as_(ALICE).SubmitPolicy(policy_pb2.SubmitPolicyRequest(name=name_of("to-reject")))
    refusal = await refused(
        replica.as_(CAROL).RejectPolicy(policy_pb2.RejectPolicyRequest(name=name_of("to-reject"), reason=" "))
    )
    assert (refusal.reason, [v.field for v in refusal.violations]) == ("REJECT_REASON_REQUIRED", ["reason"])
    refusal = await refused(
        replica.as_(ALICE).UpdatePolicy(
            policy_pb2.UpdatePolicyRequest(
                policy=policy_pb2.Policy(name=name_of("to-reject")),
                update_mask=field_mask_pb2.FieldMask(paths=["author"]),
            )
        )
    )
    assert (refusal.code, refusal.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_UPDATE_MASK")
    refusal = await refused(replica.as_(ANALYST).GetPolicy(policy_pb2.GetPolicyRequest(name="nope/x")))
    assert (refusal.code, [v.field for v in refusal.violations]) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        ["name"],
    )


# -------------------------------------------------------------------------------- update, etag, create


async def test_update_changes_only_the_masked_fields_and_stale_etag_aborts(replica: Replica) -> None:
    author = replica.as_(ALICE)
    draft = await create(author, "etagged")
    updated = await author.UpdatePolicy(
        policy_pb2.UpdatePolicyRequest(
            policy=policy_pb2.Policy(
                name=draft.name,
                title="New title",
                rule="true",
                severity=policy_pb2.SEVERITY_LOW,
                etag=draft.etag,
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["title"]),
        )
    )
    assert (updated.title, updated.rule, updated.severity) == ("New title", draft.rule, draft.severity)

    stale = await refused(
        author.UpdatePolicy(
            policy_pb2.UpdatePolicyRequest(
                policy=policy_pb2.Policy(name=draft.name, title="Lost update", etag=draft.etag),
                update_mask=field_mask_pb2.FieldMask(paths=["title"]),
            )
        )
    )
    assert (stale.code, stale.reason) == (grpc.StatusCode.ABORTED, "ETAG_MISMATCH")
    stale = await refused(
        author.SubmitPolicy(policy_pb2.SubmitPolicyRequest(name=draft.name, etag=draft.etag))
    )
    assert (stale.code, stale.reason) == (grpc.StatusCode.ABORTED, "ETAG_MISMATCH")
    assert (await _get(replica, "etagged")).title == "New title"

    # Without a mask, the fields set in the request are updated (AIP-134); the fresh etag is accepted.
    unmasked = await author.UpdatePolicy(
        policy_pb2.UpdatePolicyRequest(
            policy=policy_pb2.Policy(name=draft.name, description="why", etag=updated.etag)
        )
    )
    assert (unmasked.title, unmasked.description) == ("New title", "why")
    submitted = await author.SubmitPolicy(policy_pb2.SubmitPolicyRequest(name=draft.name, etag=unmasked.etag))
    assert submitted.state == State.STATE_REVIEW


async def test_validate_only_checks_everything_and_changes_nothing(replica: Replica) -> None:
    author = replica.as_(ALICE)

    def check_create(policy_id: str, **fields: object) -> policy_pb2.CreatePolicyRequest:
        policy = policy_pb2.Policy(
            title="Click", description="d", rule=AFTER_HOURS_CLICK, severity=policy_pb2.SEVERITY_HIGH
        )
        for name, value in fields.items():
            setattr(policy, name, value)
        return policy_pb2.CreatePolicyRequest(
            policy_id=policy_id, policy=policy, validate_only=True, request_id=str(uuid.uuid4())
        )

    # A valid create answers the policy it would make, and makes nothing.
    would_be = await author.CreatePolicy(check_create("checked"))
    assert (would_be.name, would_be.version, would_be.state, would_be.author) == (
        name_of("checked"),
        1,
        State.STATE_DRAFT,
        "alice",
    )
    assert (await refused(_get(replica, "checked"))).code == grpc.StatusCode.NOT_FOUND
    assert (
        await refused(
            replica.as_(ANALYST).ListPolicyHistory(
                policy_pb2.ListPolicyHistoryRequest(parent=name_of("checked"))
            )
        )
    ).code == grpc.StatusCode.NOT_FOUND

    # An invalid rule: the compiler's message and position, as a real create would answer.
    refusal = await refused(author.CreatePolicy(check_create("checked", rule="event.type == 1")))
    assert (refusal.code, refusal.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_RULE")
    assert [violation.field for violation in refusal.violations] == ["policy.rule"]
    assert "line 1, column 12" in refusal.violations[0].description
    # Every invalid field at once, not only the first.
    refusal = await refused(
        author.CreatePolicy(
            check_create("checked", title="", rule="event.nope", severity=policy_pb2.SEVERITY_INFO)
        )
    )
    assert [violation.field for violation in refusal.violations] == [
        "policy.title",
        "policy.rule",
        "policy.severity",
    ]
    # A taken id is refused, and a request_id is not remembered: the real create that follows creates.
    request = check_create("checked")
    await create(author, "checked")
    assert (await refused(author.CreatePolicy(request))).code == grpc.StatusCode.ALREADY_EXISTS
    request.policy_id, request.validate_only = "checked-again", False
    assert (await author.CreatePolicy(request)).name == name_of("checked-again")

    # An update: the edited version it would be; the draft, its etag and its history stay as they were.
    draft = await _get(replica, "checked")
    edit = policy_pb2.UpdatePolicyRequest(
        policy=policy_pb2.Policy(name=draft.name, rule="event.hour > 20", etag=draft.etag),
        update_mask=field_mask_pb2.FieldMask(paths=["rule"]),
        validate_only=True,
    )
    would_be = await author.UpdatePolicy(edit)
    assert would_be.rule == "event.hour > 20" and would_be.etag != draft.etag
    assert await _get(replica, "checked") == draft
    assert len(await _history(replica, "checked", page_size=50)) == 1
    edit.policy.rule = "event.hour >"
    refusal = await refused(author.UpdatePolicy(edit))
    assert (refusal.reason, [v.field for v in refusal.violations]) == ("INVALID_RULE", ["policy.rule"])
    # The same checks as a real update: permission, etag, state.
    edit.policy.rule = "event.hour > 20"
    assert (await refused(replica.as_(CAROL).UpdatePolicy(edit))).code == grpc.StatusCode.PERMISSION_DENIED
    edit.policy.etag = '"stale"'
    assert (await refused(author.UpdatePolicy(edit))).code == grpc.StatusCode.ABORTED
    await author.SubmitPolicy(policy_pb2.SubmitPolicyRequest(name=draft.name))
    edit.policy.etag = ""
    refusal = await refused(author.UpdatePolicy(edit))
    assert (refusal.code, refusal.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "POLICY_NOT_DRAFT")


async def test_create_is_idempotent_with_a_request_id_and_ids_are_unique(replica: Replica) -> None:
    author = replica.as_(ALICE)
    request_id = str(uuid.uuid4())
    request = policy_pb2.CreatePolicyRequest(
        policy=policy_pb2.Policy(title="Generated id", rule="true", severity=policy_pb2.SEVERITY_LOW),
        request_id=request_id,
    )
    first = await author.CreatePolicy(request)
    again = await author.CreatePolicy(request)
    assert first.name.startswith("policies/") and again.name == first.name and again.version == 1
    other = await author.CreatePolicy(policy_pb2.CreatePolicyRequest(policy=request.policy))
    assert other.name != first.name
    assert len(await _history(replica, first.name.removeprefix("policies/"), page_size=10)) == 1

    await create(author, "taken")
    duplicate = await refused(create(author, "taken"))
    assert (duplicate.code, duplicate.reason) == (grpc.StatusCode.ALREADY_EXISTS, "POLICY_ALREADY_EXISTS")
    bad = await refused(
        author.CreatePolicy(policy_pb2.CreatePolicyRequest(policy=request.policy, request_id="x"))
    )
    assert (bad.code, bad.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST_ID")

    await replica.as_(ALICE).SubmitPolicy(policy_pb2.SubmitPolicyRequest(name=name_of("taken")))
    await replica.as_(CAROL).ApprovePolicy(policy_pb2.ApprovePolicyRequest(name=name_of("taken")))
    revise = policy_pb2.CreatePolicyRevisionRequest(name=name_of("taken"), request_id=str(uuid.uuid4()))
    revision = await author.CreatePolicyRevision(revise)
    assert (await author.CreatePolicyRevision(revise)).version == revision.version == 2


async def test_get_unknown_policy_or_version_is_not_found(replica: Replica) -> None:
    refusal = await refused(_get(replica, "missing"))
    assert (refusal.code, refusal.reason) == (grpc.StatusCode.NOT_FOUND, "POLICY_NOT_FOUND")
    await create(replica.as_(ALICE), "present")
    refusal = await refused(_get(replica, "present", 7))
    assert (refusal.code, refusal.reason) == (grpc.StatusCode.NOT_FOUND, "POLICY_VERSION_NOT_FOUND")
    refusal = await refused(
        replica.as_(ANALYST).ListPolicyHistory(policy_pb2.ListPolicyHistoryRequest(parent=name_of("missing")))
    )
    assert refusal.code == grpc.StatusCode.NOT_FOUND


# --------------------------------------------------------------------------------------------- listing


async def _list_all(
    replica: Replica, *, page_size: int, state: int = 0, severity: int = 0
) -> tuple[list[tuple[str, int]], int]:
    seen: list[tuple[str, int]] = []
    token, pages = "", 0
    while True:
        response = await replica.as_(ANALYST).ListPolicies(
            policy_pb2.ListPoliciesRequest(
                page_size=page_size,
                page_token=token,
                state=state,  # type: ignore[arg-type]
                severity=severity,  # type: ignore[arg-type]
            )
        )
        pages += 1
        assert len(response.policies) <= page_size
        seen.extend((policy.name, policy.version) for policy in response.policies)
        token = response.next_page_token
        if not token:
            return seen, pages
        assert pages < 100


async def test_list_pages_through_current_versions_with_filters(replica: Replica) -> None:
    for index in range(5):
        await create(
            replica.as_(ALICE),
            f"draft-{index}",
            severity=policy_pb2.SEVERITY_LOW if index % 2 else policy_pb2.SEVERITY_HIGH,
        )
    await activate(replica, "live")
    await activate(replica, "revised")
    await replica.as_(BOB).CreatePolicyRevision(
        policy_pb2.CreatePolicyRevisionRequest(name=name_of("revised"))
    )
    await activate(replica, "superseded")
    await replica.as_(BOB).CreatePolicyRevision(
        policy_pb2.CreatePolicyRevisionRequest(name=name_of("superseded"))
    )
    await replica.as_(BOB).SubmitPolicy(policy_pb2.SubmitPolicyRequest(name=name_of("superseded")))
    await replica.as_(CAROL).ApprovePolicy(policy_pb2.ApprovePolicyRequest(name=name_of("superseded")))
    await activate(replica, "gone")
    await replica.as_(CAROL).RetirePolicy(policy_pb2.RetirePolicyRequest(name=name_of("gone")))

    expected = sorted(
        [(name_of(f"draft-{index}"), 1) for index in range(5)]
        + [(name_of("live"), 1), (name_of("revised"), 1), (name_of("revised"), 2)]
        + [(name_of("superseded"), 2), (name_of("gone"), 1)]
    )
    everything, pages = await _list_all(replica, page_size=3)
    assert (everything, pages) == (expected, 4)
    assert (await _list_all(replica, page_size=1000))[0] == expected
    active, _ = await _list_all(replica, page_size=2, state=State.STATE_ACTIVE)
    assert active == [(name_of("live"), 1), (name_of("revised"), 1), (name_of("superseded"), 2)]
    low, _ = await _list_all(replica, page_size=1, severity=policy_pb2.SEVERITY_LOW)
    assert low == [(name_of("draft-1"), 1), (name_of("draft-3"), 1)]
    retired, _ = await _list_all(replica, page_size=5, state=State.STATE_RETIRED)
    assert retired == [(name_of("gone"), 1)], "a superseded version is not current"

    first_page = await replica.as_(ANALYST).ListPolicies(policy_pb2.ListPoliciesRequest(page_size=3))
    assert first_page.next_page_token
    # A token belongs to its query: another filter, a forged or a garbled token is refused.
    for bad in (
        policy_pb2.ListPoliciesRequest(page_token=first_page.next_page_token, state=State.STATE_ACTIVE),
        policy_pb2.ListPoliciesRequest(page_token="not a token!"),
        policy_pb2.ListPoliciesRequest(page_token="eyJzY29wZSI6MX0"),
        policy_pb2.ListPoliciesRequest(page_size=-1),
    ):
        refusal = await refused(replica.as_(ANALYST).ListPolicies(bad))
        assert refusal.code == grpc.StatusCode.INVALID_ARGUMENT
    default_page = await replica.as_(ANALYST).ListPolicies(policy_pb2.ListPoliciesRequest())
    assert len(default_page.policies) == len(expected) and not default_page.next_page_token
