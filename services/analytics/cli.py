"""``awareness report ...``: issue weekly reports as evidence, list them, fetch a file and its evidence.

``awareness report weekly [--week 2026-W48] [--format html|pdf|csv] [--output FILE]`` asks the running
analytics service to issue the report (CreateReport), writes the file, then waits for a signed
checkpoint to cover its ``report.issued`` event and writes ``FILE.evidence.json`` beside it (the RFC
3161 token and the inclusion proof): ``awareness verify --report FILE --keys keys.json`` then proves
the copy without the service. It prints the report's name, SHA-256 and log event id.

Calls go over mTLS with the analytics service's own certificate (AWARENESS_MTLS_* or
var/mtls/analytics.*), which may name the principal ``cli:report`` with the ``analyst`` role.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from services.runtime.auth import Principal

REPORT_PRINCIPAL = Principal(subject="cli:report", roles=frozenset({"analyst"}))
FORMATS = ("html", "pdf", "csv")
EVIDENCE_POLL_SECONDS = 0.5


def register(subparsers: Any) -> None:
    report = subparsers.add_parser("report", help="weekly reports as evidence: issue, list, fetch")
    commands = report.add_subparsers(dest="report_command", required=True, metavar="REPORT_COMMAND")

    weekly = commands.add_parser(
        "weekly", help="issue the weekly report (time-stamped, in the log) and write it with its evidence"
    )
    weekly.add_argument(
        "--week", default="", help="ISO week, e.g. 2026-W48 (default: the last complete week)"
    )
    weekly.add_argument("--format", choices=FORMATS, default="pdf", help="file format (default pdf)")
    weekly.add_argument(
        "--output", type=Path, help="where to write it (default: awareness-report-WEEK.FORMAT)"
    )
    weekly.add_argument(
        "--evidence-timeout",
        type=float,
        default=60.0,
        help="seconds to wait for a checkpoint to cover the report before writing FILE.evidence.json",
    )
    weekly.set_defaults(handler=_weekly)

    listing = commands.add_parser("list", help="list issued reports, newest first")
    listing.add_argument("--sha256", help="only the reports of this file digest")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    listing.set_defaults(handler=_list)

    evidence = commands.add_parser("evidence", help="write a report's file and evidence (for an auditor)")
    evidence.add_argument("name", help="reports/{id} or just the id")
    evidence.add_argument(
        "--output", type=Path, help="the report file to write (its evidence goes beside it)"
    )
    evidence.set_defaults(handler=_fetch)


def _report_name(value: str) -> str:
    return value if value.startswith("reports/") else f"reports/{value}"


def evidence_path(report_file: Path) -> Path:
    from services.evidence.report_evidence import evidence_file_name

    return report_file.with_name(evidence_file_name(report_file.name))


# --- calls to the running service -------------------------------------------------------------------


async def _call(method: str, request: Any, *, timeout_seconds: float | None = None) -> Any:
    from awareness.analytics.v1 import analytics_pb2_grpc

    from services.runtime.clients import call_from_cli
    from services.runtime.config import load_settings

    settings = load_settings("analytics")
    return await call_from_cli(
        settings,
        service="analytics",
        stub_class=analytics_pb2_grpc.AnalyticsServiceStub,
        method=method,
        request=request,
        identity=REPORT_PRINCIPAL,
        timeout_seconds=timeout_seconds or max(settings.call_timeout_seconds, 120.0),
        attempts=1,
    )


async def _evidence(name: str, *, timeout_seconds: float) -> Any | None:
    """The report's evidence once a checkpoint covers its event; None after ``timeout_seconds``."""
    import grpc
    from awareness.analytics.v1 import analytics_pb2

    deadline = time.monotonic() + timeout_seconds
    while True:
        try:
            return await _call("GetReportEvidence", analytics_pb2.GetReportEvidenceRequest(name=name))
        except grpc.aio.AioRpcError as exc:
            waiting = exc.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND)
            if not waiting or time.monotonic() > deadline:
                if waiting:
                    return None
                raise
        await asyncio.sleep(EVIDENCE_POLL_SECONDS)


def _write(report: Any, output: Path | None) -> Path:
    path = output or Path(report.file_name)
    path.write_bytes(report.content)
    return path


def _write_evidence(evidence: Any, report_file: Path) -> Path:
    from services.evidence.report_evidence import evidence_json

    path = evidence_path(report_file)
    path.write_text(evidence_json(evidence))
    return path


async def _issue(args: argparse.Namespace) -> int:
    from awareness.analytics.v1 import analytics_pb2

    formats = {
        "html": analytics_pb2.REPORT_FORMAT_HTML,
        "pdf": analytics_pb2.REPORT_FORMAT_PDF,
        "csv": analytics_pb2.REPORT_FORMAT_CSV,
    }
    started = time.perf_counter()
    created = await _call(
        "CreateReport", analytics_pb2.CreateReportRequest(period=args.week, format=formats[args.format])
    )
    full = await _call(
        "GetReport", analytics_pb2.GetReportRequest(name=created.name, view=analytics_pb2.REPORT_VIEW_FULL)
    )
    path = _write(full, args.output)
    print(f"report       {created.name}")
    print(f"period       {created.period}")
    print(f"file         {path} ({full.size_bytes} bytes, {time.perf_counter() - started:.1f} s)")
    print(f"sha256       {created.sha256}")
    print(f"log event    {created.log_event_id}")
    evidence = await _evidence(created.name, timeout_seconds=args.evidence_timeout)
    if evidence is None:
        print(
            "evidence     not checkpointed yet; fetch it later with "
            f"awareness report evidence {created.name} --output {path}",
            file=sys.stderr,
        )
        return 0
    print(f"evidence     {_write_evidence(evidence, path)}")
    print(f"verify with  awareness verify --report {path} --keys KEYS.json")
    return 0


def _run(handler: Any, args: argparse.Namespace) -> int:
    import grpc

    try:
        result: int = asyncio.run(handler(args))
    except grpc.aio.AioRpcError as exc:
        print(f"report: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    return result


def _weekly(args: argparse.Namespace) -> int:
    return _run(_issue, args)


async def _listing(args: argparse.Namespace) -> int:
    from awareness.analytics.v1 import analytics_pb2
    from google.protobuf import json_format

    query = f'sha256="{args.sha256.lower()}"' if args.sha256 else ""
    reports: list[Any] = []
    token = ""
    while True:
        page = await _call(
            "ListReports", analytics_pb2.ListReportsRequest(page_size=200, page_token=token, filter=query)
        )
        reports.extend(page.reports)
        token = page.next_page_token
        if not token:
            break
    if args.json:
        print(json.dumps([json_format.MessageToDict(r) for r in reports], indent=2))
        return 0
    for report in reports:
        format_name = analytics_pb2.ReportFormat.Name(report.format).removeprefix("REPORT_FORMAT_").lower()
        created = report.create_time.ToDatetime().isoformat(timespec="seconds")
        print(f"{report.name}  {report.period}  {format_name:4}  {created}Z  {report.sha256}")
    return 0


def _list(args: argparse.Namespace) -> int:
    return _run(_listing, args)


async def _fetching(args: argparse.Namespace) -> int:
    from awareness.analytics.v1 import analytics_pb2

    name = _report_name(args.name)
    full = await _call(
        "GetReport", analytics_pb2.GetReportRequest(name=name, view=analytics_pb2.REPORT_VIEW_FULL)
    )
    path = _write(full, args.output)
    print(f"file         {path}")
    evidence = await _call("GetReportEvidence", analytics_pb2.GetReportEvidenceRequest(name=name))
    print(f"evidence     {_write_evidence(evidence, path)}")
    return 0


def _fetch(args: argparse.Namespace) -> int:
    return _run(_fetching, args)
