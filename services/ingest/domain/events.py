"""The registry of event types, the submitted-event shape, its validation and event ids (UUIDv7)."""

from __future__ import annotations

import enum
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import MappingProxyType

from services.ingest.domain.errors import FieldViolation
from services.ingest.domain.report_records import REPORT_EVENT_TYPE, report_violations

__all__ = [
    "DEFAULT_CLOCK_SKEW",
    "EARLIEST_OCCURRED_AT",
    "EVENT_TYPES",
    "EVENT_TYPES_BY_NAME",
    "MAX_DETAILS_BYTES",
    "MAX_DETAILS_ENTRIES",
    "MAX_PSEUDONYM_CHARS",
    "MAX_SOURCE_CHARS",
    "MAX_SUBJECT_CHARS",
    "MAX_SUMMARY_BYTES",
    "EventInput",
    "EventType",
    "FieldViolation",
    "Severity",
    "UuidV7Generator",
    "canonical_event_id",
    "new_event_id",
    "parse_severity",
    "plainly_valid",
    "validate_event",
]


@dataclass(frozen=True, slots=True)
class EventType:
    name: str
    description: str
    # System types are written by the services themselves (erasure records), never by clients.
    system: bool = False
    # The services that may write a system type (empty: any service). Checked against the caller's
    # proven identity, so that no other service can claim, say, that a report was issued.
    writers: frozenset[str] = frozenset()
    # Whether an event of the type is about one subject. Only a system type may be about none (an
    # access record of an action that concerned nobody, or several, names them in its details).
    needs_subject: bool = True


EVENT_TYPES: tuple[EventType, ...] = (
    EventType("phishing.email_sent", "A simulated phishing e-mail was delivered to the subject."),
    EventType("phishing.email_opened", "The subject opened a simulated phishing e-mail."),
    EventType("phishing.clicked", "The subject clicked a link in a (simulated) phishing e-mail."),
    EventType("phishing.submitted_data", "The subject entered data on a (simulated) phishing page."),
    EventType("phishing.reported", "The subject reported a phishing e-mail."),
    EventType("training.assigned", "A security-awareness training was assigned to the subject."),
    EventType("training.completed", "The subject completed an assigned training."),
    EventType("training.overdue", "An assigned training passed its due date without completion."),
    EventType("policy.acknowledged", "The subject acknowledged a security policy."),
    EventType("mfa.disabled", "Multi-factor authentication was switched off for the subject's account."),
    EventType("password.reset", "The subject's password was reset."),
    EventType("device.usb_inserted", "A USB storage device was inserted into the subject's device."),
    EventType("data.external_upload", "The subject uploaded data to an external destination."),
    EventType("login.unusual_location", "The subject signed in from an unusual location."),
    EventType("login.failed", "A sign-in attempt for the subject failed."),
    EventType(
        "gdpr.erasure",
        "A data subject was erased (keys destroyed); holds no personal data.",
        system=True,
        writers=frozenset({"gdpr"}),
    ),
    EventType(
        "audit.action",
        "An access record: who read personal data or changed state, what, on which resource and with "
        "what outcome; subjects appear only as pseudonyms. Written by the services, listed by "
        "ListAccessRecords.",
        system=True,
        needs_subject=False,
    ),
    EventType(
        REPORT_EVENT_TYPE,
        "A weekly report was issued: its SHA-256 and the SHA-256 of the RFC 3161 token over it "
        "(services/ingest/domain/report_records.py); names no subject, holds no personal data.",
        system=True,
        writers=frozenset({"analytics"}),
        needs_subject=False,
    ),
)

EVENT_TYPES_BY_NAME: Mapping[str, EventType] = MappingProxyType({t.name: t for t in EVENT_TYPES})


class Severity(enum.IntEnum):
    """Numbers match the proto enum (0 is SEVERITY_UNSPECIFIED, which is not a valid value)."""

    INFO = 1
    LOW = 2
    MEDIUM = 3
    HIGH = 4
    CRITICAL = 5

    @property
    def label(self) -> str:
        """Lower-case name used in stored records and fingerprints, e.g. "high"."""
        return self.name.lower()


def parse_severity(value: str | int) -> Severity | None:
    """Severity from "high", "HIGH", "SEVERITY_HIGH" or 4; None if unknown or unspecified."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        try:
            return Severity(value)
        except ValueError:
            return None
    name = value.strip().upper().removeprefix("SEVERITY_")
    return Severity.__members__.get(name)


@dataclass(slots=True)
class EventInput:
    """An event as a client submits it, before validation."""

    type: str
    source: str
    subject: str
    occurred_at: datetime | None
    severity: str | int
    summary: str = ""
    details: dict[str, str] = field(default_factory=dict)
    event_id: str | None = None


NUL = "\x00"
MAX_SUBJECT_CHARS = 256
MAX_SOURCE_CHARS = 256  # the width of EventRecord.source
# The width of EventRecord.subject_pseudonym, which system events name directly.
MAX_PSEUDONYM_CHARS = 128
MAX_SUMMARY_BYTES = 4 * 1024
MAX_DETAILS_ENTRIES = 64
MAX_DETAILS_BYTES = 16 * 1024
DEFAULT_CLOCK_SKEW = timedelta(minutes=5)
EARLIEST_OCCURRED_AT = datetime(2000, 1, 1, tzinfo=UTC)


CLIENT_EVENT_TYPES = frozenset(t.name for t in EVENT_TYPES if not t.system)
EARLIEST_OCCURRED_AT_US = 946_684_800_000_000  # EARLIEST_OCCURRED_AT in microseconds since the epoch


def plainly_valid(
    *,
    event_id: str,
    type: str,
    source: str,
    subject: str,
    occurred_at_us: int,
    latest_us: int,
    severity: int,
    summary: str,
    details: Mapping[str, str],
) -> bool:
    """The append path's cheap test for the common case: True only if validate_event would find
    nothing wrong with this client event (an empty event_id counts as valid). False means "run
    validate_event for the violations", not "invalid". `latest_us` is now plus the clock skew."""
    return (
        type in CLIENT_EVENT_TYPES
        # str.strip() removes exactly the characters str.isspace() accepts.
        and 0 < len(source) <= MAX_SOURCE_CHARS
        and not source.isspace()
        and 0 < len(subject) <= MAX_SUBJECT_CHARS
        and not subject.isspace()
        and EARLIEST_OCCURRED_AT_US <= occurred_at_us <= latest_us
        and 1 <= severity <= 5
        and (len(summary) * 4 <= MAX_SUMMARY_BYTES or len(summary.encode("utf-8")) <= MAX_SUMMARY_BYTES)
        and len(details) <= MAX_DETAILS_ENTRIES
        and "" not in details
        and sum(len(k.encode("utf-8")) + len(v.encode("utf-8")) for k, v in details.items())
        <= MAX_DETAILS_BYTES
        and (not event_id or (canonical_event_id(event_id) == event_id and event_id != _NIL_UUID))
        and NUL not in source
        and NUL not in subject
        and NUL not in summary
        and not any(NUL in key or NUL in value for key, value in details.items())
    )


def may_write(event_type: EventType, system_writer: str | None) -> bool:
    """Whether ``system_writer`` (a service's name, or None for a client) may append the type."""
    if not event_type.system:
        return True
    return system_writer is not None and (not event_type.writers or system_writer in event_type.writers)


def validate_event(
    event: EventInput,
    *,
    now: datetime,
    clock_skew: timedelta = DEFAULT_CLOCK_SKEW,
    field_prefix: str = "event",
    system_writer: str | None = None,
) -> list[FieldViolation]:
    """Every rule the event breaks, all at once (empty list: valid).

    ``system_writer`` is the service appending (None: a client), which may write the system types
    that name it.

    Field paths are "<field_prefix>.<field>", e.g. "event.details" or, with
    field_prefix="events[3]", "events[3].subject".
    """
    violations: list[FieldViolation] = []

    def violation(name: str, description: str) -> None:
        violations.append(FieldViolation(field=name, description=description))

    if event.event_id is not None and event.event_id != "":
        _check_event_id(event.event_id, violation)

    event_type = EVENT_TYPES_BY_NAME.get(event.type)
    if event_type is None:
        violation("type", f"unknown event type {event.type!r}; see the registered event types")
    elif event_type.system and system_writer is None:
        violation("type", f"event type {event.type!r} is reserved for events the system writes itself")
    elif not may_write(event_type, system_writer):
        writers = ", ".join(sorted(event_type.writers))
        violation("type", f"event type {event.type!r} is written only by the {writers} service")

    if not event.source.strip():
        violation("source", "must not be empty")
    elif len(event.source) > MAX_SOURCE_CHARS:
        violation("source", f"must be at most {MAX_SOURCE_CHARS} characters")

    if not event.subject.strip():
        # Whitespace is never a subject; nothing at all is one only for types about nobody.
        if event.subject or event_type is None or event_type.needs_subject:
            violation("subject", "must not be empty")
    elif len(event.subject) > MAX_SUBJECT_CHARS:
        violation("subject", f"must be at most {MAX_SUBJECT_CHARS} characters")

    _check_occurred_at(event.occurred_at, now=now, clock_skew=clock_skew, violation=violation)

    if parse_severity(event.severity) is None:
        violation("severity", f"unknown severity {event.severity!r}; use one of {_severity_names()}")

    if len(event.summary.encode("utf-8")) > MAX_SUMMARY_BYTES:
        violation("summary", f"must be at most {MAX_SUMMARY_BYTES} bytes of UTF-8")

    if len(event.details) > MAX_DETAILS_ENTRIES:
        violation("details", f"must have at most {MAX_DETAILS_ENTRIES} entries")
    details_bytes = sum(len(k.encode("utf-8")) + len(v.encode("utf-8")) for k, v in event.details.items())
    if details_bytes > MAX_DETAILS_BYTES:
        violation("details", f"keys and values must total at most {MAX_DETAILS_BYTES} bytes of UTF-8")
    if any(not key for key in event.details):
        violation("details", "keys must not be empty")
    # PostgreSQL text cannot hold NUL: refused here, one event, never in a shared group commit.
    for name, value in (("source", event.source), ("subject", event.subject), ("summary", event.summary)):
        if NUL in value:
            violation(name, "must not contain a NUL character")
    if any(NUL in key or NUL in value for key, value in event.details.items()):
        violation("details", "keys and values must not contain a NUL character")
    if event_type is not None and event_type.name == REPORT_EVENT_TYPE and system_writer is not None:
        # The evidence of an issued report: exactly its digests, checked as access records are.
        violations.extend(report_violations(event.details, field_prefix=""))

    return [v.with_prefix(field_prefix) for v in violations]


def _check_event_id(value: str, violation: Callable[[str, str], None]) -> None:
    canonical = canonical_event_id(value)
    if canonical is None:
        violation("event_id", "must be a UUID in the 8-4-4-4-12 hexadecimal form (a UUIDv7 is recommended)")
    elif canonical == str(uuid.UUID(int=0)):
        violation("event_id", "must not be the nil UUID")


def _check_occurred_at(
    value: datetime | None,
    *,
    now: datetime,
    clock_skew: timedelta,
    violation: Callable[[str, str], None],
) -> None:
    if value is None:
        violation("occurred_at", "is required")
    elif value.tzinfo is None or value.utcoffset() is None:
        violation("occurred_at", "must carry a time zone")
    elif value > now + clock_skew:
        violation("occurred_at", f"is in the future beyond the allowed clock skew of {clock_skew}")
    elif value < EARLIEST_OCCURRED_AT:
        violation("occurred_at", "must not be before 2000-01-01T00:00:00Z")


def _severity_names() -> str:
    return ", ".join(s.label for s in Severity)


_NIL_UUID = str(uuid.UUID(int=0))
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def canonical_event_id(value: str) -> str | None:
    """The lower-case 8-4-4-4-12 form of a UUID string, or None if it is not one.

    Only the hyphenated form is accepted so that one event has one id string (no braces, URNs
    or bare hex that would make the same UUID two different idempotency keys).
    """
    if len(value) != 36:
        return None
    lowered = value.lower()
    # The hyphenated hex form is exactly what uuid.UUID would accept and print back: no parse needed.
    return lowered if _CANONICAL_UUID.fullmatch(lowered) else None


class UuidV7Generator:
    """RFC 9562 UUIDv7 with a 42-bit counter (section 6.2, method 1) so ids are strictly increasing.

    Layout: 48-bit Unix time in ms | version 7 | 12 counter bits | variant 0b10 | 30 counter bits |
    32 random bits. The counter is re-seeded at random (top bit clear) each new millisecond; when
    the clock stalls or steps back the previous millisecond is reused and the counter incremented.
    """

    _COUNTER_BITS = 42

    def __init__(
        self,
        *,
        clock_ms: Callable[[], int] | None = None,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self._clock_ms = clock_ms or (lambda: time.time_ns() // 1_000_000)
        self._random_bytes = random_bytes
        self._lock = threading.Lock()
        self._last_ms = -1
        self._counter = 0

    def new(self) -> uuid.UUID:
        with self._lock:
            now_ms = self._clock_ms()
            if now_ms > self._last_ms:
                self._last_ms = now_ms
                self._counter = self._random_int(self._COUNTER_BITS - 1)
            else:
                self._counter += 1
                if self._counter >> self._COUNTER_BITS:
                    # Counter exhausted within one millisecond: borrow the next one.
                    self._last_ms += 1
                    self._counter = self._random_int(self._COUNTER_BITS - 1)
            timestamp, counter = self._last_ms, self._counter
        value = (
            (timestamp & (1 << 48) - 1) << 80
            | 0x7 << 76
            | (counter >> 30) << 64
            | 0b10 << 62
            | (counter & (1 << 30) - 1) << 32
            | self._random_int(32)
        )
        return uuid.UUID(int=value)

    def _random_int(self, bits: int) -> int:
        return int.from_bytes(self._random_bytes((bits + 7) // 8), "big") & ((1 << bits) - 1)


_default_generator: UuidV7Generator | None = None
_default_generator_lock = threading.Lock()


def new_event_id() -> str:
    """A fresh UUIDv7 string; ids from one process sort in creation order."""
    global _default_generator
    if _default_generator is None:
        with _default_generator_lock:
            if _default_generator is None:
                _default_generator = UuidV7Generator()
    return str(_default_generator.new())
