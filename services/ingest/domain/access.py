"""Access records as the log holds them: ``audit.action`` system events, and their index rows.

A service records who read personal data or changed state as an ``audit.action`` event
(services/runtime/audit.py builds them): no personal data, the subject's pseudonym in
``subject_pseudonym`` when exactly one subject is concerned, several comma-joined in the
``pseudonyms`` detail, and the record's own facts (principal, action, method, resource, outcome) as
details beside the handler's. Ingest stores each one with index rows (``access_records``), one per
pseudonym, that ListAccessRecords filters on; this module reads those facts out of an event.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from services.ingest.domain.errors import FieldViolation
from services.ingest.domain.events import MAX_PSEUDONYM_CHARS

__all__ = [
    "AUDIT_EVENT_TYPE",
    "MAX_ACTION_CHARS",
    "MAX_OUTCOME_CHARS",
    "MAX_PRINCIPAL_CHARS",
    "MAX_RESOURCE_CHARS",
    "RECORD_DETAILS",
    "AccessFacts",
    "access_facts",
    "access_violations",
]

AUDIT_EVENT_TYPE = "audit.action"  # services.runtime.audit.AUDIT_EVENT_TYPE
# The widths of the index columns, which are the ListAccessRecords filters' max_length too.
MAX_PRINCIPAL_CHARS = 256
MAX_ACTION_CHARS = 64
MAX_RESOURCE_CHARS = 256
MAX_OUTCOME_CHARS = 64
# Details that are the record's own fields, not facts a handler added.
RECORD_DETAILS = frozenset({"principal", "action", "method", "resource", "outcome", "pseudonyms"})
_WIDTHS = (
    ("principal", MAX_PRINCIPAL_CHARS),
    ("action", MAX_ACTION_CHARS),
    ("resource", MAX_RESOURCE_CHARS),
    ("outcome", MAX_OUTCOME_CHARS),
)


@dataclass(frozen=True, slots=True)
class AccessFacts:
    """One access record's facts, read out of its event."""

    principal: str
    action: str
    method: str
    resource: str
    outcome: str
    pseudonyms: tuple[str, ...]
    details: Mapping[str, str]  # the handler's facts (and ``part`` of a split record)


def _pseudonyms(subject_pseudonym: str, details: Mapping[str, str]) -> tuple[str, ...]:
    """The subjects concerned, in recorded order, each once."""
    named = [subject_pseudonym, *details.get("pseudonyms", "").split(",")]
    return tuple(dict.fromkeys(p for p in named if p))


def access_facts(*, subject_pseudonym: str, details: Mapping[str, str]) -> AccessFacts:
    return AccessFacts(
        principal=details.get("principal", ""),
        action=details.get("action", ""),
        method=details.get("method", ""),
        resource=details.get("resource", ""),
        outcome=details.get("outcome", ""),
        pseudonyms=_pseudonyms(subject_pseudonym, details),
        details={key: value for key, value in details.items() if key not in RECORD_DETAILS},
    )


def access_violations(
    *, subject_pseudonym: str, details: Mapping[str, str], field_prefix: str = "event"
) -> list[FieldViolation]:
    """What keeps an ``audit.action`` event out of the index (so out of the log: one refused
    record, never a failed group commit): a missing action, or a value wider than its column."""
    field = f"{field_prefix}.details"
    violations = []
    if not details.get("action"):
        violations.append(FieldViolation(field, "an audit.action event must name its action"))
    for key, width in _WIDTHS:
        if len(details.get(key, "")) > width:
            violations.append(FieldViolation(field, f"{key} must be at most {width} characters"))
    if any(len(p) > MAX_PSEUDONYM_CHARS for p in _pseudonyms(subject_pseudonym, details)):
        violations.append(
            FieldViolation(field, f"pseudonyms must be at most {MAX_PSEUDONYM_CHARS} characters each")
        )
    return violations
