"""Weekly reports as evidence, through the real suite (signing, gdpr, ingest and analytics in process):
issue a report in each format, find its figures in the PDF, and prove a copy with ``awareness verify
--report``; a one-byte change, or a token the log does not name, is refused."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import subprocess
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from awareness.ingest.v1 import ingest_pb2
from awareness.signing.v1 import signing_pb2, signing_pb2_grpc

from services.analytics.domain.report import iso_week
from services.analytics.reports import ReportIssuer
from services.evidence.timestamp import granted_token, timestamp_request
from services.runtime.db import transaction
from services.runtime.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError
from services.scoring.models import ModelStatus
from services.scoring.training_job import register_result
from tests.analytics.report_harness import MONDAY, WEEK, Reporting, reporting_suite
from tests.grpc_errors import violated_fields
from tests.ingest.harness import awareness_verify, eventually, start_service
from tests.test_e2e_gdpr import small_model

PREVIOUS = iso_week(MONDAY - timedelta(days=7))


@pytest.fixture
async def reports(tmp_path: Path, database_url: str) -> AsyncIterator[Reporting]:
    async with reporting_suite(tmp_path, database_url) as reporting:
        yield reporting


async def _evidence(issuer: ReportIssuer, row: object) -> dict[str, object]:
    async def proven() -> dict[str, object] | None:
        try:
            return await issuer.evidence(row)  # type: ignore[arg-type]
        except (FailedPreconditionError, NotFoundError, InvalidArgumentError):
            return None  # not integrated or not checkpointed yet

    result: dict[str, object] = await eventually(proven, timeout=30, what="a checkpoint covering the report")
    return result


def _pdftotext(path: Path) -> str:
    return subprocess.run(
        ["pdftotext", "-layout", str(path), "-"], capture_output=True, text=True, check=True
    ).stdout


async def test_a_report_is_issued_in_every_format_and_proven_offline(
    reports: Reporting, tmp_path: Path
) -> None:
    issuer = reports.issuer
    issued = {}
    for fmt in ("pdf", "html", "csv"):
        started = time.perf_counter()
        issued[fmt] = await issuer.issue(period="", fmt=fmt, created_by="test:analyst")
        print(f"{fmt}: issued in {time.perf_counter() - started:.2f} s", issued[fmt])
    pdf = issued["pdf"].row
    assert pdf.period == WEEK and pdf.media_type == "application/pdf"
    assert pdf.sha256 == hashlib.sha256(pdf.content).hexdigest()
    assert pdf.content.startswith(b"%PDF")

    # The figures: the PDF names the week's campaign and its funnel, the CSV holds them in rows.
    report_file = tmp_path / "report.pdf"
    report_file.write_bytes(pdf.content)
    text = _pdftotext(report_file)
    assert "wk-c1" in text and WEEK in text
    funnel_line = next(line for line in text.splitlines() if "wk-c1" in line)
    assert [int(n) for n in funnel_line.split() if n.isdigit()][:1] == [12], funnel_line
    assert "3" in funnel_line and "4" in funnel_line
    csv_text = issued["csv"].row.content.decode()
    assert "funnel,wk-c1,12,0,3,0,4," in csv_text, csv_text[:800]
    html = issued["html"].row.content.decode()
    assert "wk-c1" in html and PREVIOUS in html  # the trend reaches back

    # Stored and listed: newest first, filterable by digest, bytes only on a get with content.
    listed = await issuer.page(limit=10, before=None, sha256=None)
    assert [r.format for r in listed] == ["csv", "html", "pdf"]
    by_digest = await issuer.page(limit=10, before=None, sha256=pdf.sha256)
    assert [r.report_id for r in by_digest] == [pdf.report_id]
    got = await issuer.get(pdf.report_id, with_content=True)
    assert got.content == pdf.content and got.log_event_id == pdf.log_event_id

    # The log holds the digest: the event's details are the evidence.
    event = await reports.suite.client().GetEvent(
        ingest_pb2.GetEventRequest(name=f"events/{pdf.log_event_id}")
    )
    assert event.type == "report.issued"
    assert event.details["sha256"] == pdf.sha256
    assert event.details["timestamp_token_sha256"] == hashlib.sha256(pdf.timestamp_token).hexdigest()
    assert event.details["report"] == f"reports/{pdf.report_id}" and event.details["period"] == WEEK

    # Offline proof with standard pieces: the evidence file, the published keys, openssl.
    evidence = await _evidence(issuer, pdf)
    evidence_file = tmp_path / "report.pdf.evidence.json"
    evidence_file.write_text(json.dumps(evidence))
    accepted = await asyncio.to_thread(awareness_verify, "--report", report_file, "--keys", reports.keys)
    print(accepted.stdout)
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    assert "RFC 3161 token verifies over the file's digest" in accepted.stdout
    assert "leaf  details.sha256" in accepted.stdout and "FAIL" not in accepted.stdout

    # One byte changed: refused.
    tampered = bytearray(pdf.content)
    tampered[len(tampered) // 2] ^= 0x01
    changed = tmp_path / "changed.pdf"
    changed.write_bytes(bytes(tampered))
    refused = await asyncio.to_thread(
        awareness_verify, "--report", changed, "--evidence", evidence_file, "--keys", reports.keys
    )
    assert refused.returncode == 1 and "FAIL" in refused.stdout, refused.stdout

    # A genuine token over the same digest that the log does not name: refused.
    digest = bytes.fromhex(pdf.sha256)
    reply = await signing_pb2_grpc.SigningServiceStub(reports.suite.channel("signing")).Timestamp(
        signing_pb2.TimestampRequest(request=timestamp_request(digest, nonce=12345))
    )
    other = granted_token(bytes(reply.response), digest=digest, nonce=12345)
    swapped = dict(evidence, timestampToken=base64.b64encode(other.der).decode())
    swapped_file = tmp_path / "swapped.evidence.json"
    swapped_file.write_text(json.dumps(swapped))
    mismatch = await asyncio.to_thread(
        awareness_verify, "--report", report_file, "--evidence", swapped_file, "--keys", reports.keys
    )
    assert mismatch.returncode == 1, mismatch.stdout
    assert "names another time-stamp token" in mismatch.stdout

    # Another report's evidence for this file: refused.
    csv_evidence = await _evidence(issuer, issued["csv"].row)
    wrong_file = tmp_path / "wrong.evidence.json"
    wrong_file.write_text(json.dumps(csv_evidence))
    wrong = await asyncio.to_thread(
        awareness_verify, "--report", report_file, "--evidence", wrong_file, "--keys", reports.keys
    )
    assert wrong.returncode == 1 and "is not the issued report's" in wrong.stdout


@pytest.mark.parametrize("database_url", [""], indirect=True)
async def test_bad_requests_are_field_violations(reports: Reporting) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        await reports.issuer.issue(period="2026-W60", fmt="docx", created_by="test:analyst")
    assert {v.field for v in caught.value.violations} == {"period", "format"}
    with pytest.raises(NotFoundError):
        await reports.issuer.get("00000000-0000-4000-8000-000000000000", with_content=False)


@pytest.mark.parametrize("database_url", [""], indirect=True)
async def test_only_services_append_report_events_and_their_details_are_checked(reports: Reporting) -> None:
    good = {
        "report": "reports/abc",
        "period": WEEK,
        "format": "pdf",
        "sha256": "a" * 64,
        "timestamp_token_sha256": "b" * 64,
        "tsa_time": "2026-12-06T10:00:00.000000Z",
    }

    def event(**details: str) -> ingest_pb2.Event:
        stamp = ingest_pb2.Event().occurred_at
        stamp.FromDatetime(datetime.now(UTC))
        return ingest_pb2.Event(
            type="report.issued",
            source="analytics",
            occurred_at=stamp,
            severity=ingest_pb2.SEVERITY_INFO,
            details={**good, **details},
        )

    analytics = reports.suite.internal("analytics")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await analytics.AppendEvent(
            ingest_pb2.AppendEventRequest(event=event(sha256="XYZ", period="2026-W60", name="Ann Example"))
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(caught.value) == {"event.details"}
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await reports.suite.client(roles=("integration",)).AppendEvent(
            ingest_pb2.AppendEventRequest(event=event())
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # Another service cannot claim a report was issued: the type names its one writer.
    with pytest.raises(grpc.aio.AioRpcError) as not_analytics:
        await reports.suite.internal("gdpr").AppendEvent(ingest_pb2.AppendEventRequest(event=event()))
    assert not_analytics.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(not_analytics.value) == {"event.type"}
    accepted = await analytics.AppendEvent(ingest_pb2.AppendEventRequest(event=event()))
    assert accepted.receipt.event_id


@pytest.mark.parametrize("database_url", [""], indirect=True)
async def test_a_retry_with_the_same_request_id_returns_the_first_report(reports: Reporting) -> None:
    first = await reports.issuer.issue(period=WEEK, fmt="csv", created_by="test:analyst", request_id="r-1")
    again = await reports.issuer.issue(period=WEEK, fmt="csv", created_by="test:analyst", request_id="r-1")
    other = await reports.issuer.issue(period=WEEK, fmt="csv", created_by="test:analyst", request_id="r-2")
    assert again.row.report_id == first.row.report_id != other.row.report_id
    listed = await reports.issuer.page(limit=10, before=None, sha256=None)
    assert len(listed) == 2


@pytest.mark.parametrize("database_url", [""], indirect=True)
async def test_the_model_section_is_the_champions_health_from_scoring(reports: Reporting) -> None:
    # Without scoring the report is still issued, and says why the section is empty.
    without = await reports.issuer.issue(period=WEEK, fmt="csv", created_by="test:analyst")
    assert "model,,,,,,,,,,,not available: scoring answered" in without.row.content.decode()

    model = await asyncio.to_thread(small_model)
    suite = reports.suite
    scoring_env = suite.env(AWARENESS_SCORING_BOOTSTRAP_MODEL="0", AWARENESS_SCORING_RELOAD_SECONDS="0.2")
    suite.services["scoring"] = await start_service("scoring", scoring_env, port=suite.ports["scoring"])
    sessions = suite.services["scoring"].running.context.sessions
    assert sessions is not None
    with transaction(sessions) as session:
        champion, _ = register_result(session, result=model, status=ModelStatus.CHAMPION)

    async def scoring_answers() -> bool | None:
        # The first report's failed calls opened the breaker to scoring: wait for it to close.
        return True if (await reports.issuer.build(WEEK)).model.champion_version else None

    await eventually(scoring_answers, what="the champion's health from scoring", timeout=90, interval=0.5)
    issued = await reports.issuer.issue(period=WEEK, fmt="csv", created_by="test:analyst")
    rows = [line for line in issued.row.content.decode().splitlines() if line.startswith("model,")]
    card_f1 = f"{champion.metrics['f1']:.4f}"
    # The champion, the F1 its card promised, and why live figures are missing: nothing labelled yet.
    assert (
        rows[0].startswith(f"model,{champion.version},,,,,,,{card_f1},,,") and "no analyst labels" in rows[0]
    )
    # One row per window for the model's own live quality, empty here.
    assert [row.split(",")[2:5] for row in rows[1:]] == [
        ["7d", champion.version, "0"],
        ["30d", champion.version, "0"],
    ]
