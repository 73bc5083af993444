"""The programme's Reports page (see docs/portal.md and docs/reports.md): the weekly reports the
analytics service issued, each file and its evidence for download, and the form that issues one.

Every read and action is a call to the analytics service as the signed-in person, so the service
checks ``analytics:read`` and ``reports:create`` and records who read a report's file. The page only
hides the form a role lacks. The evidence file is the one ``awareness report evidence`` writes, so
``awareness verify --report FILE`` accepts it as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlencode

import grpc
from awareness.analytics.v1 import analytics_pb2
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from services.evidence.report_evidence import EVIDENCE_MEDIA_TYPE, evidence_file_name, evidence_json
from services.portal.api import failure_of, portal_state, render, signed_in
from services.portal.domain import display, reports
from services.portal.domain.evidence import attachment
from services.portal.service import Person, Services
from services.runtime import auth
from services.runtime.errors import AwarenessError, FieldViolation

PAGE_SIZE: Final = 25
LIST: Final = "/portal/programme/reports"
CREATE_METHOD: Final = "/awareness.analytics.v1.AnalyticsService/CreateReport"


async def _list_page(
    request: Request,
    person: Person,
    *,
    form: reports.IssueForm,
    violations: Sequence[FieldViolation] = (),
    status: int = 200,
) -> Response:
    services = portal_state(request).services
    page_token = request.query_params.get("page_token", "")
    issued = request.query_params.get("issued", "")
    listed = await services.as_person(
        person,
        lambda: services.analytics().ListReports(
            analytics_pb2.ListReportsRequest(page_size=PAGE_SIZE, page_token=page_token)
        ),
    )
    context: dict[str, Any] = {
        "reports": listed.reports,
        "next_query": urlencode({"page_token": listed.next_page_token}) if listed.next_page_token else "",
        "first_page": not page_token,
        # After issuing: the new report, the newest, so the first on the page.
        "issued": issued,
        "issued_report": next(
            (found for found in listed.reports if issued and found.name == reports.report_name(issued)), None
        ),
        "form": form,
        "errors": reports.errors_by_field(violations),
        "domain": reports,
    }
    return render(request, "programme_reports.html", context, person=person, status=status)


@signed_in(LIST)
async def listing(request: Request, person: Person) -> Response:
    return await _list_page(request, person, form=reports.IssueForm.fresh(display.now().date()))


@signed_in(LIST)
async def issue(request: Request, person: Person) -> Response:
    """Issues a report as the person; a week the service refuses shows the form again with why."""
    # The service refuses it anyway; refused here first, a role without the form is told so, not
    # shown a form it never had.
    auth.require_permission("reports:create", person.principal)
    sent = reports.IssueForm.sent(request.state.form)
    services = portal_state(request).services
    # The gateway's deadline for CreateReport when one is configured, as for the JSON route.
    timeout = portal_state(request).admission.config.method_timeouts.get(CREATE_METHOD)
    try:
        creation = reports.create_request(sent)
        created = await services.as_person(
            person, lambda: services.analytics().CreateReport(creation, timeout=timeout)
        )
    except (grpc.aio.AioRpcError, AwarenessError) as exc:
        failed = failure_of(exc)
        if failed.code != grpc.StatusCode.INVALID_ARGUMENT:
            raise
        shown = failed.violations or [FieldViolation("", failed.message or "the request was not valid")]
        return await _list_page(request, person, form=sent, violations=shown, status=400)
    query = urlencode({"issued": reports.report_id_of(created.name)})
    return RedirectResponse(f"{LIST}?{query}", status_code=303)


@signed_in(f"{LIST}/{{report_id}}/file")
async def report_file(request: Request, person: Person) -> Response:
    report_id = request.path_params["report_id"]
    services = portal_state(request).services
    full = await services.as_person(
        person,
        lambda: services.analytics().GetReport(
            analytics_pb2.GetReportRequest(
                name=reports.report_name(report_id), view=analytics_pb2.REPORT_VIEW_FULL
            )
        ),
    )
    file_name = reports.safe_file_name(full.file_name, fallback=f"report-{report_id}")
    return Response(
        bytes(full.content),
        media_type=full.media_type or "application/octet-stream",
        headers=attachment(file_name),
    )


@dataclass(frozen=True, slots=True)
class EvidenceFile:
    file_name: str
    content: bytes


async def evidence_file(services: Services, person: Person, report_id: str) -> EvidenceFile | None:
    """The report's evidence file as ``awareness report evidence`` writes it, or None while no signed
    checkpoint covers the report's log event yet (the service's FAILED_PRECONDITION)."""
    name = reports.report_name(report_id)
    analytics = services.analytics()
    try:
        evidence = await services.as_person(
            person, lambda: analytics.GetReportEvidence(analytics_pb2.GetReportEvidenceRequest(name=name))
        )
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
            return None
        raise
    # The file name comes from the list (filtered to this file's digest), not from GetReport, whose
    # every read is recorded as a read of the report's file.
    same_file = await services.as_person(
        person,
        lambda: analytics.ListReports(
            analytics_pb2.ListReportsRequest(page_size=100, filter=f'sha256="{evidence.sha256}"')
        ),
    )
    listed_name = next((found.file_name for found in same_file.reports if found.name == name), "")
    file_name = reports.safe_file_name(listed_name, fallback=f"report-{report_id}")
    return EvidenceFile(evidence_file_name(file_name), evidence_json(evidence).encode())


@signed_in(f"{LIST}/{{report_id}}/evidence")
async def report_evidence(request: Request, person: Person) -> Response:
    report_id = request.path_params["report_id"]
    found = await evidence_file(portal_state(request).services, person, report_id)
    if found is None:
        context = {"report_id": report_id}
        return render(request, "programme_reports_pending.html", context, person=person, status=409)
    return Response(found.content, media_type=EVIDENCE_MEDIA_TYPE, headers=attachment(found.file_name))


routes: list[BaseRoute] = [
    Route("/programme/reports", listing, methods=["GET"]),
    Route("/programme/reports", issue, methods=["POST"]),
    Route("/programme/reports/{report_id}/file", report_file, methods=["GET"]),
    Route("/programme/reports/{report_id}/evidence", report_evidence, methods=["GET"]),
]
