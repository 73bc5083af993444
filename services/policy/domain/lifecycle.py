"""Policy version lifecycle: states, permitted transitions, permissions, separation of duties, history, etags.

Every function here is pure: it takes the current snapshot of a policy version and returns the new snapshot(s)
plus the history entry to record; the persistence layer writes them in one transaction (conditionally on the
``before.revision`` it read, so two concurrent writers cannot both win).

States and transitions of one version::

    DRAFT --submit--> REVIEW --approve--> ACTIVE --retire--> RETIRED
      ^                 |                   |
      +-----reject------+                   +--(approving version n+1 supersedes it)--> RETIRED

``update`` is allowed only in DRAFT. ``new_version`` starts version n+1 as a DRAFT from the latest version
when that one is ACTIVE or RETIRED (a retired policy comes back only through a new reviewed version).

Checks run in this order: authentication, permission, etag, state, arguments, separation of duties.
"""

from __future__ import annotations

import datetime
import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Final, TypeVar

from services.policy.domain.cel import compile_rule
from services.policy.domain.errors import (
    EtagMismatchError,
    IllegalTransitionError,
    PolicyInvalidArgumentError,
    PolicyPermissionDeniedError,
    PolicyUnauthenticatedError,
    SeparationOfDutiesError,
)

_Value = TypeVar("_Value")
_Checked = TypeVar("_Checked")


class PolicyState(StrEnum):
    DRAFT = "DRAFT"
    REVIEW = "REVIEW"
    ACTIVE = "ACTIVE"
    RETIRED = "RETIRED"


class PolicyAction(StrEnum):
    CREATE = "CREATE"
    UPDATE = "UPDATE"
    SUBMIT = "SUBMIT"
    APPROVE = "APPROVE"
    REJECT = "REJECT"
    RETIRE = "RETIRE"
    NEW_VERSION = "NEW_VERSION"
    # Recorded on the previously active version when a newer one is approved; never requested directly.
    SUPERSEDE = "SUPERSEDE"


class PolicySeverity(StrEnum):
    LOW = "LOW"
    MEDIUM = "MEDIUM"
    HIGH = "HIGH"
    CRITICAL = "CRITICAL"


class Permission(StrEnum):
    AUTHOR = "author_policy"
    SUBMIT = "submit_policy"
    APPROVE = "approve_policy"
    REJECT = "reject_policy"
    RETIRE = "retire_policy"


ROLE_PERMISSIONS: Final[Mapping[str, frozenset[Permission]]] = {
    "policy_author": frozenset({Permission.AUTHOR, Permission.SUBMIT}),
    "policy_approver": frozenset({Permission.APPROVE, Permission.REJECT, Permission.RETIRE}),
    "policy_admin": frozenset(Permission),
}

ACTION_PERMISSIONS: Final[Mapping[PolicyAction, Permission]] = {
    PolicyAction.CREATE: Permission.AUTHOR,
    PolicyAction.UPDATE: Permission.AUTHOR,
    PolicyAction.NEW_VERSION: Permission.AUTHOR,
    PolicyAction.SUBMIT: Permission.SUBMIT,
    PolicyAction.APPROVE: Permission.APPROVE,
    PolicyAction.REJECT: Permission.REJECT,
    PolicyAction.RETIRE: Permission.RETIRE,
}


@dataclass(frozen=True)
class _Rule:
    allowed_from: frozenset[PolicyState]
    # None: the version keeps its state (update) or a new version is created (new_version).
    to_state: PolicyState | None
    refusal_reason: str


# Actions a caller may request on an existing version. CREATE has no source state; SUPERSEDE is internal.
TRANSITIONS: Final[Mapping[PolicyAction, _Rule]] = {
    PolicyAction.UPDATE: _Rule(frozenset({PolicyState.DRAFT}), None, "POLICY_NOT_DRAFT"),
    PolicyAction.SUBMIT: _Rule(frozenset({PolicyState.DRAFT}), PolicyState.REVIEW, "POLICY_NOT_DRAFT"),
    PolicyAction.APPROVE: _Rule(frozenset({PolicyState.REVIEW}), PolicyState.ACTIVE, "POLICY_NOT_IN_REVIEW"),
    PolicyAction.REJECT: _Rule(frozenset({PolicyState.REVIEW}), PolicyState.DRAFT, "POLICY_NOT_IN_REVIEW"),
    PolicyAction.RETIRE: _Rule(frozenset({PolicyState.ACTIVE}), PolicyState.RETIRED, "POLICY_NOT_ACTIVE"),
    PolicyAction.NEW_VERSION: _Rule(
        frozenset({PolicyState.ACTIVE, PolicyState.RETIRED}), None, "POLICY_VERSION_PENDING"
    ),
}

_POLICY_ID = re.compile(r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")
TITLE_MAX_CHARS: Final = 200
DESCRIPTION_MAX_CHARS: Final = 4000


def allowed_actions(state: PolicyState) -> frozenset[PolicyAction]:
    """The requestable actions legal from ``state`` (for UIs and for the tests that walk the table)."""
    return frozenset(action for action, rule in TRANSITIONS.items() if state in rule.allowed_from)


def check_transition(state: PolicyState, action: PolicyAction) -> None:
    """Raise :class:`IllegalTransitionError` unless ``action`` is legal from ``state``."""
    rule = TRANSITIONS.get(action)
    if rule is None:
        raise IllegalTransitionError(
            f"{action} cannot be requested directly",
            reason="ACTION_NOT_REQUESTABLE",
            metadata={"action": action},
        )
    if state in rule.allowed_from:
        return
    reason = "POLICY_ALREADY_RETIRED" if state is PolicyState.RETIRED else rule.refusal_reason
    raise IllegalTransitionError(
        f"cannot {action.lower()} a policy version in state {state}",
        reason=reason,
        metadata={"state": state, "action": action},
    )


@dataclass(frozen=True, kw_only=True)
class Principal:
    """The authenticated caller. Permissions come directly or through :data:`ROLE_PERMISSIONS` roles."""

    id: str
    permissions: frozenset[str] = frozenset()
    roles: frozenset[str] = frozenset()

    def has(self, permission: Permission) -> bool:
        if permission in self.permissions:
            return True
        return any(permission in ROLE_PERMISSIONS.get(role, frozenset()) for role in self.roles)


def compute_etag(*, name: str, version: int, revision: int) -> str:
    """Opaque etag of one state of one policy version; changes whenever the version's revision does."""
    digest = hashlib.sha256(f"{name}\x00{version}\x00{revision}".encode()).hexdigest()
    return f'"{digest[:24]}"'


@dataclass(frozen=True, kw_only=True)
class PolicyVersion:
    """Snapshot of one version of a policy. ``name`` is the policy id (AIP-122), e.g. ``after-hours-click``.

    ``contributors`` holds everyone who created or edited this version (all count as its authors for
    separation of duties); ``revision`` increases with every change and feeds the etag.
    """

    name: str
    version: int
    state: PolicyState
    title: str
    rule: str
    severity: PolicySeverity
    description: str
    author_id: str
    contributors: frozenset[str]
    submitter_id: str | None
    approver_id: str | None
    revision: int
    create_time: datetime.datetime
    update_time: datetime.datetime

    @property
    def etag(self) -> str:
        return compute_etag(name=self.name, version=self.version, revision=self.revision)


@dataclass(frozen=True, kw_only=True)
class HistoryEntry:
    policy: str
    version: int
    actor: str
    time: datetime.datetime
    action: PolicyAction
    from_state: PolicyState | None
    to_state: PolicyState
    reason: str | None = None
    changed_fields: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class PolicyChange:
    """One row to write: ``before`` is None for a new version (insert), else the snapshot it replaces."""

    before: PolicyVersion | None
    after: PolicyVersion
    history: HistoryEntry


# ---------------------------------------------------------------------------------------------- checks


def _authorize(principal: Principal | None, action: PolicyAction) -> Principal:
    if principal is None or not principal.id:
        raise PolicyUnauthenticatedError("an authenticated principal is required")
    permission = ACTION_PERMISSIONS[action]
    if not principal.has(permission):
        raise PolicyPermissionDeniedError(
            f"{action.lower()} needs the {permission} permission",
            reason="MISSING_PERMISSION",
            metadata={"permission": permission},
        )
    return principal


def _authorize_change(
    policy: PolicyVersion, *, principal: Principal | None, action: PolicyAction, etag: str | None
) -> Principal:
    """The actor allowed to take ``action`` on ``policy``, unchanged since ``etag``, in its current state."""
    actor = _authorize(principal, action)
    check_etag(policy, etag)
    check_transition(policy.state, action)
    return actor


def check_etag(policy: PolicyVersion, etag: str | None) -> None:
    """An empty etag means "unconditional" (AIP-154); any other value must match the current one."""
    if etag and etag != policy.etag:
        raise EtagMismatchError(f"policy {policy.name} version {policy.version} changed since it was read")


def _valid_severity(severity: str) -> PolicySeverity:
    try:
        return PolicySeverity(severity)
    except ValueError:
        allowed = ", ".join(PolicySeverity)
        raise PolicyInvalidArgumentError(
            f"severity must be one of {allowed}", reason="INVALID_SEVERITY", metadata={"field": "severity"}
        ) from None


def _valid_title(title: str) -> str:
    if not title.strip() or len(title) > TITLE_MAX_CHARS:
        raise PolicyInvalidArgumentError(
            f"title must be 1..{TITLE_MAX_CHARS} characters",
            reason="INVALID_TITLE",
            metadata={"field": "title"},
        )
    return title


def _valid_description(description: str) -> str:
    if len(description) > DESCRIPTION_MAX_CHARS:
        raise PolicyInvalidArgumentError(
            f"description must be at most {DESCRIPTION_MAX_CHARS} characters",
            reason="INVALID_DESCRIPTION",
            metadata={"field": "description"},
        )
    return description


def _valid_rule(rule: str) -> str:
    compile_rule(rule)  # raises InvalidRuleError with the compiler's message and position
    return rule


class _FieldChecks:
    """Runs every field's check of one request, so that its refusal names all the invalid fields at once
    (a form shows them together), not only the first."""

    def __init__(self) -> None:
        self._failures: list[PolicyInvalidArgumentError] = []

    def check(
        self, validate: Callable[[_Value], _Checked], value: _Value, *, otherwise: _Checked
    ) -> _Checked:
        """``validate(value)``, or ``otherwise`` (never used: :meth:`raise_any` follows) when it fails."""
        try:
            return validate(value)
        except PolicyInvalidArgumentError as exc:
            self._failures.append(exc)
            return otherwise

    def raise_any(self) -> None:
        """Raise the first failure, carrying the others."""
        if self._failures:
            first, *others = self._failures
            first.others = tuple(others)
            raise first


_EDITABLE_FIELDS: Final = ("description", "rule", "severity", "title")


def _changed_fields(before: PolicyVersion, after: PolicyVersion) -> tuple[str, ...]:
    return tuple(key for key in _EDITABLE_FIELDS if getattr(before, key) != getattr(after, key))


def _advanced(policy: PolicyVersion, *, to_state: PolicyState, now: datetime.datetime) -> PolicyVersion:
    """The next revision of ``policy`` in ``to_state``; callers adjust further fields with ``replace``."""
    return replace(policy, state=to_state, revision=policy.revision + 1, update_time=now)


def _transition(
    before: PolicyVersion,
    after: PolicyVersion,
    *,
    actor: Principal,
    action: PolicyAction,
    reason: str | None = None,
    changed_fields: tuple[str, ...] = (),
) -> PolicyChange:
    history = HistoryEntry(
        policy=before.name,
        version=before.version,
        actor=actor.id,
        time=after.update_time,
        action=action,
        from_state=before.state,
        to_state=after.state,
        reason=reason,
        changed_fields=changed_fields,
    )
    return PolicyChange(before=before, after=after, history=history)


def _new_draft(
    *,
    name: str,
    version: int,
    title: str,
    rule: str,
    severity: PolicySeverity,
    description: str,
    actor: Principal,
    now: datetime.datetime,
) -> PolicyVersion:
    """Revision 1 of a new version, a DRAFT written by ``actor`` alone."""
    return PolicyVersion(
        name=name,
        version=version,
        state=PolicyState.DRAFT,
        title=title,
        rule=rule,
        severity=severity,
        description=description,
        author_id=actor.id,
        contributors=frozenset({actor.id}),
        submitter_id=None,
        approver_id=None,
        revision=1,
        create_time=now,
        update_time=now,
    )


def _drafted(
    draft: PolicyVersion,
    *,
    actor: Principal,
    action: PolicyAction,
    changed_fields: tuple[str, ...],
    reason: str | None = None,
) -> PolicyChange:
    """The insert of a new version's first draft, with its history entry (it comes from no state)."""
    history = HistoryEntry(
        policy=draft.name,
        version=draft.version,
        actor=actor.id,
        time=draft.create_time,
        action=action,
        from_state=None,
        to_state=draft.state,
        reason=reason,
        changed_fields=changed_fields,
    )
    return PolicyChange(before=None, after=draft, history=history)


# ------------------------------------------------------------------------------------------- actions


def create_policy(
    *,
    principal: Principal | None,
    name: str,
    title: str,
    rule: str,
    severity: str,
    description: str = "",
    now: datetime.datetime,
) -> PolicyChange:
    """Version 1 of a new policy, as a DRAFT authored by ``principal``."""
    actor = _authorize(principal, PolicyAction.CREATE)
    if not _POLICY_ID.fullmatch(name):
        raise PolicyInvalidArgumentError(
            "policy name must be 1-63 lowercase letters, digits or hyphens, starting with a letter",
            reason="INVALID_POLICY_NAME",
            metadata={"field": "name"},
        )
    checks = _FieldChecks()
    draft = _new_draft(
        name=name,
        version=1,
        title=checks.check(_valid_title, title, otherwise=title),
        rule=checks.check(_valid_rule, rule, otherwise=rule),
        severity=checks.check(_valid_severity, severity, otherwise=PolicySeverity.LOW),
        description=checks.check(_valid_description, description, otherwise=description),
        actor=actor,
        now=now,
    )
    checks.raise_any()
    return _drafted(draft, actor=actor, action=PolicyAction.CREATE, changed_fields=_EDITABLE_FIELDS)


def update_draft(
    policy: PolicyVersion,
    *,
    principal: Principal | None,
    now: datetime.datetime,
    etag: str | None = None,
    title: str | None = None,
    rule: str | None = None,
    severity: str | None = None,
    description: str | None = None,
) -> PolicyChange:
    """Edit a DRAFT; ``None`` leaves a field unchanged. The editor becomes a contributor of the version."""
    actor = _authorize_change(policy, principal=principal, action=PolicyAction.UPDATE, etag=etag)
    checks = _FieldChecks()
    after = replace(
        _advanced(policy, to_state=PolicyState.DRAFT, now=now),
        title=policy.title if title is None else checks.check(_valid_title, title, otherwise=title),
        rule=policy.rule if rule is None else checks.check(_valid_rule, rule, otherwise=rule),
        severity=policy.severity
        if severity is None
        else checks.check(_valid_severity, severity, otherwise=policy.severity),
        description=policy.description
        if description is None
        else checks.check(_valid_description, description, otherwise=description),
        contributors=policy.contributors | {actor.id},
    )
    checks.raise_any()
    return _transition(
        policy, after, actor=actor, action=PolicyAction.UPDATE, changed_fields=_changed_fields(policy, after)
    )


def submit_policy(
    policy: PolicyVersion, *, principal: Principal | None, now: datetime.datetime, etag: str | None = None
) -> PolicyChange:
    """DRAFT -> REVIEW."""
    actor = _authorize_change(policy, principal=principal, action=PolicyAction.SUBMIT, etag=etag)
    after = replace(_advanced(policy, to_state=PolicyState.REVIEW, now=now), submitter_id=actor.id)
    return _transition(policy, after, actor=actor, action=PolicyAction.SUBMIT)


def approve_policy(
    policy: PolicyVersion,
    *,
    principal: Principal | None,
    now: datetime.datetime,
    etag: str | None = None,
    currently_active: PolicyVersion | None = None,
) -> list[PolicyChange]:
    """REVIEW -> ACTIVE, plus the supersession (ACTIVE -> RETIRED) of ``currently_active`` if given.

    The approver may be neither a contributor to nor the submitter of this version. Apply all returned changes
    in one transaction, so exactly one version of a policy is ACTIVE at any time.
    """
    actor = _authorize_change(policy, principal=principal, action=PolicyAction.APPROVE, etag=etag)
    if currently_active is not None and (
        currently_active.name != policy.name
        or currently_active.state is not PolicyState.ACTIVE
        or currently_active.version == policy.version
    ):
        raise ValueError("currently_active must be another, ACTIVE version of the same policy")
    if actor.id in policy.contributors or actor.id == policy.submitter_id:
        role = "wrote" if actor.id in policy.contributors else "submitted"
        raise SeparationOfDutiesError(
            f"{actor.id} {role} version {policy.version} of {policy.name} and so cannot approve it"
        )
    approved = replace(_advanced(policy, to_state=PolicyState.ACTIVE, now=now), approver_id=actor.id)
    changes = [_transition(policy, approved, actor=actor, action=PolicyAction.APPROVE)]
    if currently_active is not None:
        superseded = _advanced(currently_active, to_state=PolicyState.RETIRED, now=now)
        changes.append(
            _transition(
                currently_active,
                superseded,
                actor=actor,
                action=PolicyAction.SUPERSEDE,
                reason=f"superseded by version {policy.version}",
            )
        )
    return changes


def reject_policy(
    policy: PolicyVersion,
    *,
    principal: Principal | None,
    now: datetime.datetime,
    reason: str,
    etag: str | None = None,
) -> PolicyChange:
    """REVIEW -> DRAFT with a mandatory reason; the version must be submitted again after edits."""
    actor = _authorize_change(policy, principal=principal, action=PolicyAction.REJECT, etag=etag)
    if not reason.strip():
        raise PolicyInvalidArgumentError(
            "a rejection needs a reason", reason="REJECT_REASON_REQUIRED", metadata={"field": "reason"}
        )
    after = replace(_advanced(policy, to_state=PolicyState.DRAFT, now=now), submitter_id=None)
    return _transition(policy, after, actor=actor, action=PolicyAction.REJECT, reason=reason.strip())


def retire_policy(
    policy: PolicyVersion,
    *,
    principal: Principal | None,
    now: datetime.datetime,
    etag: str | None = None,
    reason: str | None = None,
) -> PolicyChange:
    """ACTIVE -> RETIRED; the policy stops being evaluated."""
    actor = _authorize_change(policy, principal=principal, action=PolicyAction.RETIRE, etag=etag)
    after = _advanced(policy, to_state=PolicyState.RETIRED, now=now)
    return _transition(
        policy, after, actor=actor, action=PolicyAction.RETIRE, reason=(reason or "").strip() or None
    )


def new_version(
    latest: PolicyVersion,
    *,
    principal: Principal | None,
    now: datetime.datetime,
    title: str | None = None,
    rule: str | None = None,
    severity: str | None = None,
    description: str | None = None,
) -> PolicyChange:
    """Start version ``latest.version + 1`` as a DRAFT, copying unchanged fields from ``latest``.

    ``latest`` must be the newest version of the policy (the unique (name, version) key makes a concurrent
    second new version fail on insert). The current ACTIVE version keeps being evaluated until this one is
    approved.
    """
    actor = _authorize(principal, PolicyAction.NEW_VERSION)
    check_transition(latest.state, PolicyAction.NEW_VERSION)
    draft = _new_draft(
        name=latest.name,
        version=latest.version + 1,
        title=latest.title if title is None else _valid_title(title),
        rule=latest.rule if rule is None else _valid_rule(rule),
        severity=latest.severity if severity is None else _valid_severity(severity),
        description=latest.description if description is None else _valid_description(description),
        actor=actor,
        now=now,
    )
    return _drafted(
        draft,
        actor=actor,
        action=PolicyAction.NEW_VERSION,
        reason=f"based on version {latest.version}",
        changed_fields=_changed_fields(latest, draft),
    )
