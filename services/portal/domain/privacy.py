"""The data protection pages' pure logic: the forms a DPO fills in, checked; consent state per
purpose; event counts; the export's file name; and the check of the gdpr audit trail's hash chain.

The consent rules and the chain's hashing are the gdpr service's own pure functions
(``services.gdpr.domain``), reused rather than written a second time: the portal must decide
exactly as the service and ``awareness gdpr verify-audit`` do.
"""

from __future__ import annotations

import re
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from awareness.gdpr.v1 import gdpr_pb2
from awareness.ingest.v1 import ingest_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from services.gdpr.domain.audit import GENESIS_HASH, AuditEntry, compute_entry_hash, verify_chain
from services.gdpr.domain.consent import PURPOSES, ConsentAction, ConsentEvent, current_states
from services.runtime.errors import FieldViolation, InvalidArgumentError

# Counting a person's events stops here; beyond it the page says "1000+".
COUNT_CAP: Final = 1000
MAX_IDENTIFIER: Final = 320  # an e-mail address at its longest
MAX_REASON: Final = 500
MAX_RETENTION_DAYS: Final = 36_500
ERASURE_EVENT_TYPE: Final = "gdpr.erasure"  # what gdpr appends to the log for each erasure
CONSENT_ACTIONS: Final = ("grant", "withdraw")
_PSEUDONYM: Final = re.compile(r"[A-Za-z0-9_-]{1,128}")
_ERASURE_ID: Final = re.compile(r"[A-Za-z0-9_-]{1,128}")


def _invalid(message: str, violations: Sequence[FieldViolation]) -> InvalidArgumentError:
    return InvalidArgumentError(message, violations=list(violations))


# --- identifiers and names ----------------------------------------------------------------------


def identifier_of(form: Mapping[str, list[str]]) -> str:
    """The data subject's identifier a form carries; refused when empty or absurdly long."""
    value = (form.get("subject") or [""])[0].strip()
    if not value:
        raise _invalid("no identifier", [FieldViolation("subject", "enter the person's identifier")])
    if len(value) > MAX_IDENTIFIER:
        raise _invalid(
            "identifier too long", [FieldViolation("subject", f"at most {MAX_IDENTIFIER} characters")]
        )
    return value


def is_pseudonym(value: str) -> bool:
    """Whether ``value`` can be a pseudonym (what may appear in a portal URL)."""
    return bool(_PSEUDONYM.fullmatch(value))


def is_erasure_id(value: str) -> bool:
    return bool(_ERASURE_ID.fullmatch(value))


def erasure_id_of(name: str) -> str:
    """``erasures/{id}`` -> ``id``."""
    return name.removeprefix("erasures/")


def erasure_named_by(event: ingest_pb2.Event) -> str:
    """The erasure record a ``gdpr.erasure`` log event names (``erasures/{id}``), or empty."""
    if event.type != ERASURE_EVENT_TYPE:
        return ""
    name = event.details.get("erasure", "")
    return name if name.startswith("erasures/") and is_erasure_id(erasure_id_of(name)) else ""


def export_filename(pseudonym: str) -> str:
    """``export-<pseudonym>.json``: named by pseudonym, so a downloads folder names nobody."""
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", pseudonym) or "subject"
    return f"export-{safe}.json"


def request_id_of(form: Mapping[str, list[str]]) -> str:
    """The form's idempotency key when it is a UUID (a resubmitted form repeats the first call's
    effect, never a second one), else a new one."""
    value = (form.get("request_id") or [""])[0].strip()
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return str(uuid.uuid4())


def reason_of(form: Mapping[str, list[str]], *, required: bool, what: str) -> str:
    value = (form.get("reason") or [""])[0].strip()
    if required and not value:
        raise _invalid(
            "no reason",
            [FieldViolation("reason", f"say why {what} (e.g. the ticket of the request); no personal data")],
        )
    if len(value) > MAX_REASON:
        raise _invalid("reason too long", [FieldViolation("reason", f"at most {MAX_REASON} characters")])
    return value


# --- erasure ------------------------------------------------------------------------------------


def erasure_violations(*, reason: str, typed: str, pseudonym: str) -> list[FieldViolation]:
    """What is wrong with an erasure form: a reason is required, and the confirmation must be the
    person's pseudonym as the service resolves it now (so it confirms this person, not any)."""
    violations = []
    if not reason.strip():
        violations.append(FieldViolation("reason", "say why the person is erased (e.g. the ticket)"))
    elif len(reason) > MAX_REASON:
        violations.append(FieldViolation("reason", f"at most {MAX_REASON} characters"))
    if not typed.strip():
        violations.append(FieldViolation("confirmation", "type the pseudonym shown above to confirm"))
    elif typed.strip() != pseudonym:
        violations.append(
            FieldViolation("confirmation", "this is not the person's pseudonym; nothing was erased")
        )
    return violations


# --- consent ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConsentChange:
    purpose: str
    action: str  # "grant" or "withdraw"
    reason: str
    request_id: str


def consent_change(form: Mapping[str, list[str]]) -> ConsentChange:
    """The consent change a form asks for; a purpose or action the form never offers is refused."""
    purpose = (form.get("purpose") or [""])[0].strip()
    action = (form.get("action") or [""])[0].strip()
    violations = []
    if purpose not in PURPOSES:
        violations.append(FieldViolation("purpose", f"one of {', '.join(PURPOSES)}"))
    if action not in CONSENT_ACTIONS:
        violations.append(FieldViolation("action", f"one of {', '.join(CONSENT_ACTIONS)}"))
    if violations:
        raise _invalid("not a consent change", violations)
    return ConsentChange(
        purpose=purpose,
        action=action,
        reason=reason_of(form, required=False, what="consent changes"),
        request_id=request_id_of(form),
    )


def consent_action_word(record: gdpr_pb2.ConsentRecord) -> str:
    return "granted" if record.action == gdpr_pb2.ConsentRecord.ACTION_GRANT else "withdrawn"


@dataclass(frozen=True, slots=True)
class ConsentState:
    purpose: str
    description: str
    lawful_basis: str
    granted: bool
    by_default: bool  # no record for the purpose: its default holds
    latest: gdpr_pb2.ConsentRecord | None


def _as_datetime(stamp: Timestamp) -> datetime:
    return stamp.ToDatetime(tzinfo=UTC)


def consent_states(records: Iterable[gdpr_pb2.ConsentRecord]) -> list[ConsentState]:
    """Each purpose's state from the person's consent history (any order), decided by the gdpr
    service's rule: the latest record wins, and with none the purpose's default holds."""
    history = list(records)
    known = [record for record in history if record.purpose in PURPOSES]
    events = [
        ConsentEvent(
            pseudonym=record.pseudonym,
            purpose=record.purpose,
            action=ConsentAction.GRANT
            if record.action == gdpr_pb2.ConsentRecord.ACTION_GRANT
            else ConsentAction.WITHDRAW,
            at=_as_datetime(record.time),
            actor=record.actor,
            reason=record.reason,
        )
        for record in known
    ]
    # The service lists newest first: reversed, then sorted stably by time, equal times keep the
    # later-recorded record last, and the last one wins.
    pairs = sorted(reversed(list(zip(events, known, strict=True))), key=lambda pair: pair[0].at)
    granted = current_states(event for event, _ in pairs)
    latest: dict[str, gdpr_pb2.ConsentRecord] = {}
    for event, record in pairs:
        latest[event.purpose] = record
    return [
        ConsentState(
            purpose=name,
            description=purpose.description,
            lawful_basis=purpose.lawful_basis.value.replace("_", " "),
            granted=granted[name],
            by_default=name not in latest,
            latest=latest.get(name),
        )
        for name, purpose in PURPOSES.items()
    ]


# --- events -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EventCount:
    total: int
    capped: bool
    by_type: list[tuple[str, int]]

    @property
    def text(self) -> str:
        """``12``, or ``1000+`` when counting stopped at the cap."""
        return f"{self.total:,}+" if self.capped else f"{self.total:,}"


def count_events(events: Iterable[ingest_pb2.Event], *, capped: bool) -> EventCount:
    """How many events, and how many of each type (most first)."""
    types = Counter(event.type for event in events)
    return EventCount(
        total=sum(types.values()),
        capped=capped,
        by_type=sorted(types.items(), key=lambda item: (-item[1], item[0])),
    )


# --- retention ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RuleChange:
    event_type: str  # empty for the default rule
    retention_days: int
    reason: str


def rule_change(form: Mapping[str, list[str]]) -> RuleChange:
    """The retention rule a form sets. The event type's spelling is the service's to check."""
    event_type = (form.get("event_type") or [""])[0].strip()
    days_text = (form.get("retention_days") or [""])[0].strip()
    violations = []
    if len(event_type) > 128:
        violations.append(FieldViolation("event_type", "at most 128 characters"))
    days = -1
    if not days_text.isdigit():
        violations.append(FieldViolation("retention_days", "a whole number of days, 0 or more"))
    else:
        days = int(days_text)
        if days > MAX_RETENTION_DAYS:
            violations.append(FieldViolation("retention_days", f"at most {MAX_RETENTION_DAYS} (100 years)"))
    if violations:
        raise _invalid("not a retention rule", violations)
    return RuleChange(
        event_type=event_type,
        retention_days=days,
        reason=reason_of(form, required=False, what="the rule changes"),
    )


# --- the audit trail's hash chain ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChainRow:
    record: gdpr_pb2.AuditRecord
    hash_matches: bool  # entry_hash is the SHA-256 of the record's canonical encoding
    links: bool | None  # prev_hash is the older record's entry_hash; None: that record is not here


@dataclass(frozen=True, slots=True)
class ChainCheck:
    rows: list[ChainRow]  # newest first, as listed
    intact: bool
    first_break: int | None  # sequence of the first (oldest) record that breaks the chain
    from_genesis: bool  # the records reach back to the first one, which must link to the genesis hash
    head_hash: str  # hex entry_hash of the newest record
    head_sequence: int | None


def _entry(record: gdpr_pb2.AuditRecord) -> AuditEntry:
    return AuditEntry(
        actor=record.actor,
        action=record.action,
        target=record.target,
        at=_as_datetime(record.time),
        reason=record.reason,
        request_id=record.request_id,
        prev_hash=bytes(record.prev_hash),
        entry_hash=bytes(record.entry_hash),
    )


def check_chain(records: Sequence[gdpr_pb2.AuditRecord], *, from_genesis: bool) -> ChainCheck:
    """Check consecutive audit records (as ListAuditRecords gives them, newest first).

    Each record's hash must match its content and link to the record before it. The oldest record
    here links to one not fetched, unless ``from_genesis`` (the list reached the first record), when
    it must link to the genesis hash. Sequence numbers may have gaps: the hashes prove the order.
    """
    ordered = sorted(records, key=lambda record: record.sequence)
    entries = [_entry(record) for record in ordered]
    anchor = GENESIS_HASH if from_genesis or not entries else entries[0].prev_hash
    bad = verify_chain(entries, anchor=anchor)
    rows: list[ChainRow] = []
    for index, (record, entry) in enumerate(zip(ordered, entries, strict=True)):
        if index > 0:
            links: bool | None = entry.prev_hash == entries[index - 1].entry_hash
        else:
            links = entry.prev_hash == GENESIS_HASH if from_genesis else None
        rows.append(
            ChainRow(record=record, hash_matches=compute_entry_hash(entry) == entry.entry_hash, links=links)
        )
    rows.reverse()
    return ChainCheck(
        rows=rows,
        intact=bad is None,
        first_break=None if bad is None else ordered[bad].sequence,
        from_genesis=from_genesis,
        head_hash=entries[-1].entry_hash.hex() if entries else GENESIS_HASH.hex(),
        head_sequence=ordered[-1].sequence if ordered else None,
    )
