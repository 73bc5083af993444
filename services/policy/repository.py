"""Data access of the policy service: typed, keyword-only functions that take the session explicitly.

Writes go through :func:`apply_changes`, which writes what the domain decided (a list of
:class:`~services.policy.domain.lifecycle.PolicyChange`) in the caller's transaction. Every UPDATE is
conditional on the revision the domain saw, so of two concurrent writers exactly one wins and the other gets
:class:`~services.policy.domain.errors.EtagMismatchError` (ABORTED).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session, aliased

from services.policy.domain.cel import ActivePolicy
from services.policy.domain.errors import EtagMismatchError
from services.policy.domain.lifecycle import (
    HistoryEntry,
    PolicyAction,
    PolicyChange,
    PolicySeverity,
    PolicyState,
    PolicyVersion,
)
from services.policy.models import ActiveSetGenerationRow, PolicyHistoryRow, PolicyVersionRow

_ACTIVE_SET_ROW = 1


@dataclass(frozen=True, kw_only=True)
class StoredPolicy:
    """A policy version as stored: the domain snapshot plus the reasons kept for display."""

    version: PolicyVersion
    reject_reason: str | None = None
    retire_reason: str | None = None


@dataclass(frozen=True, kw_only=True)
class StoredHistoryEntry:
    """A history entry with its position in the log (the key pages are cut on)."""

    id: int
    entry: HistoryEntry


# ------------------------------------------------------------------------------------------ conversion


def _to_domain(row: PolicyVersionRow) -> StoredPolicy:
    snapshot = PolicyVersion(
        name=row.policy_id,
        version=row.version,
        state=PolicyState(row.state),
        title=row.title,
        rule=row.rule,
        severity=PolicySeverity(row.severity),
        description=row.description,
        author_id=row.author,
        contributors=frozenset(row.contributors),
        submitter_id=row.submitter,
        approver_id=row.approver,
        revision=row.revision,
        create_time=row.create_time,
        update_time=row.update_time,
    )
    return StoredPolicy(version=snapshot, reject_reason=row.reject_reason, retire_reason=row.retire_reason)


def _history_to_domain(row: PolicyHistoryRow) -> StoredHistoryEntry:
    return StoredHistoryEntry(
        id=row.id,
        entry=HistoryEntry(
            policy=row.policy_id,
            version=row.version,
            actor=row.actor,
            time=row.time,
            action=PolicyAction(row.action),
            from_state=None if row.from_state is None else PolicyState(row.from_state),
            to_state=PolicyState(row.to_state),
            reason=row.reason,
            changed_fields=tuple(row.changed_fields),
        ),
    )


def _content(snapshot: PolicyVersion) -> dict[str, object]:
    """The columns a change may set, from a domain snapshot."""
    return {
        "state": snapshot.state.value,
        "title": snapshot.title,
        "description": snapshot.description,
        "rule": snapshot.rule,
        "severity": snapshot.severity.value,
        "author": snapshot.author_id,
        "contributors": sorted(snapshot.contributors),
        "submitter": snapshot.submitter_id,
        "approver": snapshot.approver_id,
        "revision": snapshot.revision,
        "update_time": snapshot.update_time,
    }


def _reasons(history: HistoryEntry) -> dict[str, object]:
    """How a change moves the displayed reasons: a rejection sets one, a new submission clears it."""
    if history.action is PolicyAction.REJECT:
        return {"reject_reason": history.reason}
    if history.action is PolicyAction.SUBMIT:
        return {"reject_reason": None}
    if history.action in (PolicyAction.RETIRE, PolicyAction.SUPERSEDE):
        return {"retire_reason": history.reason}
    return {}


# --------------------------------------------------------------------------------------------- reads


def get_version(session: Session, *, policy_id: str, version: int) -> StoredPolicy | None:
    row = session.get(PolicyVersionRow, (policy_id, version))
    return None if row is None else _to_domain(row)


def list_versions(session: Session, *, policy_id: str) -> list[StoredPolicy]:
    """Every version of one policy, oldest first (a policy has a handful, so no paging)."""
    rows = session.scalars(
        select(PolicyVersionRow)
        .where(PolicyVersionRow.policy_id == policy_id)
        .order_by(PolicyVersionRow.version)
    )
    return [_to_domain(row) for row in rows]


def find_by_request_id(session: Session, *, request_id: str) -> StoredPolicy | None:
    row = session.scalars(select(PolicyVersionRow).where(PolicyVersionRow.request_id == request_id)).first()
    return None if row is None else _to_domain(row)


def list_current_versions(
    session: Session,
    *,
    limit: int,
    after: tuple[str, int] | None = None,
    state: PolicyState | None = None,
    severity: PolicySeverity | None = None,
) -> list[StoredPolicy]:
    """The versions ListPolicies shows, ordered by (policy id, version), starting after the key ``after``.

    Current means ACTIVE, DRAFT or REVIEW, or the newest version when that one is RETIRED (a retired
    policy). A superseded version is never current: its successor is newer.
    """
    newer = aliased(PolicyVersionRow)
    is_newest = (
        ~select(newer.version)
        .where(newer.policy_id == PolicyVersionRow.policy_id, newer.version > PolicyVersionRow.version)
        .exists()
    )
    query = select(PolicyVersionRow).where(
        or_(PolicyVersionRow.state != PolicyState.RETIRED.value, is_newest)
    )
    if state is not None:
        query = query.where(PolicyVersionRow.state == state.value)
    if severity is not None:
        query = query.where(PolicyVersionRow.severity == severity.value)
    if after is not None:
        policy_id, version = after
        query = query.where(
            or_(
                PolicyVersionRow.policy_id > policy_id,
                and_(PolicyVersionRow.policy_id == policy_id, PolicyVersionRow.version > version),
            )
        )
    query = query.order_by(PolicyVersionRow.policy_id, PolicyVersionRow.version).limit(limit)
    return [_to_domain(row) for row in session.scalars(query)]


def list_history(
    session: Session, *, policy_id: str, limit: int, after_id: int | None = None
) -> list[StoredHistoryEntry]:
    """History of one policy in the order it was written, starting after the entry ``after_id``."""
    query = select(PolicyHistoryRow).where(PolicyHistoryRow.policy_id == policy_id)
    if after_id is not None:
        query = query.where(PolicyHistoryRow.id > after_id)
    query = query.order_by(PolicyHistoryRow.id).limit(limit)
    return [_history_to_domain(row) for row in session.scalars(query)]


def active_set_generation(session: Session) -> int:
    """The counter that moves whenever the set of ACTIVE versions changes (read it before the set)."""
    generation = session.scalar(
        select(ActiveSetGenerationRow.generation).where(ActiveSetGenerationRow.id == _ACTIVE_SET_ROW)
    )
    return int(generation or 0)


def list_active_policies(session: Session) -> list[ActivePolicy]:
    """Every ACTIVE version, by policy id, as the evaluator needs them."""
    rows = session.execute(
        select(
            PolicyVersionRow.policy_id,
            PolicyVersionRow.version,
            PolicyVersionRow.rule,
            PolicyVersionRow.severity,
            PolicyVersionRow.title,
        )
        .where(PolicyVersionRow.state == PolicyState.ACTIVE.value)
        .order_by(PolicyVersionRow.policy_id)
    )
    return [
        ActivePolicy(name=policy_id, version=version, rule=rule, severity=severity, title=title)
        for policy_id, version, rule, severity, title in rows
    ]


def count_active_policies(session: Session) -> int:
    count = session.scalar(
        select(func.count()).select_from(PolicyVersionRow).where(PolicyVersionRow.state == "ACTIVE")
    )
    return int(count or 0)


# -------------------------------------------------------------------------------------------- writes


def _changes_active_set(change: PolicyChange) -> bool:
    was_active = change.before is not None and change.before.state is PolicyState.ACTIVE
    return was_active != (change.after.state is PolicyState.ACTIVE)


def apply_changes(
    session: Session, *, changes: Sequence[PolicyChange], request_id: str | None = None
) -> None:
    """Write the domain's changes and their history in the caller's transaction.

    A change without ``before`` inserts a new version (``request_id`` is recorded on it); any other change
    updates the version only if it still has ``before.revision``, and raises :class:`EtagMismatchError`
    otherwise (the caller's transaction then rolls back, so no partial change is ever visible). A duplicate
    insert raises SQLAlchemy's ``IntegrityError`` at flush.
    """
    for change in changes:
        after = change.after
        if change.before is None:
            session.add(
                PolicyVersionRow(
                    policy_id=after.name,
                    version=after.version,
                    create_time=after.create_time,
                    request_id=request_id,
                    reject_reason=None,
                    retire_reason=None,
                    **_content(after),
                )
            )
            session.flush()
        else:
            before = change.before
            result = session.execute(
                update(PolicyVersionRow)
                .where(
                    PolicyVersionRow.policy_id == before.name,
                    PolicyVersionRow.version == before.version,
                    PolicyVersionRow.revision == before.revision,
                )
                .values(**_content(after), **_reasons(change.history))
                .execution_options(synchronize_session=False)
            )
            if result.rowcount != 1:  # type: ignore[attr-defined]
                raise EtagMismatchError(
                    f"policy {before.name} version {before.version} was changed concurrently; read it again"
                )
        history = change.history
        session.add(
            PolicyHistoryRow(
                policy_id=history.policy,
                version=history.version,
                actor=history.actor,
                time=history.time,
                action=history.action.value,
                from_state=None if history.from_state is None else history.from_state.value,
                to_state=history.to_state.value,
                reason=history.reason,
                changed_fields=list(history.changed_fields),
            )
        )
    if any(_changes_active_set(change) for change in changes):
        session.execute(
            update(ActiveSetGenerationRow)
            .where(ActiveSetGenerationRow.id == _ACTIVE_SET_ROW)
            .values(generation=ActiveSetGenerationRow.generation + 1)
            .execution_options(synchronize_session=False)
        )
    session.flush()
