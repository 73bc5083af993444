"""The report methods of the AnalyticsService servicer (CreateReport, GetReport, ListReports,
GetReportEvidence): transport only, each calls one use case of :mod:`.reports`.

``ReportingServicer`` is the rollups' servicer (:mod:`.api`) plus these methods; app.py serves it."""

from __future__ import annotations

import re
from typing import Any, Final

import grpc
from awareness.analytics.v1 import analytics_pb2

from services.analytics.api import AnalyticsServicer
from services.analytics.report_models import ReportRow
from services.analytics.reports import ReportIssuer, name_of, report_id_of
from services.analytics.service import AnalyticsOperations
from services.runtime import audit, auth
from services.runtime.errors import FieldViolation, InvalidArgumentError
from services.runtime.paging import PageTokens, page_size
from services.runtime.timestamps import timestamp_from_us

FORMATS: Final = {
    analytics_pb2.REPORT_FORMAT_HTML: "html",
    analytics_pb2.REPORT_FORMAT_PDF: "pdf",
    analytics_pb2.REPORT_FORMAT_CSV: "csv",
}
FORMAT_ENUMS: Final = {name: number for number, name in FORMATS.items()}
# AIP-160, one field: sha256="<hex>" (quotes optional, spaces around "=" allowed).
_SHA256_FILTER: Final = re.compile(r'\s*sha256\s*=\s*"?(?P<hex>[0-9a-fA-F]{64})"?\s*')


def sha256_filter(text: str) -> str | None:
    """The digest a ListReports filter selects, None for no filter; INVALID_ARGUMENT otherwise."""
    if not text.strip():
        return None
    match = _SHA256_FILTER.fullmatch(text)
    if match is None:
        raise InvalidArgumentError(
            'filter must be empty or sha256="<64 hex digits>"',
            violations=[FieldViolation("filter", 'only sha256="<64 hexadecimal digits>" is supported')],
        )
    return match["hex"].lower()


def report_proto(row: ReportRow, *, with_content: bool = False) -> analytics_pb2.Report:
    return analytics_pb2.Report(
        name=name_of(row.report_id),
        period=row.period,
        format=FORMAT_ENUMS.get(row.format, analytics_pb2.REPORT_FORMAT_UNSPECIFIED),
        media_type=row.media_type,
        file_name=f"awareness-report-{row.period}.{row.format}",
        sha256=row.sha256,
        size_bytes=row.size_bytes,
        timestamp_token=row.timestamp_token,
        tsa_time=timestamp_from_us(row.tsa_time_us),
        log_event_id=row.log_event_id,
        create_time=timestamp_from_us(row.created_us),
        creator=row.created_by,
        content=row.content if with_content else b"",
    )


class ReportingServicer(AnalyticsServicer):
    def __init__(
        self, *, operations: AnalyticsOperations, page_tokens: PageTokens, reports: ReportIssuer
    ) -> None:
        super().__init__(operations=operations, page_tokens=page_tokens)
        self._reports = reports
        self._report_tokens = page_tokens

    async def CreateReport(  # noqa: N802 - gRPC method name
        self, request: analytics_pb2.CreateReportRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> analytics_pb2.Report:
        principal = auth.current_principal()
        issued = await self._reports.issue(
            period=request.period,
            fmt=FORMATS.get(request.format, ""),
            created_by=principal.subject if principal is not None else "",
            request_id=request.request_id,
        )
        audit.note(resource=name_of(issued.row.report_id))
        return report_proto(issued.row)

    async def GetReport(  # noqa: N802 - gRPC method name
        self, request: analytics_pb2.GetReportRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> analytics_pb2.Report:
        full = request.view == analytics_pb2.REPORT_VIEW_FULL
        audit.note(resource=request.name)
        row = await self._reports.get(report_id_of(request.name), with_content=full)
        return report_proto(row, with_content=full)

    async def ListReports(  # noqa: N802 - gRPC method name
        self, request: analytics_pb2.ListReportsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> analytics_pb2.ListReportsResponse:
        size = page_size(request.page_size, default=50)
        digest = sha256_filter(request.filter)
        method = "analytics.ListReports"
        before = self._report_tokens.decode(
            request.page_token, method=method, filters=digest, shape=(int, str)
        )
        rows, next_page_token = await self._report_tokens.fetch_page(
            lambda limit: self._reports.page(
                limit=limit, before=(before[0], before[1]) if before else None, sha256=digest
            ),
            size=size,
            position=lambda row: (row.created_us, row.report_id),
            method=method,
            filters=digest,
        )
        return analytics_pb2.ListReportsResponse(
            reports=[report_proto(row) for row in rows], next_page_token=next_page_token
        )

    async def GetReportEvidence(  # noqa: N802 - gRPC method name
        self, request: analytics_pb2.GetReportEvidenceRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> analytics_pb2.ReportEvidence:
        row = await self._reports.get(report_id_of(request.name), with_content=False)
        proof = await self._reports.inclusion_proof(row)
        return analytics_pb2.ReportEvidence(
            report=name_of(row.report_id),
            period=row.period,
            format=row.format,
            sha256=row.sha256,
            timestamp_token=row.timestamp_token,
            log_event_id=row.log_event_id,
            inclusion_proof=proof,
        )
