"""Proto <-> domain conversion of the policy service's messages (used by the servicer in :mod:`.api`)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

from awareness.policy.v1 import policy_pb2

from services.policy.domain.cel import EvaluationResult, EventFacts, SubjectFacts
from services.policy.domain.lifecycle import PolicyAction
from services.policy.repository import StoredHistoryEntry, StoredPolicy
from services.runtime.errors import FieldViolation, InvalidArgumentError
from services.runtime.timestamps import from_timestamp, to_timestamp

_NAME = re.compile(r"^policies/([a-z]([a-z0-9-]{0,61}[a-z0-9])?)$")

_HISTORY_ACTIONS: Final[Mapping[PolicyAction, int]] = {
    PolicyAction.CREATE: policy_pb2.PolicyHistoryEntry.ACTION_CREATE,
    PolicyAction.UPDATE: policy_pb2.PolicyHistoryEntry.ACTION_UPDATE,
    PolicyAction.SUBMIT: policy_pb2.PolicyHistoryEntry.ACTION_SUBMIT,
    PolicyAction.APPROVE: policy_pb2.PolicyHistoryEntry.ACTION_APPROVE,
    PolicyAction.REJECT: policy_pb2.PolicyHistoryEntry.ACTION_REJECT,
    PolicyAction.RETIRE: policy_pb2.PolicyHistoryEntry.ACTION_RETIRE,
    PolicyAction.SUPERSEDE: policy_pb2.PolicyHistoryEntry.ACTION_RETIRE,
    PolicyAction.NEW_VERSION: policy_pb2.PolicyHistoryEntry.ACTION_REVISE,
}


def is_policy_name(name: str) -> bool:
    """Whether ``name`` is a valid ``policies/{policy}`` (what an access record may name)."""
    return _NAME.fullmatch(name) is not None


def policy_id_from_name(name: str, *, field: str = "name") -> str:
    match = _NAME.fullmatch(name)
    if match is None:
        raise InvalidArgumentError(
            f"{field} must look like policies/{{policy}}, got {name!r}",
            reason="INVALID_POLICY_NAME",
            violations=[FieldViolation(field, "must be policies/{policy} with a valid policy id")],
        )
    return match.group(1)


def severity_name(value: int) -> str:
    """``SEVERITY_HIGH`` -> ``HIGH``; unspecified or unknown numbers give an empty string."""
    try:
        name = policy_pb2.Severity.Name(value)  # type: ignore[arg-type]
    except ValueError:
        return ""
    return "" if value == policy_pb2.SEVERITY_UNSPECIFIED else name.removeprefix("SEVERITY_")


def policy_to_proto(stored: StoredPolicy) -> policy_pb2.Policy:
    snapshot = stored.version
    return policy_pb2.Policy(
        name=f"policies/{snapshot.name}",
        title=snapshot.title,
        description=snapshot.description,
        rule=snapshot.rule,
        severity=policy_pb2.Severity.Value(f"SEVERITY_{snapshot.severity.value}"),
        version=snapshot.version,
        state=policy_pb2.Policy.State.Value(f"STATE_{snapshot.state.value}"),
        author=snapshot.author_id,
        submitter=snapshot.submitter_id or "",
        approver=snapshot.approver_id or "",
        reject_reason=stored.reject_reason or "",
        retire_reason=stored.retire_reason or "",
        create_time=to_timestamp(snapshot.create_time),
        update_time=to_timestamp(snapshot.update_time),
        etag=snapshot.etag,
    )


def history_to_proto(stored: StoredHistoryEntry) -> policy_pb2.PolicyHistoryEntry:
    entry = stored.entry
    return policy_pb2.PolicyHistoryEntry(
        actor=entry.actor,
        time=to_timestamp(entry.time),
        action=_HISTORY_ACTIONS[entry.action],  # type: ignore[arg-type]
        from_state=(
            policy_pb2.Policy.STATE_UNSPECIFIED
            if entry.from_state is None
            else policy_pb2.Policy.State.Value(f"STATE_{entry.from_state.value}")
        ),
        to_state=policy_pb2.Policy.State.Value(f"STATE_{entry.to_state.value}"),
        version=entry.version,
        reason=entry.reason or "",
        changed_fields=list(entry.changed_fields),
    )


def _subject_facts(facts: Mapping[str, float]) -> SubjectFacts:
    """The subject history ingest sends as named aggregates, in the shape rules read (``subject.*``)."""
    return SubjectFacts(
        events_24h=int(facts.get("events_24h", 0)),
        violations_30d=int(facts.get("violations_30d", 0)),
        phishing_clicks_30d=int(facts.get("phishing_clicks_30d", 0)),
        phishing_reports_30d=int(facts.get("phishing_reports_30d", 0)),
        training_overdue=facts.get("training_overdue", 0.0) != 0.0,
        facts=dict(facts),
    )


def event_facts(event: policy_pb2.EvaluationInput, *, index: int) -> EventFacts:
    """One ``EvaluationInput`` as the evaluator sees it; refuses what no rule could be judged on."""
    violations = []
    if not event.event_id:
        violations.append(FieldViolation(f"events[{index}].event_id", "required"))
    if not event.type:
        violations.append(FieldViolation(f"events[{index}].type", "required"))
    if not event.HasField("occurred_at"):
        violations.append(FieldViolation(f"events[{index}].occurred_at", "required"))
    if violations:
        raise InvalidArgumentError(
            f"event {index} lacks required fields", reason="INVALID_EVENT", violations=violations
        )
    return EventFacts(
        event_id=event.event_id,
        event_type=event.type,
        source=event.source,
        severity=severity_name(event.severity),
        occurred_at=from_timestamp(event.occurred_at),
        details=dict(event.details),
        subject=_subject_facts(event.facts),
    )


def result_to_proto(result: EvaluationResult) -> policy_pb2.EvaluationResult:
    return policy_pb2.EvaluationResult(
        event_id=result.event_id,
        violations=[
            policy_pb2.Violation(
                policy=f"policies/{violation.policy}",
                version=violation.version,
                severity=policy_pb2.Severity.Value(f"SEVERITY_{violation.severity}"),
                title=violation.title,
            )
            for violation in result.violations
        ],
        errors=[
            policy_pb2.EvaluationError(
                policy=f"policies/{error.policy}", version=error.version, message=error.message
            )
            for error in result.errors
        ],
    )
