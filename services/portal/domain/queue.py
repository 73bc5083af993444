"""The triage queue's filters, as a person types them into the form, checked and turned into a
ListEvents request. Pure: no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Final

from awareness.ingest.v1 import ingest_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from services.runtime.errors import FieldViolation

PAGE_SIZE: Final = 25
RISK_LEVELS: Final = {
    "low": ingest_pb2.RISK_LEVEL_LOW,
    "moderate": ingest_pb2.RISK_LEVEL_MODERATE,
    "high": ingest_pb2.RISK_LEVEL_HIGH,
    "critical": ingest_pb2.RISK_LEVEL_CRITICAL,
}
LEVELS: Final = tuple(RISK_LEVELS)
LABELS: Final = {
    "true_positive": ingest_pb2.LABEL_TRUE_POSITIVE,
    "false_positive": ingest_pb2.LABEL_FALSE_POSITIVE,
}
TRIAGE_STATES: Final = {
    "new": ingest_pb2.TRIAGE_STATE_NEW,
    "in_review": ingest_pb2.TRIAGE_STATE_IN_REVIEW,
    "closed": ingest_pb2.TRIAGE_STATE_CLOSED,
}
ORDERS: Final = {"newest": "receive_time desc", "riskiest": "risk_score desc"}
MAX_TEXT: Final = 200


@dataclass(frozen=True)
class QueueFilters:
    """What the form holds, echoed back into it; empty strings mean "any"."""

    type: str = ""
    source: str = ""
    since: str = ""
    until: str = ""
    risk: str = ""
    label: str = ""
    triage: str = ""
    order: str = ""
    page_token: str = ""
    violations: tuple[FieldViolation, ...] = field(default=())

    @property
    def active(self) -> bool:
        return any(
            (self.type, self.source, self.since, self.until, self.risk, self.label, self.triage, self.order)
        )

    def query(self, **changes: str) -> dict[str, str]:
        """The filters as query parameters (for links to the next page or a changed filter)."""
        values = {
            "type": self.type,
            "source": self.source,
            "since": self.since,
            "until": self.until,
            "risk": self.risk,
            "label": self.label,
            "triage": self.triage,
            "order": self.order,
            "page_token": self.page_token,
            **changes,
        }
        return {key: value for key, value in values.items() if value}


def parse_filters(params: Mapping[str, str]) -> QueueFilters:
    """The filters of a query string; what does not parse is dropped and named in ``violations``."""
    violations: list[FieldViolation] = []

    def text(name: str) -> str:
        value = params.get(name, "").strip()
        if len(value) > MAX_TEXT:
            violations.append(FieldViolation(name, f"at most {MAX_TEXT} characters"))
            return ""
        return value

    def choice(name: str, allowed: Mapping[str, object] | tuple[str, ...]) -> str:
        value = params.get(name, "").strip()
        if value and value not in allowed:
            violations.append(FieldViolation(name, f"one of {', '.join(allowed)}"))
            return ""
        return value

    def day(name: str) -> str:
        value = params.get(name, "").strip()
        if not value:
            return ""
        try:
            date.fromisoformat(value)
        except ValueError:
            violations.append(FieldViolation(name, "a date as YYYY-MM-DD"))
            return ""
        return value

    filters = QueueFilters(
        type=text("type"),
        source=text("source"),
        since=day("since"),
        until=day("until"),
        risk=choice("risk", LEVELS),
        label=choice("label", tuple(LABELS)),
        triage=choice("triage", tuple(TRIAGE_STATES)),
        order=choice("order", tuple(ORDERS)),
        page_token=params.get("page_token", "").strip()[:2048],
    )
    if filters.since and filters.until and filters.until < filters.since:
        violations.append(FieldViolation("until", "on or after the first day"))
        filters = replace(filters, until="")
    return replace(filters, violations=tuple(violations))


def _timestamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def list_request(filters: QueueFilters, *, page_size: int = PAGE_SIZE) -> ingest_pb2.ListEventsRequest:
    """The ListEvents call for these filters; ``until`` includes the whole day it names."""
    request = ingest_pb2.ListEventsRequest(
        page_size=page_size,
        page_token=filters.page_token,
        type=filters.type,
        source=filters.source,
        label=LABELS.get(filters.label, ingest_pb2.LABEL_UNSPECIFIED),
        triage_state=TRIAGE_STATES.get(filters.triage, ingest_pb2.TRIAGE_STATE_UNSPECIFIED),
        order_by=ORDERS.get(filters.order, ""),
    )
    if filters.since:
        request.start_time.CopyFrom(
            _timestamp(datetime.combine(date.fromisoformat(filters.since), time(), UTC))
        )
    if filters.until:
        end = datetime.combine(date.fromisoformat(filters.until), time(), UTC) + timedelta(days=1)
        request.end_time.CopyFrom(_timestamp(end))
    if filters.risk:
        request.min_risk_level = RISK_LEVELS[filters.risk]
    return request
