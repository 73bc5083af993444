"""The policies pages' logic: filters, the editor's form, the rule check's verdict, who may approve,
the buttons offered, and the diff between versions."""

from __future__ import annotations

import pytest
from awareness.policy.v1 import policy_pb2

from services.portal.domain import policies
from services.portal.domain.policies import DiffLine, FieldChange, PolicyDraft
from services.runtime.errors import FieldViolation

Policy = policy_pb2.Policy
Entry = policy_pb2.PolicyHistoryEntry


def entry(version: int, action: int, actor: str, to_state: int) -> policy_pb2.PolicyHistoryEntry:
    return Entry(version=version, action=action, actor=actor, to_state=to_state)  # type: ignore[arg-type]


HISTORY = [
    entry(1, Entry.ACTION_CREATE, "alice", Policy.STATE_DRAFT),
    entry(1, Entry.ACTION_UPDATE, "erin", Policy.STATE_DRAFT),
    entry(1, Entry.ACTION_SUBMIT, "bob", Policy.STATE_REVIEW),
    entry(1, Entry.ACTION_APPROVE, "carol", Policy.STATE_ACTIVE),
    entry(2, Entry.ACTION_REVISE, "dave", Policy.STATE_DRAFT),
    entry(2, Entry.ACTION_SUBMIT, "dave", Policy.STATE_REVIEW),
]


def test_list_filters_take_a_known_state_and_refuse_others() -> None:
    filters = policies.parse_list_filters({"state": "Review", "page_token": "abc"})
    assert (filters.state, filters.page_token, filters.violations) == ("review", "abc", ())
    request = policies.list_request(filters)
    assert (request.state, request.page_token, request.page_size) == (Policy.STATE_REVIEW, "abc", 25)
    assert filters.query(page_token="next") == {"state": "review", "page_token": "next"}
    assert filters.query(page_token="") == {"state": "review"}
    refused = policies.parse_list_filters({"state": "pending"})
    assert [violation.field for violation in refused.violations] == ["state"]
    assert policies.list_request(policies.parse_list_filters({})).state == Policy.STATE_UNSPECIFIED


def test_the_form_becomes_create_and_update_requests() -> None:
    form = {
        "policy_id": [" after-hours "],
        "title": [" Clicks after hours "],
        "description": ["Why:\r\n  clicks at night\r\n"],
        "rule": ['event.type == "x" &&\r\n  event.outside_hours  '],
        "severity": ["HIGH"],
    }
    draft = policies.draft_from_form(form)
    assert draft == PolicyDraft(
        policy_id="after-hours",
        title="Clicks after hours",
        description="Why:\n  clicks at night",
        rule='event.type == "x" &&\n  event.outside_hours',
        severity="high",
    )
    create = policies.create_request(draft, request_id="r-1", validate_only=True)
    assert (create.policy_id, create.request_id, create.validate_only) == ("after-hours", "r-1", True)
    assert (create.policy.severity, create.policy.rule) == (policy_pb2.SEVERITY_HIGH, draft.rule)
    update = policies.update_request("policies/after-hours", draft, etag='"e1"')
    assert list(update.update_mask.paths) == ["title", "description", "severity", "rule"]
    assert (update.policy.name, update.policy.etag, update.validate_only) == (
        "policies/after-hours",
        '"e1"',
        False,
    )
    check = policies.update_request(
        "policies/after-hours", draft, etag="", validate_only=True, rule_only=True
    )
    assert list(check.update_mask.paths) == ["rule"] and check.validate_only


def test_only_a_severity_the_form_never_offers_is_refused_by_the_portal() -> None:
    assert policies.offered_choice_violations(PolicyDraft(severity="high")) == []
    assert policies.offered_choice_violations(PolicyDraft(severity="")) == [], (
        "the service says it is missing"
    )
    assert [v.field for v in policies.offered_choice_violations(PolicyDraft(severity="info"))] == ["severity"]


def test_a_policy_round_trips_through_the_editor() -> None:
    policy = Policy(title="t", description="d", rule="true", severity=policy_pb2.SEVERITY_CRITICAL)
    assert policies.draft_from_policy(policy) == PolicyDraft(
        title="t", description="d", rule="true", severity="critical"
    )


def test_violations_land_beside_their_inputs() -> None:
    found = policies.errors_by_field(
        [
            FieldViolation("policy.title", "title must be 1..200 characters"),
            FieldViolation("policy.rule", "invalid CEL"),
            FieldViolation("policy_id", "bad id"),
            FieldViolation("request_id", "must be a UUID"),
        ]
    )
    assert found == {
        "title": ["title must be 1..200 characters"],
        "rule": ["invalid CEL"],
        "policy_id": ["bad id"],
        "": ["must be a UUID"],
    }


def test_the_rule_check_reads_the_compilers_message_and_position() -> None:
    description = (
        "invalid CEL at line 2, column 14: ERROR: <input>:2:14: found no matching overload for '_>_' "
        "applied to '(int, string)'\n |   event.hour > \"a\"\n | .............^"
    )
    verdict = policies.rule_check(
        [
            FieldViolation("policy.title", "title must be 1..200 characters"),
            FieldViolation("policy.rule", description),
        ]
    )
    assert not verdict.compiles
    assert verdict.message == "found no matching overload for '_>_' applied to '(int, string)'"
    assert (verdict.line, verdict.column, verdict.where) == (2, 14, "Line 2, column 14")
    assert verdict.excerpt == '  event.hour > "a"\n.............^'

    not_boolean = policies.rule_check(
        [
            FieldViolation(
                "policy.rule", "invalid CEL: rule must be a boolean expression, but it evaluates to STRING"
            )
        ]
    )
    assert (not_boolean.compiles, not_boolean.where) == (False, "")
    assert not_boolean.message == "rule must be a boolean expression, but it evaluates to STRING"
    # Other fields' violations do not concern the rule.
    assert policies.rule_check([FieldViolation("policy.title", "missing")]).compiles
    assert policies.rule_check([]).compiles


def test_version_states_and_writers_come_from_the_history() -> None:
    assert policies.version_states(HISTORY) == {1: Policy.STATE_ACTIVE, 2: Policy.STATE_REVIEW}
    assert policies.writers(HISTORY, 1) == ["alice", "erin"]
    assert policies.writers(HISTORY, 2) == ["dave"]


@pytest.mark.parametrize(
    ("subject", "barrier"),
    [("dave", "wrote"), ("alice", ""), ("carol", ""), ("", "")],
)
def test_who_may_not_approve_a_version_under_review(subject: str, barrier: str) -> None:
    review = Policy(version=2, state=Policy.STATE_REVIEW, author="dave", submitter="dave")
    assert policies.approval_barrier(review, HISTORY, subject) == barrier


def test_an_editor_or_submitter_of_the_version_may_not_approve_it() -> None:
    review = Policy(version=1, state=Policy.STATE_REVIEW, author="alice", submitter="bob")
    assert policies.approval_barrier(review, HISTORY, "erin") == "wrote"
    assert policies.approval_barrier(review, HISTORY, "bob") == "submitted"
    active = Policy(version=1, state=Policy.STATE_ACTIVE, author="alice")
    assert policies.approval_barrier(active, HISTORY, "alice") == "", "nothing to approve"


def test_buttons_follow_the_role_and_the_state() -> None:
    author, approver = {"policy:author", "policy:read"}, {"policy:approve", "policy:retire", "policy:read"}

    def offered(state: int, granted: set[str], *, has_active: bool = False, barrier: str = "") -> set[str]:
        actions = policies.available_actions(
            Policy(state=state),  # type: ignore[arg-type]
            has_active=has_active,
            can=lambda permission: permission in granted,
            barrier=barrier,
        )
        return {
            name
            for name in ("edit", "submit", "revise", "approve", "reject", "retire")
            if getattr(actions, name)
        }

    assert offered(Policy.STATE_DRAFT, author) == {"edit", "submit"}
    assert offered(Policy.STATE_DRAFT, approver) == set()
    assert offered(Policy.STATE_REVIEW, author) == set()
    assert offered(Policy.STATE_REVIEW, approver) == {"approve", "reject"}
    assert offered(Policy.STATE_REVIEW, approver | author, barrier="wrote") == {"reject"}
    assert offered(Policy.STATE_ACTIVE, author, has_active=True) == {"revise"}
    assert offered(Policy.STATE_ACTIVE, approver, has_active=True) == {"retire"}
    assert offered(Policy.STATE_DRAFT, approver, has_active=True) == {"retire"}, "v1 active, v2 drafted"
    assert offered(Policy.STATE_RETIRED, author | approver) == {"revise"}
    assert offered(Policy.STATE_ACTIVE, {"policy:read"}, has_active=True) == set()
    assert not policies.available_actions(
        Policy(state=Policy.STATE_ACTIVE), has_active=True, can=lambda _permission: False, barrier=""
    ).any


def test_the_rule_diff_marks_added_and_removed_lines_in_order() -> None:
    before = 'event.type == "phishing.clicked"\n&& event.outside_hours\n&& subject.training_overdue'
    after = 'event.type == "phishing.clicked"\n&& event.hour > 20\n&& subject.training_overdue\n&& true'
    assert policies.rule_diff(before, after) == [
        DiffLine("same", 'event.type == "phishing.clicked"'),
        DiffLine("removed", "&& event.outside_hours"),
        DiffLine("added", "&& event.hour > 20"),
        DiffLine("same", "&& subject.training_overdue"),
        DiffLine("added", "&& true"),
    ]
    assert [line.marker for line in policies.rule_diff("a", "b")] == ["-", "+"]
    assert policies.rule_diff("same", "same") == [DiffLine("same", "same")]


def test_a_version_diff_lists_changed_fields_and_counts_lines() -> None:
    one = Policy(version=1, title="Clicks", description="d", rule="a\nb", severity=policy_pb2.SEVERITY_HIGH)
    two = Policy(
        version=2, title="Clicks", description="", rule="a\nc\nd", severity=policy_pb2.SEVERITY_CRITICAL
    )
    diff = policies.diff_versions(one, two)
    assert (diff.before, diff.after) == (1, 2)
    assert diff.fields == [FieldChange("description", "d", ""), FieldChange("severity", "high", "critical")]
    assert (diff.rule_changed, diff.added, diff.removed) == (True, 2, 1)
    unchanged = policies.diff_versions(one, one)
    assert (unchanged.fields, unchanged.rule_changed) == ([], False)


@pytest.mark.parametrize(
    ("query", "choice", "fields"),
    [
        ({}, None, []),
        ({"from": "1", "to": "3"}, (1, 3), []),
        ({"from": "3", "to": "1"}, (3, 1), []),
        ({"from": "2", "to": "2"}, None, ["to"]),
        ({"from": "0", "to": "4"}, None, ["from", "to"]),
        ({"from": "x", "to": "1"}, None, ["from"]),
        ({"to": "2"}, None, ["from"]),
    ],
)
def test_the_diff_choice_is_two_different_existing_versions(
    query: dict[str, str], choice: tuple[int, int] | None, fields: list[str]
) -> None:
    found, violations = policies.parse_diff_choice(query, newest=3)
    assert found == choice
    assert [violation.field for violation in violations] == fields


def test_the_version_asked_for_must_exist() -> None:
    assert policies.parse_version("2", newest=3) == 2
    assert policies.parse_version("", newest=3) is None
    assert policies.parse_version("4", newest=3) is None
    assert policies.parse_version("-1", newest=3) is None
    assert policies.policy_id_of("policies/after-hours") == "after-hours"


def test_the_editor_lists_a_rule_violation_by_its_position() -> None:
    rule = FieldViolation(
        "policy.rule",
        "invalid CEL at line 1, column 6: ERROR: <input>:1:6: undeclared reference to 'event.nope'\n"
        " | event.nope\n | .....^",
    )
    title = FieldViolation("policy.title", "title must be 1..200 characters")
    assert policies.readable([title, rule]) == [
        title,
        FieldViolation("policy.rule", "Line 1, column 6: undeclared reference to 'event.nope'"),
    ]
