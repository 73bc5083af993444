from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest

from services.ingest.domain import events
from services.ingest.domain.events import EventInput, FieldViolation, Severity, validate_event
from tests.ingest.harness import INPUT_NOW as NOW
from tests.ingest.harness import event_input as good_event


def fields(violations: list[FieldViolation]) -> list[str]:
    return [v.field for v in violations]


def test_registry_holds_the_documented_types_with_descriptions():
    names = [t.name for t in events.EVENT_TYPES]
    assert len(names) == len(set(names)) == 18
    assert {"phishing.clicked", "mfa.disabled", "login.failed", "gdpr.erasure", "audit.action"} <= set(names)
    assert all(t.description for t in events.EVENT_TYPES)
    system = [t.name for t in events.EVENT_TYPES if t.system]
    assert system == ["gdpr.erasure", "audit.action", "report.issued"]


def test_valid_event_has_no_violations():
    assert validate_event(good_event(), now=NOW) == []
    assert (
        validate_event(good_event(event_id=None, severity=Severity.CRITICAL.value, summary=""), now=NOW) == []
    )


def test_every_violation_is_reported_at_once():
    bad = EventInput(
        event_id="not-a-uuid",
        type="phishing.teleported",
        source="  ",
        subject="",
        occurred_at=None,
        severity="apocalyptic",
        summary="é" * 2049,  # 4098 bytes of UTF-8, only 2049 characters
        details={f"k{i}": "v" for i in range(65)},
    )
    violations = validate_event(bad, now=NOW)
    assert fields(violations) == [
        "event.event_id",
        "event.type",
        "event.source",
        "event.subject",
        "event.occurred_at",
        "event.severity",
        "event.summary",
        "event.details",
    ]
    assert all(v.description for v in violations)


def test_field_prefix_names_the_batch_position():
    violations = validate_event(good_event(subject=""), now=NOW, field_prefix="events[3]")
    assert fields(violations) == ["events[3].subject"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"subject": "x" * 257}, "event.subject"),
        ({"source": "s" * 257}, "event.source"),
        ({"occurred_at": NOW + timedelta(minutes=6)}, "event.occurred_at"),
        ({"occurred_at": datetime(1999, 12, 31, 23, 59, tzinfo=UTC)}, "event.occurred_at"),
        ({"occurred_at": datetime(2025, 6, 1, 11, 0)}, "event.occurred_at"),  # naive
        ({"details": {"k": "v" * (16 * 1024)}}, "event.details"),
        ({"details": {"": "v"}}, "event.details"),
        ({"severity": 0}, "event.severity"),
        ({"severity": 6}, "event.severity"),
        ({"severity": "SEVERITY_UNSPECIFIED"}, "event.severity"),
        ({"event_id": "{" + str(uuid.uuid4()) + "}"}, "event.event_id"),
        ({"event_id": uuid.uuid4().hex}, "event.event_id"),
        ({"event_id": str(uuid.UUID(int=0))}, "event.event_id"),
        ({"type": "gdpr.erasure"}, "event.type"),
    ],
)
def test_single_rule_violations(change, field):
    assert fields(validate_event(good_event(**change), now=NOW)) == [field]


def test_limits_are_inclusive():
    at_limits = good_event(
        subject="x" * 256,
        summary="s" * 4096,
        details={f"{i:02d}": "v" * 254 for i in range(64)},  # 64 entries, 64 * 256 = 16 KiB
        occurred_at=NOW + timedelta(minutes=5),
    )
    assert validate_event(at_limits, now=NOW) == []
    assert validate_event(good_event(occurred_at=datetime(2000, 1, 1, tzinfo=UTC)), now=NOW) == []


def test_clock_skew_is_configurable_and_offsets_are_understood():
    ahead = good_event(occurred_at=NOW + timedelta(minutes=8))
    assert validate_event(ahead, now=NOW, clock_skew=timedelta(minutes=10)) == []
    assert fields(validate_event(ahead, now=NOW)) == ["event.occurred_at"]
    # 13:58 at UTC+2 is 11:58Z: in the past, not two hours ahead.
    plus_two = timezone(timedelta(hours=2))
    assert (
        validate_event(good_event(occurred_at=datetime(2025, 6, 1, 13, 58, tzinfo=plus_two)), now=NOW) == []
    )


def test_system_types_allowed_when_the_system_writes_them():
    assert validate_event(good_event(type="gdpr.erasure"), now=NOW, system_writer="gdpr") == []


def test_severity_parsing():
    assert events.parse_severity("high") is Severity.HIGH
    assert events.parse_severity("SEVERITY_LOW") is Severity.LOW
    assert events.parse_severity(5) is Severity.CRITICAL
    assert events.parse_severity(True) is None
    assert events.parse_severity("") is None


def test_canonical_event_id():
    value = uuid.uuid4()
    assert events.canonical_event_id(str(value).upper()) == str(value)
    assert events.canonical_event_id("urn:uuid:" + str(value)) is None


def test_new_event_id_is_uuid7_with_rfc9562_bits():
    before_ms = int(datetime.now(UTC).timestamp() * 1000)
    parsed = uuid.UUID(events.new_event_id())
    after_ms = int(datetime.now(UTC).timestamp() * 1000)
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122
    assert before_ms - 1 <= parsed.int >> 80 <= after_ms + 1


def test_new_event_ids_are_strictly_increasing():
    ids = [events.new_event_id() for _ in range(5000)]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)


def test_generator_stays_monotonic_when_the_clock_stalls_or_steps_back():
    readings = iter([1_000, 1_000, 999, 5, 1_001] + [1_001] * 10)
    generator = events.UuidV7Generator(clock_ms=lambda: next(readings))
    ids = [generator.new() for _ in range(15)]
    assert [i.int for i in ids] == sorted(i.int for i in ids)
    assert len({i.int for i in ids}) == 15
    assert all(i.version == 7 and i.variant == uuid.RFC_4122 for i in ids)
    assert [i.int >> 80 for i in ids[:4]] == [1_000] * 4


def test_generator_borrows_the_next_millisecond_when_the_counter_runs_out():
    generator = events.UuidV7Generator(clock_ms=lambda: 42)
    first = generator.new()
    generator._counter = (1 << 42) - 2  # as if some 2**41 ids had been made within this millisecond
    last_in_ms = generator.new()
    borrowed = generator.new()
    assert first.int < last_in_ms.int < borrowed.int
    assert [u.int >> 80 for u in (first, last_in_ms, borrowed)] == [42, 42, 43]
    assert borrowed.version == 7 and borrowed.variant == uuid.RFC_4122
