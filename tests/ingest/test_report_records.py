"""``report.issued`` system events: registered as a system type about nobody, and refused unless their
details are exactly a report's evidence (services/ingest/domain/report_records.py)."""

from __future__ import annotations

from datetime import UTC, datetime

from services.ingest.domain.events import EVENT_TYPES_BY_NAME, EventInput, validate_event
from services.ingest.domain.report_records import report_violations

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
GOOD = {
    "report": "reports/0b9c4d6e-1f2a-4b3c-8d4e-5f6a7b8c9d0e",
    "period": "2026-W48",
    "format": "pdf",
    "sha256": "0" * 64,
    "timestamp_token_sha256": "f" * 64,
    "tsa_time": "2026-12-06T11:59:58.000000Z",
}


def report_event(**details: str) -> EventInput:
    return EventInput(
        type="report.issued",
        source="analytics",
        subject="",
        occurred_at=NOW,
        severity="info",
        summary="Weekly report 2026-W48 issued (pdf)",
        details={**GOOD, **details},
    )


def test_the_type_is_a_system_type_about_nobody() -> None:
    registered = EVENT_TYPES_BY_NAME["report.issued"]
    assert registered.system and not registered.needs_subject


def test_a_report_event_with_its_evidence_is_valid_for_services_only() -> None:
    assert validate_event(report_event(), now=NOW, system_writer="analytics") == []
    refused = validate_event(report_event(), now=NOW)
    assert [v.field for v in refused] == ["event.type"]
    by_another_service = validate_event(report_event(), now=NOW, system_writer="gdpr")
    assert [v.description for v in by_another_service] == [
        "event type 'report.issued' is written only by the analytics service"
    ]


def test_each_malformed_or_missing_detail_is_a_violation() -> None:
    assert report_violations({}, field_prefix="event") != []
    assert len(report_violations({}, field_prefix="event")) == 6
    bad = {
        "report": "reports/../etc",
        "period": "2026-W60",
        "format": "docx",
        "sha256": "ABC",
        "timestamp_token_sha256": "0" * 63,
        "tsa_time": "yesterday",
        "subject": "ann@example.com",
    }
    violations = report_violations(bad, field_prefix="events[2]")
    assert {v.field for v in violations} == {"events[2].details"}
    described = " ".join(v.description for v in violations)
    for word in ("report", "period", "format", "sha256", "timestamp_token_sha256", "tsa_time", "subject"):
        assert word in described
    validated = validate_event(report_event(sha256="xyz"), now=NOW, system_writer="analytics")
    assert [v.field for v in validated] == ["event.details"]
