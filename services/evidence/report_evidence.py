"""A weekly report's evidence file, ``FILE.evidence.json``: analytics' GetReportEvidence answer as
protobuf JSON (lowerCamelCase names, bytes as base64). ``awareness report weekly|evidence`` writes
it, the portal hands it out, and ``awareness verify --report FILE`` reads it, so all three share
this one shape (docs/reports.md)."""

from __future__ import annotations

from typing import Final

from awareness.analytics.v1 import analytics_pb2
from google.protobuf import json_format

EVIDENCE_SUFFIX: Final = ".evidence.json"
EVIDENCE_MEDIA_TYPE: Final = "application/json"


def evidence_file_name(report_file_name: str) -> str:
    """The evidence's file name beside the report's: ``awareness-report-2026-W48.pdf.evidence.json``."""
    return f"{report_file_name}{EVIDENCE_SUFFIX}"


def evidence_json(evidence: analytics_pb2.ReportEvidence) -> str:
    """The evidence file's text."""
    return json_format.MessageToJson(evidence) + "\n"
