"""The policies pages' logic: list filters, the editor's form, the live rule check, who may approve a
version, which lifecycle actions to offer, and the diff between two versions of a policy."""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from awareness.policy.v1 import policy_pb2
from google.protobuf import field_mask_pb2

from services.runtime.errors import FieldViolation

Policy = policy_pb2.Policy
Entry = policy_pb2.PolicyHistoryEntry

PAGE_SIZE: Final = 25
STATES: Final = {
    "draft": Policy.STATE_DRAFT,
    "review": Policy.STATE_REVIEW,
    "active": Policy.STATE_ACTIVE,
    "retired": Policy.STATE_RETIRED,
}
STATE_NAMES: Final = {Policy.STATE_UNSPECIFIED: "", **{value: key for key, value in STATES.items()}}
# What each state means to the person reading the page.
STATE_HELP: Final = {
    "draft": "being written; not evaluated",
    "review": "waiting for someone to approve or reject it",
    "active": "approved; evaluated against every event",
    "retired": "no longer evaluated",
}
# The severities a policy may have (SEVERITY_INFO is refused for policies).
SEVERITIES: Final = {
    "low": policy_pb2.SEVERITY_LOW,
    "medium": policy_pb2.SEVERITY_MEDIUM,
    "high": policy_pb2.SEVERITY_HIGH,
    "critical": policy_pb2.SEVERITY_CRITICAL,
}
SEVERITY_NAMES: Final = {
    policy_pb2.SEVERITY_UNSPECIFIED: "",
    policy_pb2.SEVERITY_INFO: "info",
    **{value: key for key, value in SEVERITIES.items()},
}
ACTION_NAMES: Final = {
    Entry.ACTION_UNSPECIFIED: "changed",
    Entry.ACTION_CREATE: "created",
    Entry.ACTION_UPDATE: "edited",
    Entry.ACTION_SUBMIT: "submitted",
    Entry.ACTION_APPROVE: "approved",
    Entry.ACTION_REJECT: "rejected",
    Entry.ACTION_RETIRE: "retired",
    Entry.ACTION_REVISE: "started",
}
# History actions that make their actor one of the version's writers (the service's "contributors").
WRITING_ACTIONS: Final = frozenset({Entry.ACTION_CREATE, Entry.ACTION_UPDATE, Entry.ACTION_REVISE})
EDITABLE_FIELDS: Final = ("title", "description", "severity", "rule")
# The service's field names (``policy.rule``) -> the editor's inputs.
FORM_FIELDS: Final = {
    "policy_id": "policy_id",
    "policy.name": "policy_id",
    "policy.title": "title",
    "policy.description": "description",
    "policy.rule": "rule",
    "policy.severity": "severity",
}
_POSITION = re.compile(r"^invalid CEL(?: at line (\d+), column (\d+))?: (.*)$", re.DOTALL)
_COMPILER_PREFIX = re.compile(r"^ERROR: <input>:\d+:\d+: ")


# --------------------------------------------------------------------------------------- the list


@dataclass(frozen=True, slots=True)
class ListFilters:
    """The list page's query: a state (a key of :data:`STATES`, or empty for all) and a page."""

    state: str = ""
    page_token: str = ""
    violations: tuple[FieldViolation, ...] = ()

    def query(self, *, page_token: str | None = None) -> dict[str, str]:
        """The query string that shows this list again (on another page when ``page_token`` is given)."""
        token = self.page_token if page_token is None else page_token
        return {key: value for key, value in (("state", self.state), ("page_token", token)) if value}


def parse_list_filters(query: Mapping[str, str]) -> ListFilters:
    state = query.get("state", "").strip().lower()
    if state and state not in STATES:
        return ListFilters(violations=(FieldViolation("state", f"one of {', '.join(STATES)}"),))
    return ListFilters(state=state, page_token=query.get("page_token", ""))


def list_request(filters: ListFilters, *, page_size: int = PAGE_SIZE) -> policy_pb2.ListPoliciesRequest:
    return policy_pb2.ListPoliciesRequest(
        page_size=page_size,
        page_token=filters.page_token,
        state=STATES.get(filters.state, Policy.STATE_UNSPECIFIED),
    )


def policy_id_of(name: str) -> str:
    """``policies/after-hours`` -> ``after-hours``."""
    return name.removeprefix("policies/")


# ------------------------------------------------------------------------------------- the editor


@dataclass(frozen=True, slots=True)
class PolicyDraft:
    """What the editor's form holds: a new policy's id (empty when editing) and the four editable fields."""

    policy_id: str = ""
    title: str = ""
    description: str = ""
    rule: str = ""
    severity: str = ""

    def policy(self, *, name: str = "", etag: str = "") -> policy_pb2.Policy:
        return policy_pb2.Policy(
            name=name,
            title=self.title,
            description=self.description,
            rule=self.rule,
            severity=SEVERITIES.get(self.severity, policy_pb2.SEVERITY_UNSPECIFIED),
            etag=etag,
        )


def draft_from_form(form: Mapping[str, list[str]]) -> PolicyDraft:
    """The editor's values as typed; the rule and description keep their line breaks and indentation."""

    def value(name: str, *, strip: bool = True) -> str:
        raw = (form.get(name) or [""])[0].replace("\r\n", "\n")
        return raw.strip() if strip else raw.rstrip()

    return PolicyDraft(
        policy_id=value("policy_id"),
        title=value("title"),
        description=value("description", strip=False),
        rule=value("rule", strip=False),
        severity=value("severity").lower(),
    )


def draft_from_policy(policy: policy_pb2.Policy) -> PolicyDraft:
    return PolicyDraft(
        title=policy.title,
        description=policy.description,
        rule=policy.rule,
        severity=SEVERITY_NAMES.get(policy.severity, ""),
    )


def offered_choice_violations(draft: PolicyDraft) -> list[FieldViolation]:
    """What the portal itself refuses: a severity its form never offers. The service checks the rest."""
    if draft.severity and draft.severity not in SEVERITIES:
        return [FieldViolation("severity", f"one of {', '.join(SEVERITIES)}")]
    return []


def create_request(
    draft: PolicyDraft, *, request_id: str = "", validate_only: bool = False
) -> policy_pb2.CreatePolicyRequest:
    return policy_pb2.CreatePolicyRequest(
        policy_id=draft.policy_id,
        policy=draft.policy(),
        request_id=request_id,
        validate_only=validate_only,
    )


def update_request(
    name: str, draft: PolicyDraft, *, etag: str, validate_only: bool = False, rule_only: bool = False
) -> policy_pb2.UpdatePolicyRequest:
    """Every editable field from the form (an emptied description too), or only the rule for its check."""
    paths = ["rule"] if rule_only else list(EDITABLE_FIELDS)
    return policy_pb2.UpdatePolicyRequest(
        policy=draft.policy(name=name, etag=etag),
        update_mask=field_mask_pb2.FieldMask(paths=paths),
        validate_only=validate_only,
    )


def errors_by_field(violations: Iterable[FieldViolation]) -> dict[str, list[str]]:
    """The violations under the editor's inputs they concern; any other under ``""`` (shown on top)."""
    found: dict[str, list[str]] = {}
    for violation in violations:
        found.setdefault(FORM_FIELDS.get(violation.field, ""), []).append(violation.description)
    return found


@dataclass(frozen=True, slots=True)
class RuleCheck:
    """The live check's answer: the rule compiles, or the compiler's message and where it points."""

    compiles: bool
    message: str = ""
    line: int | None = None
    column: int | None = None
    excerpt: str = ""

    @property
    def where(self) -> str:
        return f"Line {self.line}, column {self.column}" if self.line is not None else ""


def rule_check(violations: Sequence[FieldViolation]) -> RuleCheck:
    """The rule's verdict among a validate-only call's violations (other fields' do not concern it).

    The service words a rule's violation ``invalid CEL at line L, column C: <compiler message>``; the
    compiler's message may end with the rule's line and a caret under the column, kept as the excerpt.
    """
    for violation in violations:
        if FORM_FIELDS.get(violation.field) != "rule":
            continue
        match = _POSITION.match(violation.description)
        if match is None:
            return RuleCheck(compiles=False, message=violation.description)
        line, column, text = match.groups()
        first, _, rest = _COMPILER_PREFIX.sub("", text).partition("\n")
        return RuleCheck(
            compiles=False,
            message=first.strip(),
            line=int(line) if line else None,
            column=int(column) if column else None,
            excerpt="\n".join(part.removeprefix(" | ") for part in rest.splitlines()),
        )
    return RuleCheck(compiles=True)


def readable(violations: Sequence[FieldViolation]) -> list[FieldViolation]:
    """The violations as the editor lists them: a rule's as ``Line L, column C: message``, without the
    compiler's excerpt (the rule's status shows that under the rule)."""
    shown = []
    for violation in violations:
        if FORM_FIELDS.get(violation.field) == "rule":
            verdict = rule_check([violation])
            text = f"{verdict.where}: {verdict.message}" if verdict.where else verdict.message
            violation = FieldViolation(violation.field, text)
        shown.append(violation)
    return shown


# ----------------------------------------------------------------------- lifecycle and its duties


def version_states(entries: Iterable[policy_pb2.PolicyHistoryEntry]) -> dict[int, int]:
    """Each version's state now, from the history (oldest first): the state its last entry left."""
    states: dict[int, int] = {}
    for entry in entries:
        states[entry.version] = entry.to_state
    return dict(sorted(states.items()))


def writers(entries: Iterable[policy_pb2.PolicyHistoryEntry], version: int) -> list[str]:
    """Who created or edited ``version``, in order: all of them count as its authors."""
    found: list[str] = []
    for entry in entries:
        if entry.version == version and entry.action in WRITING_ACTIONS and entry.actor not in found:
            found.append(entry.actor)
    return found


def approval_barrier(
    policy: policy_pb2.Policy, entries: Iterable[policy_pb2.PolicyHistoryEntry], subject: str
) -> str:
    """Why ``subject`` may not approve ``policy`` (under review) even with the role: "wrote" or
    "submitted"; empty when nothing stands in the way. The service decides; this only explains."""
    if policy.state != Policy.STATE_REVIEW or not subject:
        return ""
    if subject == policy.author or subject in writers(entries, policy.version):
        return "wrote"
    if subject == policy.submitter:
        return "submitted"
    return ""


@dataclass(frozen=True, slots=True)
class Actions:
    """The lifecycle buttons to show: those the person's role allows and the states permit."""

    edit: bool = False
    submit: bool = False
    revise: bool = False
    approve: bool = False
    reject: bool = False
    retire: bool = False

    @property
    def any(self) -> bool:
        return any((self.edit, self.submit, self.revise, self.approve, self.reject, self.retire))


def available_actions(
    newest: policy_pb2.Policy, *, has_active: bool, can: Callable[[str], bool], barrier: str
) -> Actions:
    """``newest`` is the policy's newest version; ``has_active`` whether any version is ACTIVE."""
    state = newest.state
    author, approver = can("policy:author"), can("policy:approve")
    return Actions(
        edit=author and state == Policy.STATE_DRAFT,
        submit=author and state == Policy.STATE_DRAFT,
        revise=author and state in (Policy.STATE_ACTIVE, Policy.STATE_RETIRED),
        approve=approver and state == Policy.STATE_REVIEW and not barrier,
        reject=approver and state == Policy.STATE_REVIEW,
        retire=can("policy:retire") and has_active,
    )


# --------------------------------------------------------------------------------------- the diff


@dataclass(frozen=True, slots=True)
class DiffLine:
    """One line of the rule's diff: ``added``, ``removed`` or ``same``, with its +/- marker."""

    kind: str
    text: str

    @property
    def marker(self) -> str:
        return {"added": "+", "removed": "-"}.get(self.kind, " ")


@dataclass(frozen=True, slots=True)
class FieldChange:
    field: str
    before: str
    after: str


@dataclass(frozen=True, slots=True)
class VersionDiff:
    before: int
    after: int
    fields: list[FieldChange] = field(default_factory=list)
    rule: list[DiffLine] = field(default_factory=list)

    @property
    def rule_changed(self) -> bool:
        return any(line.kind != "same" for line in self.rule)

    @property
    def added(self) -> int:
        return sum(line.kind == "added" for line in self.rule)

    @property
    def removed(self) -> int:
        return sum(line.kind == "removed" for line in self.rule)


def rule_diff(before: str, after: str) -> list[DiffLine]:
    """Every line of both rules in order, each kept, removed or added (rules are short: no elision)."""
    old, new = before.splitlines(), after.splitlines()
    lines: list[DiffLine] = []
    for tag, old_start, old_end, new_start, new_end in difflib.SequenceMatcher(
        a=old, b=new, autojunk=False
    ).get_opcodes():
        if tag == "equal":
            lines.extend(DiffLine("same", text) for text in old[old_start:old_end])
            continue
        lines.extend(DiffLine("removed", text) for text in old[old_start:old_end])
        lines.extend(DiffLine("added", text) for text in new[new_start:new_end])
    return lines


def _shown_field(policy: policy_pb2.Policy, name: str) -> str:
    if name == "severity":
        return SEVERITY_NAMES.get(policy.severity, "")
    value: str = getattr(policy, name)
    return value


def diff_versions(before: policy_pb2.Policy, after: policy_pb2.Policy) -> VersionDiff:
    """What changed from ``before`` to ``after``: title, description and severity side by side, and
    the rule line by line."""
    changes = [
        FieldChange(name, _shown_field(before, name), _shown_field(after, name))
        for name in ("title", "description", "severity")
        if _shown_field(before, name) != _shown_field(after, name)
    ]
    return VersionDiff(
        before=before.version, after=after.version, fields=changes, rule=rule_diff(before.rule, after.rule)
    )


def parse_diff_choice(
    query: Mapping[str, str], *, newest: int
) -> tuple[tuple[int, int] | None, list[FieldViolation]]:
    """The two versions to compare (``from`` and ``to`` of the page's GET form), if asked for and valid."""
    raw_from, raw_to = query.get("from", "").strip(), query.get("to", "").strip()
    if not raw_from and not raw_to:
        return None, []
    chosen: list[int] = []
    violations = []
    for name, raw in (("from", raw_from), ("to", raw_to)):
        if not raw.isdigit() or not 1 <= int(raw) <= newest:
            violations.append(FieldViolation(name, f"a version from 1 to {newest}"))
        else:
            chosen.append(int(raw))
    if violations:
        return None, violations
    if chosen[0] == chosen[1]:
        return None, [FieldViolation("to", "choose two different versions")]
    return (chosen[0], chosen[1]), []


def parse_version(raw: str, *, newest: int) -> int | None:
    """The version the page is asked to show (``?version=``), or None for the newest or a bad value."""
    raw = raw.strip()
    if raw.isdigit() and 1 <= int(raw) <= newest:
        return int(raw)
    return None
