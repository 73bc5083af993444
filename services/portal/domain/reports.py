"""What the Reports page (services/portal/pages/reports.py) makes of the analytics service's weekly
reports: the issue form and the CreateReport call it asks for, the week it offers by default, and
sizes, digests and file names as the list shows them.

Nothing here asks a service: the inputs are a form and the analytics contract's messages.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Final

from awareness.analytics.v1 import analytics_pb2

from services.runtime.errors import FieldViolation, InvalidArgumentError

FORMATS: Final = {
    "html": analytics_pb2.REPORT_FORMAT_HTML,
    "pdf": analytics_pb2.REPORT_FORMAT_PDF,
    "csv": analytics_pb2.REPORT_FORMAT_CSV,
}
FORMAT_LABELS: Final = {
    "html": "HTML (one self-contained page)",
    "pdf": "PDF",
    "csv": "CSV (one section per block of rows)",
}
# As `awareness report weekly` does.
DEFAULT_FORMAT: Final = "pdf"
WEEK_PATTERN: Final = "[0-9]{4}-W[0-9]{2}"
DIGEST_SHOWN: Final = 12
# CreateReport's request fields -> the form's inputs; a violation of any other (the hidden
# request_id) shows above the form.
FORM_FIELDS: Final = {"period": "week", "format": "format"}
REPORT_PREFIX: Final = "reports/"
_UNSAFE_IN_FILE_NAME: Final = re.compile(r"[^A-Za-z0-9._-]")


def last_complete_week(today: date) -> str:
    """The ISO week before the one ``today`` falls in (``2026-W48``): what CreateReport reports when
    no period is given, and what the form offers."""
    year, week, _ = (today - timedelta(days=today.isoweekday())).isocalendar()
    return f"{year:04d}-W{week:02d}"


def format_name(value: int) -> str:
    """``html``, ``pdf`` or ``csv``; empty for a format the portal does not know."""
    for name, known in FORMATS.items():
        if known == value:
            return name
    return ""


def report_id_of(name: str) -> str:
    return name.removeprefix(REPORT_PREFIX)


def report_name(report_id: str) -> str:
    return f"{REPORT_PREFIX}{report_id}"


def short_digest(sha256: str) -> str:
    """The first hex digits of a digest, enough to tell reports apart at a glance."""
    return sha256[:DIGEST_SHOWN] + "…" if len(sha256) > DIGEST_SHOWN else sha256


def size(size_bytes: int) -> str:
    """``812 B``, ``48.2 kB``, ``1.3 MB`` (powers of 1,000)."""
    if size_bytes < 1000:
        return f"{size_bytes} B"
    if size_bytes < 1_000_000:
        return f"{size_bytes / 1000:.1f} kB"
    return f"{size_bytes / 1_000_000:.1f} MB"


def safe_file_name(name: str, *, fallback: str) -> str:
    """A file name fit for a Content-Disposition header: letters, digits, ``.``, ``_`` and ``-``
    only (the service's names are such already; anything else becomes ``_``)."""
    cleaned = _UNSAFE_IN_FILE_NAME.sub("_", name).lstrip(".")
    return cleaned or fallback


# --- the issue form -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IssueForm:
    """What the issue form shows: as first rendered, or as sent back with its errors."""

    week: str
    format: str
    # A fresh id per rendering: a form sent twice (a double click, a reload) issues one report.
    request_id: str

    @classmethod
    def fresh(cls, today: date) -> IssueForm:
        return cls(last_complete_week(today), DEFAULT_FORMAT, str(uuid.uuid4()))

    @classmethod
    def sent(cls, form: Mapping[str, list[str]]) -> IssueForm:
        def value(name: str, limit: int) -> str:
            return (form.get(name) or [""])[0].strip()[:limit]

        return cls(value("week", 64), value("format", 16), value("request_id", 64))


def create_request(sent: IssueForm) -> analytics_pb2.CreateReportRequest:
    """The CreateReport call the form asks for. The week is the service's to judge (its field
    violation shows under the input; an empty one means the last complete week, as for the API);
    a format or id the form never offers is refused here."""
    violations = []
    if sent.format not in FORMATS:
        violations.append(FieldViolation("format", f"choose one of {', '.join(FORMATS)}"))
    try:
        request_id = str(uuid.UUID(sent.request_id))
    except ValueError:
        violations.append(FieldViolation("request_id", "the form's id is missing; reload the page"))
        request_id = ""
    if violations:
        raise InvalidArgumentError("the report form was not valid", violations=violations)
    return analytics_pb2.CreateReportRequest(
        period=sent.week, format=FORMATS[sent.format], request_id=request_id
    )


def errors_by_field(violations: Iterable[FieldViolation]) -> dict[str, list[str]]:
    """The violations under the form's inputs they concern; any other under ``""`` (shown on top)."""
    found: dict[str, list[str]] = {}
    for violation in violations:
        found.setdefault(FORM_FIELDS.get(violation.field, ""), []).append(violation.description)
    return found
