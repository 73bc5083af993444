"""The Reports page's domain (services/portal/domain/reports.py): the week the form offers, the
CreateReport call a form asks for, where a refused field's message shows, and sizes, digests and
file names as the list shows them; and the evidence file's shape (services/evidence/report_evidence.py),
which ``awareness verify --report`` reads; and what the evidence download makes of the service's
answers (services/portal/pages/reports.py), not yet covered by a checkpoint included."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import Awaitable, Callable
from datetime import date
from typing import TypeVar, cast

import grpc
import pytest
from awareness.analytics.v1 import analytics_pb2
from awareness.ingest.v1 import ingest_pb2

from services.evidence.report_evidence import evidence_file_name, evidence_json
from services.portal.domain import reports
from services.portal.pages import reports as pages
from services.portal.service import Person, Services
from services.runtime.errors import FieldViolation, InvalidArgumentError

T = TypeVar("T")
REPORT_ID = "5f0c0000-0000-4000-8000-000000000000"


@pytest.mark.parametrize(
    ("today", "week"),
    [
        (date(2026, 12, 9), "2026-W49"),  # a Wednesday: the week before
        (date(2026, 12, 7), "2026-W49"),  # a Monday: the week that just ended
        (date(2026, 12, 13), "2026-W49"),  # a Sunday: its own week is not complete yet
        (date(2027, 1, 6), "2026-W53"),  # 2026 has 53 ISO weeks
        (date(2026, 1, 1), "2025-W52"),  # the ISO year differs from the calendar year
    ],
)
def test_the_form_offers_the_last_complete_iso_week(today: date, week: str) -> None:
    assert reports.last_complete_week(today) == week


def test_a_fresh_form_has_the_default_format_and_a_new_id_each_time() -> None:
    first, second = reports.IssueForm.fresh(date(2026, 12, 9)), reports.IssueForm.fresh(date(2026, 12, 9))
    assert (first.week, first.format) == ("2026-W49", "pdf")
    assert uuid.UUID(first.request_id) != uuid.UUID(second.request_id)


def test_a_sent_form_asks_for_that_week_format_and_id() -> None:
    request_id = str(uuid.uuid4())
    sent = reports.IssueForm.sent({"week": [" 2026-W48 "], "format": ["csv"], "request_id": [request_id]})
    assert reports.create_request(sent) == analytics_pb2.CreateReportRequest(
        period="2026-W48", format=analytics_pb2.REPORT_FORMAT_CSV, request_id=request_id
    )


def test_the_week_is_left_to_the_service_to_judge() -> None:
    request_id = str(uuid.uuid4())
    sent = reports.IssueForm.sent({"week": ["2026-W60"], "format": ["html"], "request_id": [request_id]})
    assert reports.create_request(sent).period == "2026-W60"


def test_a_format_or_id_the_form_never_offers_is_refused() -> None:
    sent = reports.IssueForm.sent({"week": ["2026-W48"], "format": ["docx"], "request_id": ["not-a-uuid"]})
    with pytest.raises(InvalidArgumentError) as raised:
        reports.create_request(sent)
    assert {violation.field for violation in raised.value.violations} == {"format", "request_id"}


def test_a_refused_period_shows_under_the_week_input_and_the_rest_above_the_form() -> None:
    errors = reports.errors_by_field(
        [
            FieldViolation("period", "must be an ISO week such as 2026-W48: 2026 has no ISO week 60"),
            FieldViolation("format", "must be one of html, pdf, csv"),
            FieldViolation("request_id", "the form's id is missing; reload the page"),
        ]
    )
    assert errors == {
        "week": ["must be an ISO week such as 2026-W48: 2026 has no ISO week 60"],
        "format": ["must be one of html, pdf, csv"],
        "": ["the form's id is missing; reload the page"],
    }


def test_formats_sizes_digests_and_names_as_the_list_shows_them() -> None:
    assert reports.format_name(analytics_pb2.REPORT_FORMAT_PDF) == "pdf"
    assert reports.format_name(analytics_pb2.REPORT_FORMAT_UNSPECIFIED) == ""
    assert [reports.size(n) for n in (0, 999, 1000, 48_211, 1_250_000)] == [
        "0 B",
        "999 B",
        "1.0 kB",
        "48.2 kB",
        "1.2 MB",
    ]
    digest = "372df76b" + "0" * 56
    assert reports.short_digest(digest) == "372df76b0000…"
    assert reports.short_digest("abc") == "abc"
    assert reports.report_name("5f0c") == "reports/5f0c"
    assert reports.report_id_of("reports/5f0c") == "5f0c"


def test_a_file_name_is_made_safe_for_the_download_header() -> None:
    assert (
        reports.safe_file_name("awareness-report-2026-W48.pdf", fallback="x")
        == "awareness-report-2026-W48.pdf"
    )
    assert reports.safe_file_name('a"b\r\nc;d.csv', fallback="x") == "a_b__c_d.csv"
    assert reports.safe_file_name("../../etc", fallback="x") == "_.._etc"
    assert reports.safe_file_name("", fallback="report-1") == "report-1"


def test_the_evidence_file_is_get_report_evidence_as_the_verifier_reads_it() -> None:
    evidence = analytics_pb2.ReportEvidence(
        report="reports/5f0c",
        period="2026-W48",
        format="pdf",
        sha256="ab" * 32,
        timestamp_token=b"\x30\x82token",
        log_event_id="3ca167e5-0000-4000-8000-000000000000",
        inclusion_proof=ingest_pb2.GetInclusionProofResponse(leaf_index=7, tree_size=9),
    )
    document = json.loads(evidence_json(evidence))
    # The names `awareness verify --report` reads (services/ingest/report_verify.py).
    assert document["sha256"] == "ab" * 32 and document["logEventId"] == evidence.log_event_id
    assert base64.b64decode(document["timestampToken"]) == b"\x30\x82token"
    assert document["inclusionProof"]["treeSize"] == "9"
    assert evidence_json(evidence).endswith("}\n")
    assert (
        evidence_file_name("awareness-report-2026-W48.pdf") == "awareness-report-2026-W48.pdf.evidence.json"
    )


def _evidence() -> analytics_pb2.ReportEvidence:
    return analytics_pb2.ReportEvidence(
        report=f"reports/{REPORT_ID}", period="2026-W48", format="csv", sha256="cd" * 32
    )


class _Analytics:
    """As the analytics stub for the evidence download: the evidence (or why not), and the list."""

    def __init__(self, refusal: grpc.StatusCode | None, listed: list[analytics_pb2.Report]) -> None:
        self.refusal = refusal
        self.listed = listed
        self.filters: list[str] = []

    async def GetReportEvidence(
        self, request: analytics_pb2.GetReportEvidenceRequest
    ) -> analytics_pb2.ReportEvidence:
        assert request.name == f"reports/{REPORT_ID}"
        if self.refusal is not None:
            raise grpc.aio.AioRpcError(
                self.refusal, grpc.aio.Metadata(), grpc.aio.Metadata(), details="not checkpointed yet"
            )
        return _evidence()

    async def ListReports(
        self, request: analytics_pb2.ListReportsRequest
    ) -> analytics_pb2.ListReportsResponse:
        self.filters.append(request.filter)
        return analytics_pb2.ListReportsResponse(reports=self.listed)


class _Services:
    def __init__(self, analytics: _Analytics) -> None:
        self._analytics = analytics

    async def as_person(self, person: object, call: Callable[[], Awaitable[T]]) -> T:
        return await call()

    def analytics(self) -> _Analytics:
        return self._analytics


def _download(analytics: _Analytics) -> pages.EvidenceFile | None:
    services = cast(Services, _Services(analytics))
    return asyncio.run(pages.evidence_file(services, cast(Person, None), REPORT_ID))


def test_the_evidence_download_is_named_after_the_report_file() -> None:
    listed = [
        analytics_pb2.Report(name="reports/other", file_name="awareness-report-2026-W47.csv"),
        analytics_pb2.Report(name=f"reports/{REPORT_ID}", file_name="awareness-report-2026-W48.csv"),
    ]
    analytics = _Analytics(None, listed)
    found = _download(analytics)
    assert found is not None
    assert found.file_name == "awareness-report-2026-W48.csv.evidence.json"
    assert json.loads(found.content) == json.loads(evidence_json(_evidence()))
    assert analytics.filters == [f'sha256="{"cd" * 32}"']


def test_evidence_not_yet_checkpointed_is_none_and_another_refusal_stays_one() -> None:
    assert _download(_Analytics(grpc.StatusCode.FAILED_PRECONDITION, [])) is None
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        _download(_Analytics(grpc.StatusCode.NOT_FOUND, []))
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_report_the_list_does_not_name_still_gets_a_file_name() -> None:
    found = _download(_Analytics(None, []))
    assert found is not None and found.file_name == f"report-{REPORT_ID}.evidence.json"
