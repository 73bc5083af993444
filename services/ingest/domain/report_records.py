"""Issued reports as the log holds them: ``report.issued`` system events.

The analytics service appends one when it issues a weekly report. The event names no subject and
carries only what proves the file: the report's resource name, its ISO week and format, the file's
SHA-256 and the SHA-256 of the RFC 3161 token the TSA returned over that digest, with the token's
time. The leaf of a version-2 record covers these details, so an inclusion proof of the event proves
that exactly this digest was issued, and the token proves when.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Final

from services.ingest.domain.errors import FieldViolation

__all__ = ["REPORT_DETAILS", "REPORT_EVENT_TYPE", "REPORT_FORMATS", "report_violations"]

REPORT_EVENT_TYPE: Final = "report.issued"
REPORT_FORMATS: Final = frozenset({"html", "pdf", "csv"})
REPORT_DETAILS: Final = frozenset(
    {"report", "period", "format", "sha256", "timestamp_token_sha256", "tsa_time"}
)
_REPORT_NAME: Final = re.compile(r"reports/[A-Za-z0-9_-]{1,63}")
_PERIOD: Final = re.compile(r"[0-9]{4}-W(0[1-9]|[1-4][0-9]|5[0-3])")
_SHA256_HEX: Final = re.compile(r"[0-9a-f]{64}")


def _rfc3339(value: str) -> bool:
    if "T" not in value:
        return False
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return parsed.utcoffset() is not None


def report_violations(details: Mapping[str, str], *, field_prefix: str = "event") -> list[FieldViolation]:
    """What keeps a ``report.issued`` event out of the log: a missing or malformed detail, or one
    that is not a report's (so nothing personal can ride along)."""
    field = f"{field_prefix}.details" if field_prefix else "details"
    violations: list[FieldViolation] = []

    def check(key: str, valid: bool, description: str) -> None:
        if not details.get(key):
            violations.append(FieldViolation(field, f"a report.issued event must name its {key}"))
        elif not valid:
            violations.append(FieldViolation(field, f"{key} {description}"))

    check("report", bool(_REPORT_NAME.fullmatch(details.get("report", ""))), "must be reports/{id}")
    check("period", bool(_PERIOD.fullmatch(details.get("period", ""))), "must be an ISO week, e.g. 2026-W48")
    check("format", details.get("format", "") in REPORT_FORMATS, f"must be one of {sorted(REPORT_FORMATS)}")
    for key in ("sha256", "timestamp_token_sha256"):
        check(
            key, bool(_SHA256_HEX.fullmatch(details.get(key, ""))), "must be 64 lower-case hexadecimal digits"
        )
    check("tsa_time", _rfc3339(details.get("tsa_time", "")), "must be an RFC 3339 time with an offset")
    unknown = sorted(set(details) - REPORT_DETAILS)
    if unknown:
        violations.append(FieldViolation(field, f"a report.issued event carries no other details: {unknown}"))
    return violations
