from __future__ import annotations

import datetime
import itertools
import re

import pytest

from services.policy.domain import errors
from services.policy.domain.errors import (
    EtagMismatchError,
    IllegalTransitionError,
    InvalidRuleError,
    PolicyError,
    PolicyInvalidArgumentError,
    PolicyPermissionDeniedError,
    PolicyUnauthenticatedError,
    SeparationOfDutiesError,
)
from services.policy.domain.lifecycle import (
    Permission,
    PolicyAction,
    PolicyChange,
    PolicySeverity,
    PolicyState,
    PolicyVersion,
    Principal,
    allowed_actions,
    approve_policy,
    check_transition,
    compute_etag,
    create_policy,
    new_version,
    reject_policy,
    retire_policy,
    submit_policy,
    update_draft,
)

T0 = datetime.datetime(2024, 6, 1, 9, 0, tzinfo=datetime.UTC)
RULE = 'event.type == "phishing.clicked" && event.outside_hours'

ALICE = Principal(id="alice", roles=frozenset({"policy_author"}))
BOB = Principal(id="bob", permissions=frozenset({Permission.SUBMIT, Permission.AUTHOR}))
CAROL = Principal(id="carol", roles=frozenset({"policy_approver"}))
DAVE = Principal(id="dave", roles=frozenset({"policy_approver"}))
ADMIN = Principal(id="root", roles=frozenset({"policy_admin"}))


def at(minutes: int) -> datetime.datetime:
    return T0 + datetime.timedelta(minutes=minutes)


def version_in(state: PolicyState, *, version: int = 1) -> PolicyVersion:
    """A version in ``state`` written by alice and, past DRAFT, submitted by bob."""
    submitted = state is not PolicyState.DRAFT
    return PolicyVersion(
        name="after-hours-click",
        version=version,
        state=state,
        title="Click after hours",
        rule=RULE,
        severity=PolicySeverity.HIGH,
        description="",
        author_id="alice",
        contributors=frozenset({"alice"}),
        submitter_id="bob" if submitted else None,
        approver_id="carol" if state in (PolicyState.ACTIVE, PolicyState.RETIRED) else None,
        revision=3,
        create_time=T0,
        update_time=T0,
    )


def request(action: PolicyAction, policy: PolicyVersion, principal: Principal | None = ADMIN) -> PolicyChange:
    """Perform ``action`` (as a third party holding every permission by default)."""
    if action is PolicyAction.UPDATE:
        return update_draft(policy, principal=principal, now=at(1), title="New title")
    if action is PolicyAction.SUBMIT:
        return submit_policy(policy, principal=principal, now=at(1))
    if action is PolicyAction.APPROVE:
        return approve_policy(policy, principal=principal, now=at(1))[0]
    if action is PolicyAction.REJECT:
        return reject_policy(policy, principal=principal, now=at(1), reason="too broad")
    if action is PolicyAction.RETIRE:
        return retire_policy(policy, principal=principal, now=at(1))
    if action is PolicyAction.NEW_VERSION:
        return new_version(policy, principal=principal, now=at(1))
    raise AssertionError(action)


REQUESTABLE = [
    action for action in PolicyAction if action not in (PolicyAction.CREATE, PolicyAction.SUPERSEDE)
]

# (state, action) -> state of the resulting version; every other pair must be refused.
LEGAL = {
    (PolicyState.DRAFT, PolicyAction.UPDATE): PolicyState.DRAFT,
    (PolicyState.DRAFT, PolicyAction.SUBMIT): PolicyState.REVIEW,
    (PolicyState.REVIEW, PolicyAction.APPROVE): PolicyState.ACTIVE,
    (PolicyState.REVIEW, PolicyAction.REJECT): PolicyState.DRAFT,
    (PolicyState.ACTIVE, PolicyAction.RETIRE): PolicyState.RETIRED,
    (PolicyState.ACTIVE, PolicyAction.NEW_VERSION): PolicyState.DRAFT,
    (PolicyState.RETIRED, PolicyAction.NEW_VERSION): PolicyState.DRAFT,
}

REFUSAL_REASONS = {
    PolicyAction.UPDATE: "POLICY_NOT_DRAFT",
    PolicyAction.SUBMIT: "POLICY_NOT_DRAFT",
    PolicyAction.APPROVE: "POLICY_NOT_IN_REVIEW",
    PolicyAction.REJECT: "POLICY_NOT_IN_REVIEW",
    PolicyAction.RETIRE: "POLICY_NOT_ACTIVE",
    PolicyAction.NEW_VERSION: "POLICY_VERSION_PENDING",
}


@pytest.mark.parametrize(("state", "action"), list(itertools.product(PolicyState, REQUESTABLE)))
def test_every_state_and_action_pair(state: PolicyState, action: PolicyAction) -> None:
    policy = version_in(state)
    if (state, action) in LEGAL:
        change = request(action, policy)
        assert change.after.state is LEGAL[state, action]
        assert change.history.action is action
        assert change.history.to_state is LEGAL[state, action]
        assert action in allowed_actions(state)
    else:
        with pytest.raises(IllegalTransitionError) as caught:
            request(action, policy)
        expected = "POLICY_ALREADY_RETIRED" if state is PolicyState.RETIRED else REFUSAL_REASONS[action]
        assert caught.value.reason == expected
        assert caught.value.grpc_code_name == "FAILED_PRECONDITION"
        assert action not in allowed_actions(state)


def test_supersede_and_create_cannot_be_requested_on_a_version() -> None:
    for action in (PolicyAction.SUPERSEDE, PolicyAction.CREATE):
        with pytest.raises(IllegalTransitionError) as caught:
            check_transition(PolicyState.ACTIVE, action)
        assert caught.value.reason == "ACTION_NOT_REQUESTABLE"


# --------------------------------------------------------------------------------- separation of duties


def reviewed_version() -> PolicyVersion:
    created = create_policy(
        principal=ALICE, name="after-hours-click", title="t", rule=RULE, severity="HIGH", now=at(0)
    )
    return submit_policy(created.after, principal=BOB, now=at(1)).after


@pytest.mark.parametrize(
    ("approver", "why"),
    [
        (Principal(id="alice", roles=frozenset({"policy_approver"})), "wrote"),
        (Principal(id="bob", roles=frozenset({"policy_approver"})), "submitted"),
    ],
    ids=["author", "submitter"],
)
def test_author_or_submitter_may_not_approve(approver: Principal, why: str) -> None:
    with pytest.raises(SeparationOfDutiesError) as caught:
        approve_policy(reviewed_version(), principal=approver, now=at(2))
    assert caught.value.reason == "SEPARATION_OF_DUTIES"
    assert caught.value.grpc_code_name == "PERMISSION_DENIED"
    assert why in caught.value.message


def test_an_editor_of_the_version_may_not_approve_it() -> None:
    created = create_policy(principal=ALICE, name="p", title="t", rule=RULE, severity="LOW", now=at(0))
    editor = Principal(id="erin", roles=frozenset({"policy_author", "policy_approver"}))
    edited = update_draft(created.after, principal=editor, now=at(1), rule="event.hour > 20")
    submitted = submit_policy(edited.after, principal=ALICE, now=at(2))
    with pytest.raises(SeparationOfDutiesError):
        approve_policy(submitted.after, principal=editor, now=at(3))


def test_a_third_person_may_approve() -> None:
    [change] = approve_policy(reviewed_version(), principal=CAROL, now=at(2))
    assert change.after.state is PolicyState.ACTIVE
    assert change.after.approver_id == "carol"


# ------------------------------------------------------------------------------------- permissions


def test_calls_without_a_principal_are_refused() -> None:
    for principal in (None, Principal(id="", roles=frozenset({"policy_admin"}))):
        with pytest.raises(PolicyUnauthenticatedError) as caught:
            submit_policy(version_in(PolicyState.DRAFT), principal=principal, now=at(1))
        assert caught.value.grpc_code_name == "UNAUTHENTICATED"
        with pytest.raises(PolicyUnauthenticatedError):
            create_policy(principal=principal, name="p", title="t", rule=RULE, severity="LOW", now=at(0))


@pytest.mark.parametrize(
    ("state", "action", "permission"),
    [
        (PolicyState.DRAFT, PolicyAction.UPDATE, Permission.AUTHOR),
        (PolicyState.DRAFT, PolicyAction.SUBMIT, Permission.SUBMIT),
        (PolicyState.REVIEW, PolicyAction.APPROVE, Permission.APPROVE),
        (PolicyState.REVIEW, PolicyAction.REJECT, Permission.REJECT),
        (PolicyState.ACTIVE, PolicyAction.RETIRE, Permission.RETIRE),
        (PolicyState.ACTIVE, PolicyAction.NEW_VERSION, Permission.AUTHOR),
    ],
)
def test_each_action_needs_its_permission(
    state: PolicyState, action: PolicyAction, permission: Permission
) -> None:
    everything_else = frozenset(Permission) - {permission}
    lacking = Principal(id="zed", permissions=frozenset(str(other) for other in everything_else))
    with pytest.raises(PolicyPermissionDeniedError) as caught:
        request(action, version_in(state), principal=lacking)
    assert caught.value.reason == "MISSING_PERMISSION"
    assert caught.value.metadata == {"permission": str(permission)}
    holding = Principal(id="zed", permissions=frozenset({str(permission)}))
    assert request(action, version_in(state), principal=holding).history.actor == "zed"


def test_create_needs_the_author_permission() -> None:
    with pytest.raises(PolicyPermissionDeniedError):
        create_policy(principal=CAROL, name="p", title="t", rule=RULE, severity="LOW", now=at(0))


# ------------------------------------------------------------------------------ history, full walk


def test_full_lifecycle_records_history_for_every_step() -> None:
    changes: list[PolicyChange] = []
    created = create_policy(
        principal=ALICE,
        name="after-hours-click",
        title="Click after hours",
        rule=RULE,
        severity="HIGH",
        now=at(0),
    )
    changes.append(created)
    changes.append(update_draft(changes[-1].after, principal=ALICE, now=at(1), rule=RULE + " && true"))
    changes.append(submit_policy(changes[-1].after, principal=BOB, now=at(2)))
    changes.append(
        reject_policy(changes[-1].after, principal=CAROL, now=at(3), reason="  needs a weekday check ")
    )
    changes.append(update_draft(changes[-1].after, principal=ALICE, now=at(4), title="Click after hours v1"))
    changes.append(submit_policy(changes[-1].after, principal=BOB, now=at(5)))
    changes.extend(approve_policy(changes[-1].after, principal=CAROL, now=at(6)))
    version_one = changes[-1].after
    changes.append(new_version(version_one, principal=ALICE, now=at(7), severity="CRITICAL"))
    changes.append(submit_policy(changes[-1].after, principal=BOB, now=at(8)))
    approval = approve_policy(changes[-1].after, principal=DAVE, now=at(9), currently_active=version_one)
    changes.extend(approval)
    changes.append(
        retire_policy(approval[0].after, principal=CAROL, now=at(10), reason="replaced by training")
    )

    rows = [
        (h.actor, h.action, h.from_state, h.to_state, h.version, h.reason, h.changed_fields, h.time)
        for h in (change.history for change in changes)
    ]
    fields = ("description", "rule", "severity", "title")
    assert rows == [
        ("alice", PolicyAction.CREATE, None, PolicyState.DRAFT, 1, None, fields, at(0)),
        ("alice", PolicyAction.UPDATE, PolicyState.DRAFT, PolicyState.DRAFT, 1, None, ("rule",), at(1)),
        ("bob", PolicyAction.SUBMIT, PolicyState.DRAFT, PolicyState.REVIEW, 1, None, (), at(2)),
        (
            "carol",
            PolicyAction.REJECT,
            PolicyState.REVIEW,
            PolicyState.DRAFT,
            1,
            "needs a weekday check",
            (),
            at(3),
        ),
        ("alice", PolicyAction.UPDATE, PolicyState.DRAFT, PolicyState.DRAFT, 1, None, ("title",), at(4)),
        ("bob", PolicyAction.SUBMIT, PolicyState.DRAFT, PolicyState.REVIEW, 1, None, (), at(5)),
        ("carol", PolicyAction.APPROVE, PolicyState.REVIEW, PolicyState.ACTIVE, 1, None, (), at(6)),
        (
            "alice",
            PolicyAction.NEW_VERSION,
            None,
            PolicyState.DRAFT,
            2,
            "based on version 1",
            ("severity",),
            at(7),
        ),
        ("bob", PolicyAction.SUBMIT, PolicyState.DRAFT, PolicyState.REVIEW, 2, None, (), at(8)),
        ("dave", PolicyAction.APPROVE, PolicyState.REVIEW, PolicyState.ACTIVE, 2, None, (), at(9)),
        (
            "dave",
            PolicyAction.SUPERSEDE,
            PolicyState.ACTIVE,
            PolicyState.RETIRED,
            1,
            "superseded by version 2",
            (),
            at(9),
        ),
        (
            "carol",
            PolicyAction.RETIRE,
            PolicyState.ACTIVE,
            PolicyState.RETIRED,
            2,
            "replaced by training",
            (),
            at(10),
        ),
    ]
    # Each change continues from the snapshot the previous change of the same version produced.
    latest: dict[int, PolicyVersion] = {}
    for change in changes:
        if change.before is None:
            assert change.after.version not in latest
        else:
            assert change.before == latest[change.before.version]
            assert change.after.revision == change.before.revision + 1
        latest[change.after.version] = change.after
    assert latest[1].state is PolicyState.RETIRED and latest[2].state is PolicyState.RETIRED
    assert latest[2].severity is PolicySeverity.CRITICAL and latest[2].title == "Click after hours v1"
    assert latest[2].author_id == "alice" and latest[2].approver_id == "dave"


def test_reject_needs_a_reason() -> None:
    for reason in ("", "   "):
        with pytest.raises(PolicyInvalidArgumentError) as caught:
            reject_policy(reviewed_version(), principal=CAROL, now=at(2), reason=reason)
        assert caught.value.reason == "REJECT_REASON_REQUIRED"
        assert caught.value.grpc_code_name == "INVALID_ARGUMENT"


def test_reject_clears_the_submitter_so_the_next_submission_counts() -> None:
    rejected = reject_policy(reviewed_version(), principal=CAROL, now=at(2), reason="no").after
    assert rejected.submitter_id is None
    resubmitted = submit_policy(
        rejected, principal=Principal(id="sam", roles=frozenset({"policy_author"})), now=at(3)
    )
    [approved] = approve_policy(
        resubmitted.after, principal=Principal(id="bob", roles=frozenset({"policy_approver"})), now=at(4)
    )
    assert approved.after.state is PolicyState.ACTIVE


def test_supersession_target_must_be_the_active_version_of_the_same_policy() -> None:
    review = version_in(PolicyState.REVIEW, version=2)
    for wrong in (version_in(PolicyState.RETIRED), version_in(PolicyState.ACTIVE, version=2)):
        with pytest.raises(ValueError, match="currently_active"):
            approve_policy(review, principal=CAROL, now=at(1), currently_active=wrong)


# ------------------------------------------------------------------------------------ validation


def test_rules_are_type_checked_when_written() -> None:
    with pytest.raises(InvalidRuleError) as caught:
        create_policy(principal=ALICE, name="p", title="t", rule="event.type == 1", severity="LOW", now=at(0))
    assert caught.value.column is not None
    with pytest.raises(InvalidRuleError):
        update_draft(version_in(PolicyState.DRAFT), principal=ALICE, now=at(1), rule="event.hour")
    with pytest.raises(InvalidRuleError):
        new_version(version_in(PolicyState.ACTIVE), principal=ALICE, now=at(1), rule="event.nope +")


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"name": "Bad_Name"}, "INVALID_POLICY_NAME"),
        ({"name": "-x"}, "INVALID_POLICY_NAME"),
        ({"severity": "SEVERE"}, "INVALID_SEVERITY"),
        ({"title": "  "}, "INVALID_TITLE"),
        ({"description": "x" * 5000}, "INVALID_DESCRIPTION"),
    ],
)
def test_create_validates_fields(overrides: dict[str, str], reason: str) -> None:
    arguments = {
        "name": "ok-name",
        "title": "t",
        "rule": RULE,
        "severity": "LOW",
        "description": "",
    } | overrides
    with pytest.raises(PolicyInvalidArgumentError) as caught:
        create_policy(principal=ALICE, now=at(0), **arguments)
    assert caught.value.reason == reason


def test_one_refusal_names_every_invalid_field() -> None:
    with pytest.raises(PolicyInvalidArgumentError) as caught:
        create_policy(
            principal=ALICE, name="p", title=" ", rule="event.type == 1", severity="SEVERE", now=at(0)
        )
    refused = [caught.value, *caught.value.others]
    assert [error.reason for error in refused] == ["INVALID_TITLE", "INVALID_RULE", "INVALID_SEVERITY"]
    with pytest.raises(PolicyInvalidArgumentError) as caught:
        update_draft(version_in(PolicyState.DRAFT), principal=ALICE, now=at(1), title="", rule="event.nope")
    assert [error.reason for error in (caught.value, *caught.value.others)] == [
        "INVALID_TITLE",
        "INVALID_RULE",
    ]
    # One invalid field alone is raised as before, with nothing else attached.
    with pytest.raises(InvalidRuleError) as alone:
        update_draft(version_in(PolicyState.DRAFT), principal=ALICE, now=at(1), title="ok", rule="event.nope")
    assert alone.value.others == ()


# ------------------------------------------------------------------------------------------- etags


def test_etag_changes_with_every_change_and_stale_etags_are_refused() -> None:
    draft = version_in(PolicyState.DRAFT)
    edited = update_draft(draft, principal=ALICE, now=at(1), etag=draft.etag, title="x").after
    assert edited.etag != draft.etag
    with pytest.raises(EtagMismatchError) as caught:
        submit_policy(edited, principal=BOB, now=at(2), etag=draft.etag)
    assert caught.value.reason == "ETAG_MISMATCH"
    assert caught.value.grpc_code_name == "ABORTED"
    assert submit_policy(edited, principal=BOB, now=at(2), etag=edited.etag).after.state is PolicyState.REVIEW
    assert submit_policy(edited, principal=BOB, now=at(2), etag=None).after.state is PolicyState.REVIEW


def test_compute_etag_depends_on_name_version_and_revision() -> None:
    base = compute_etag(name="p", version=1, revision=1)
    assert base == compute_etag(name="p", version=1, revision=1)
    others = {
        compute_etag(name="q", version=1, revision=1),
        compute_etag(name="p", version=2, revision=1),
        compute_etag(name="p", version=1, revision=2),
    }
    assert base not in others and len(others) == 3


# ------------------------------------------------------------------------------------------ errors

EXPECTED_CODES: dict[type[PolicyError], str] = {
    errors.InvalidRuleError: "INVALID_ARGUMENT",
    errors.PolicyInvalidArgumentError: "INVALID_ARGUMENT",
    errors.IllegalTransitionError: "FAILED_PRECONDITION",
    errors.SeparationOfDutiesError: "PERMISSION_DENIED",
    errors.PolicyPermissionDeniedError: "PERMISSION_DENIED",
    errors.EtagMismatchError: "ABORTED",
    errors.PolicyUnauthenticatedError: "UNAUTHENTICATED",
    errors.RuleEvaluationError: "INTERNAL",
}


def test_every_error_is_a_policy_error_with_reason_and_grpc_code() -> None:
    declared = {
        value
        for value in vars(errors).values()
        if isinstance(value, type) and issubclass(value, PolicyError) and value is not PolicyError
    }
    assert declared == set(EXPECTED_CODES)
    for error_type, code in EXPECTED_CODES.items():
        assert error_type.grpc_code_name == code
        assert re.fullmatch(r"[A-Z][A-Z0-9_]*", error_type.reason)
        instance = error_type("message")
        assert str(instance) == "message" and instance.reason == error_type.reason
