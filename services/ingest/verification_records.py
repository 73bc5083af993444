"""The scheduled verification's results as access records, and the metrics ingest derives from them.

``awareness verification run`` (services/verification.py) appends one ``audit.action`` record per check
with ingest's own certificate: action ``verification.log`` or ``verification.audit``, principal
``cli:verification``, outcome ``passed`` or ``failed`` (``error`` when the check could not run), and in
its details where it got to (the checkpoint, the audit trail's head), so the next run starts from there.

Ingest exports, computed from the access-record index on each scrape (cached a few seconds):

- ``awareness_verification_failures_total{check}``: the runs that failed (a counter: the index only
  grows; a database restored from a backup may lower it, which Prometheus reads as a counter reset);
- ``awareness_verification_last_success_timestamp_seconds{check}``: when the last run passed (absent
  until one has).

A CronJob's process is gone before Prometheus would scrape it; the log is the durable record, and every
ingest replica reads the same values from it, so no Pushgateway is needed.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Final

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from services.ingest.repository import ACCESS, RECORDS

log = logging.getLogger("awareness.ingest.verification")

CHECKS: Final = ("log", "audit")
PRINCIPAL: Final = "cli:verification"
# The access records of the job are appended by ingest's own identity (the event's source).
SOURCE: Final = "ingest"
PASSED: Final = "passed"
FAILED: Final = "failed"
ERROR: Final = "error"
CACHE_SECONDS: Final = 5.0


def action_of(check: str) -> str:
    return f"verification.{check}"


def _runs() -> Any:
    table = ACCESS.c
    return (
        table.ordinal == 0,
        table.service == SOURCE,
        table.principal == PRINCIPAL,
        table.action.in_([action_of(check) for check in CHECKS]),
    )


def last_passed_details(session: Session, check: str) -> dict[str, str] | None:
    """The details of the newest passed run of ``check`` (None when none has passed yet)."""
    table = ACCESS.c
    event_id = session.execute(
        select(table.event_id)
        .where(*_runs(), table.action == action_of(check), table.outcome == PASSED)
        .order_by(table.time_us.desc(), table.event_id.desc())
        .limit(1)
    ).scalar_one_or_none()
    if event_id is None:
        return None
    payload = session.execute(
        select(RECORDS.c.system_payload).where(RECORDS.c.event_id == event_id)
    ).scalar_one_or_none()
    details = json.loads(payload or "{}").get("details", {})
    return {str(key): str(value) for key, value in details.items()}


def verification_state(session: Session) -> tuple[dict[str, int], dict[str, float]]:
    """Failed runs per check, and the Unix time of the last passed run per check that has one."""
    table = ACCESS.c
    failures = dict.fromkeys(CHECKS, 0)
    successes: dict[str, float] = {}
    rows = session.execute(
        select(table.action, table.outcome, func.count(), func.max(table.time_us))
        .where(*_runs(), table.outcome.in_([PASSED, FAILED]))
        .group_by(table.action, table.outcome)
    )
    for action, outcome, count, newest_us in rows:
        check = str(action).removeprefix("verification.")
        if outcome == FAILED:
            failures[check] = int(count)
        else:
            successes[check] = int(newest_us) / 1_000_000
    return failures, successes


class VerificationCollector(Collector):
    """The two metric families, read from the index on a scrape; the last values while it cannot be."""

    def __init__(self, sessions: Callable[[], Session], *, cache_seconds: float = CACHE_SECONDS) -> None:
        self._sessions = sessions
        self._cache_seconds = cache_seconds
        self._lock = threading.Lock()
        self._read_at = float("-inf")
        self._state: tuple[dict[str, int], dict[str, float]] = (dict.fromkeys(CHECKS, 0), {})

    def _current(self) -> tuple[dict[str, int], dict[str, float]]:
        with self._lock:
            if time.monotonic() - self._read_at >= self._cache_seconds:
                try:
                    with self._sessions() as session:
                        self._state = verification_state(session)
                    self._read_at = time.monotonic()
                except Exception as error:  # the store is down: say so in the log, keep the last values
                    log.warning("verification metrics not refreshed", extra={"error": type(error).__name__})
            return self._state

    def collect(self) -> Iterator[Metric]:
        failures, successes = self._current()
        failed = CounterMetricFamily(
            "awareness_verification_failures",
            "Scheduled verification runs that failed, by check (log, audit), from the access records",
            labels=["check"],
        )
        passed = GaugeMetricFamily(
            "awareness_verification_last_success_timestamp_seconds",
            "Unix time of the last scheduled verification run that passed, by check (log, audit)",
            labels=["check"],
        )
        for check in CHECKS:
            failed.add_metric([check], failures.get(check, 0))
            if check in successes:
                passed.add_metric([check], successes[check])
        yield failed
        yield passed

    def describe(self) -> Iterator[Metric]:
        # No DB read when the collector is registered (auto_describe would call collect()).
        return iter(())
