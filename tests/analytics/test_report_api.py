"""The report API over gRPC (CreateReport, GetReport, ListReports, GetReportEvidence) with its
permissions and field violations, and ``awareness report weekly`` then ``awareness verify --report``
against the running suite, as an operator and an auditor run them."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from awareness.analytics.v1 import analytics_pb2

from services import cli
from services.runtime import auth
from tests.analytics.harness import AUDITOR
from tests.analytics.report_harness import WEEK, Reporting, reporting_suite
from tests.conftest import IDENTITY_ENV
from tests.grpc_errors import rpc_error, violated_fields
from tests.ingest.harness import awareness_verify

pytestmark = pytest.mark.parametrize("database_url", [""], indirect=True)
ANALYST = auth.Principal(subject="test:analyst", roles=frozenset({"analyst"}))


@pytest.fixture
async def reporting(tmp_path: Path, database_url: str) -> AsyncIterator[Reporting]:
    async with reporting_suite(tmp_path, database_url) as running:
        yield running


async def test_create_get_list_and_evidence(reporting: Reporting) -> None:
    analyst = reporting.stub(ANALYST)
    created = await analyst.CreateReport(
        analytics_pb2.CreateReportRequest(period=WEEK, format=analytics_pb2.REPORT_FORMAT_CSV)
    )
    assert created.name.startswith("reports/") and created.period == WEEK
    assert created.media_type.startswith("text/csv") and created.file_name == f"awareness-report-{WEEK}.csv"
    assert created.creator == "test:analyst" and created.log_event_id and created.timestamp_token
    assert not created.content  # the file only with view FULL

    auditor = reporting.stub(AUDITOR)
    basic = await auditor.GetReport(analytics_pb2.GetReportRequest(name=created.name))
    assert not basic.content and basic.sha256 == created.sha256
    full = await auditor.GetReport(
        analytics_pb2.GetReportRequest(name=created.name, view=analytics_pb2.REPORT_VIEW_FULL)
    )
    assert hashlib.sha256(full.content).hexdigest() == created.sha256
    assert b"funnel,wk-c1,12,0,3,0,4," in full.content

    second = await analyst.CreateReport(
        analytics_pb2.CreateReportRequest(format=analytics_pb2.REPORT_FORMAT_HTML)
    )
    assert second.period == WEEK  # the last complete week by default
    first_page = await auditor.ListReports(analytics_pb2.ListReportsRequest(page_size=1))
    assert [r.name for r in first_page.reports] == [second.name] and first_page.next_page_token
    rest = await auditor.ListReports(analytics_pb2.ListReportsRequest(page_token=first_page.next_page_token))
    assert [r.name for r in rest.reports] == [created.name] and not rest.next_page_token
    found = await auditor.ListReports(analytics_pb2.ListReportsRequest(filter=f'sha256="{created.sha256}"'))
    assert [r.name for r in found.reports] == [created.name]

    async def evidence() -> analytics_pb2.ReportEvidence:
        for _ in range(200):
            try:
                proof: analytics_pb2.ReportEvidence = await auditor.GetReportEvidence(
                    analytics_pb2.GetReportEvidenceRequest(name=created.name)
                )
                return proof
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION, exc.details()
                await asyncio.sleep(0.1)
        raise AssertionError("no checkpoint covered the report")

    proof = await evidence()
    assert proof.sha256 == created.sha256 and proof.inclusion_proof.leaf_data

    # The auditor may read but not issue.
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await auditor.CreateReport(analytics_pb2.CreateReportRequest(format=analytics_pb2.REPORT_FORMAT_CSV))
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_bad_input_is_invalid_argument_with_field_violations(reporting: Reporting) -> None:
    analyst = reporting.stub(ANALYST)
    bad = analyst.CreateReport(analytics_pb2.CreateReportRequest(period="2026-W60"))
    error = await rpc_error(bad)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(error) == {"period", "format"}
    for request, field in (
        (analytics_pb2.ListReportsRequest(filter="period=2026-W48"), "filter"),
        (analytics_pb2.ListReportsRequest(filter='sha256="abc"'), "filter"),
    ):
        error = await rpc_error(analyst.ListReports(request))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and violated_fields(error) == {field}
    error = await rpc_error(analyst.GetReport(analytics_pb2.GetReportRequest(name="reports/../x")))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and violated_fields(error) == {"name"}
    missing = analytics_pb2.GetReportRequest(name="reports/00000000-0000-4000-8000-000000000000")
    error = await rpc_error(analyst.GetReport(missing))
    assert error.code() == grpc.StatusCode.NOT_FOUND


async def test_report_weekly_then_verify_report(
    reporting: Reporting,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("AWARENESS_ANALYTICS_TARGET", reporting.address)
    for name, value in IDENTITY_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWARENESS_DATA_DIR", str(tmp_path))
    output = tmp_path / "weekly.pdf"
    code = await asyncio.to_thread(
        cli.main, ["report", "weekly", "--week", WEEK, "--format", "pdf", "--output", str(output)]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    digest = hashlib.sha256(output.read_bytes()).hexdigest()
    assert f"sha256       {digest}" in out and "log event" in out
    assert (tmp_path / "weekly.pdf.evidence.json").exists(), out

    accepted = await asyncio.to_thread(awareness_verify, "--report", output, "--keys", reporting.keys)
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    # No evidence file: the evidence is asked of the running suite (the keys stay the auditor's).
    (tmp_path / "weekly.pdf.evidence.json").unlink()
    fetched = await asyncio.to_thread(awareness_verify, "--report", output, "--keys", reporting.keys)
    assert fetched.returncode == 0, fetched.stdout + fetched.stderr
    assert "evidence fetched from the analytics service" in fetched.stdout
    output.write_bytes(output.read_bytes() + b"\n")
    refused = await asyncio.to_thread(awareness_verify, "--report", output, "--keys", reporting.keys)
    assert refused.returncode == 1 and "FAIL" in refused.stdout
