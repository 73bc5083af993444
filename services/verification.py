"""``awareness verification run``: the scheduled verification (the chart's ``verification`` CronJob).

Two checks, in this process, straight from the databases (trusting no running service):

- ``log``: the event log (services/ingest/verify.py). Incremental from the checkpoint the last passed
  run reached, as its access record says; a full recomputation when none has passed yet, when
  ``--full`` is given, or when the last full pass is older than ``--full-every-hours`` (a week by
  default), because an incremental run does not re-read records it verified before.
- ``audit``: gdpr's hash-chained audit trail (services/gdpr/verify.py), which must still pass through
  the head the last passed run saw (so records cut off its end are caught too).

Each result is appended to the log as an access record, with ingest's certificate (the job runs as
ingest, like ingest's own records): action ``verification.log`` / ``verification.audit``, principal
``cli:verification``, outcome ``passed``, ``failed`` (the check found a difference), or ``error`` (it
could not run: a database unreachable). Ingest turns them into metrics
(services/ingest/verification_records.py). The details hold hashes, sizes, ids and the failure's
description; no personal data.

Exit status: 0 both passed, 1 a check failed or could not run, or a result could not be recorded.

What the job cannot see: the ingest database restored, whole, to an earlier self-consistent state
(the records of the runs since then vanish with it). A party holding a later checkpoint can:
``awareness witness`` (services/ingest/witness.py).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

FULL_EVERY_HOURS = 168
MAX_FAILURE_CHARS = 1000
RECORD_ATTEMPTS = 3
RECORD_TIMEOUT_SECONDS = 10.0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    verification = subparsers.add_parser(
        "verification",
        help="the scheduled verification of the event log and gdpr's audit trail (the CronJob)",
    )
    commands = verification.add_subparsers(dest="verification_command", required=True, metavar="COMMAND")
    run = commands.add_parser(
        "run",
        help="verify the log (incrementally) and the audit trail, record both results in the log",
        description=(
            "Verify the event log from the checkpoint the last passed run reached (everything when none "
            "did, with --full, or when the last full pass is older than --full-every-hours) and gdpr's "
            "audit trail, from their databases; append each result to the log as an access record "
            "(verification.log, verification.audit), from which ingest exports "
            "awareness_verification_failures_total and "
            "awareness_verification_last_success_timestamp_seconds. Exit 1 when a check fails."
        ),
    )
    run.add_argument("--full", action="store_true", help="recompute the whole log, not only what is new")
    run.add_argument(
        "--full-every-hours",
        type=float,
        default=FULL_EVERY_HOURS,
        help=f"a full run when the last full pass is older than this (default {FULL_EVERY_HOURS})",
    )
    run.add_argument(
        "--keys",
        type=Path,
        action="append",
        default=[],
        help="trusted checkpoint keys (as awareness verify --keys): check the checkpoints' signatures too",
    )
    run.set_defaults(handler=run_verification)


@dataclass
class CheckResult:
    """One check's outcome and the access record that says so."""

    check: str
    outcome: str
    resource: str
    details: dict[str, str] = field(default_factory=dict)
    failure: str | None = None

    def summary(self) -> str:
        said = f": {self.failure}" if self.failure else ""
        return f"verification {self.check}: {self.outcome}{said}"


def _hours_since(text: str | None, now: datetime) -> float | None:
    if not text:
        return None
    try:
        then = datetime.fromisoformat(text)
    except ValueError:
        return None
    return (now - then) / timedelta(hours=1)


def check_log(
    engine: Any, *, keys: Any, full: bool, full_every_hours: float, now: datetime, progress: Any = None
) -> CheckResult:
    """The log check: incremental from the last passed run's checkpoint, or full."""
    from sqlalchemy.orm import Session

    from services.ingest.verification_records import PASSED, last_passed_details
    from services.ingest.verify import VerifiedHead, verify_database, verify_incremental

    with Session(engine) as session:
        previous = last_passed_details(session, "log") or {}
    since = None
    if previous.get("tree_size") and previous.get("root_hash"):
        since = VerifiedHead.from_json(previous)
    last_full = previous.get("last_full_time")
    age = _hours_since(last_full, now)
    full = full or since is None or age is None or age >= full_every_hours
    if full:
        report = verify_database(engine, keys=keys, progress=progress)
    else:
        report = verify_incremental(engine, since=since, keys=keys, progress=progress)
    for line in report.checks:
        print(f"log   ok    {line}")
    for line in report.notes:
        print(f"log   note  {line}")
    details = {"check": "log", "scope": "full" if full else "incremental"}
    if since is not None and not full:
        details["from_tree_size"] = str(since.tree_size)
    if report.ok:
        details["last_full_time"] = now.isoformat() if full else (last_full or "")
        resource = "checkpoints"
        if report.head is not None:
            details.update({key: str(value) for key, value in report.head.to_json().items()})
            resource = f"checkpoints/{report.head.tree_size}"
        return CheckResult("log", PASSED, resource, details)
    failure = (report.failure or "")[:MAX_FAILURE_CHARS]
    return CheckResult("log", "failed", "checkpoints", {**details, "failure": failure}, failure)


def check_audit(engine: Any, *, ingest_engine: Any) -> CheckResult:
    """The audit-trail check: the whole hash chain, through the head the last passed run saw."""
    from sqlalchemy.orm import Session

    from services.gdpr.verify import verify_audit_database
    from services.ingest.verification_records import PASSED, last_passed_details

    with Session(ingest_engine) as session:
        previous = last_passed_details(session, "audit") or {}
    published = bytes.fromhex(previous["head_hash"]) if previous.get("head_hash") else None
    report = verify_audit_database(engine, published_head=published, progress=None)
    if report.ok:
        print(f"audit ok    {report.checked} audit records re-hashed, the chain is intact")
    details = {"check": "audit", "checked": str(report.checked)}
    if published is not None:
        details["published_head"] = published.hex()
    if report.ok:
        resource = "auditRecords"
        if report.head_sequence is not None:
            details.update({"head_hash": report.head_hash.hex(), "head_sequence": str(report.head_sequence)})
            resource = f"auditRecords/{report.head_sequence}"
        return CheckResult("audit", PASSED, resource, details)
    failure = (report.failure or "")[:MAX_FAILURE_CHARS]
    return CheckResult("audit", "failed", "auditRecords", {**details, "failure": failure}, failure)


def _guarded(check: str, resource: str, run: Any) -> CheckResult:
    """A check that could not run (a database down, a bug) is an ``error``, not a failed verification."""
    from services.ingest.verification_records import ERROR

    try:
        result: CheckResult = run()
    except Exception as exc:  # any: the job must still say, and record, that the check did not run
        reason = f"the check could not run: {type(exc).__name__}: {exc}"[:MAX_FAILURE_CHARS]
        return CheckResult(check, ERROR, resource, {"check": check, "failure": reason}, reason)
    return result


async def record_results(results: list[CheckResult]) -> None:
    """Append one access record per result through ingest's AppendEvents, as ingest."""

    from services.ingest.verification_records import PRINCIPAL, SOURCE, action_of
    from services.runtime import audit

    events = [
        event
        for result in results
        for event in audit.audit_events(
            audit.AccessRecord(
                principal=PRINCIPAL,
                action=action_of(result.check),
                method="awareness verification run",
                resource=result.resource,
                outcome=result.outcome,
                time=audit.now(),
                details=result.details,
            ),
            source=SOURCE,
        )
    ]
    stored = await audit.append_from_cli(
        events,
        service=SOURCE,
        attempts=RECORD_ATTEMPTS,
        timeout_seconds=RECORD_TIMEOUT_SECONDS,
        retry_seconds=1.0,
    )
    for event_id in stored:
        print(f"recorded event {event_id}")


def run_verification(args: argparse.Namespace) -> int:
    from services.ingest.verify import load_keys
    from services.runtime import db
    from services.runtime.config import load_settings

    keys = load_keys(args.keys) if args.keys else None
    now = datetime.now(UTC)
    ingest_engine = db.create_db_engine(load_settings("ingest").database_url, service="ingest")
    gdpr_engine = db.create_db_engine(load_settings("gdpr").database_url, service="gdpr")
    try:
        results = [
            _guarded(
                "log",
                "checkpoints",
                lambda: check_log(
                    ingest_engine,
                    keys=keys,
                    full=args.full,
                    full_every_hours=args.full_every_hours,
                    now=now,
                ),
            ),
            _guarded("audit", "auditRecords", lambda: check_audit(gdpr_engine, ingest_engine=ingest_engine)),
        ]
    finally:
        ingest_engine.dispose()
        gdpr_engine.dispose()
    for result in results:
        print(result.summary())
    status = 0 if all(result.outcome == "passed" for result in results) else 1
    try:
        asyncio.run(record_results(results))
    except Exception as exc:  # the results stand; the metrics will not show them: fail the job
        print(f"verification: the results were not recorded in the log: {exc}", file=sys.stderr)
        return 1
    return status
