"""The analytics feed: the facts of stored events go to the analytics service, at least once.

An outbox in ``event_metadata.analytics_state``: every client event is stored PENDING, and a poller
sends the pending ones, oldest first, in batches, once their score and evaluation are in (or after
``unenriched_after_seconds``, so that a peer which stays down does not hold the counts back). A fact
carries the event's type, time, pseudonym, severity, department, risk, violations and dimensions:
never the subject, the summary or a personal detail. Analytics folds each event id once, so a batch
sent twice (a replica that stopped before marking it, two replicas at once) counts once.

Erasure: ForgetSubject marks the subject's pending events SKIPPED and tells analytics to forget the
pseudonym (``forget``), failing the call while analytics cannot be told, so that gdpr retries it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import grpc
from awareness.analytics.v1 import analytics_pb2, analytics_pb2_grpc
from sqlalchemy.orm import Session, sessionmaker

from services.ingest import repository
from services.ingest.domain.records import decode_dimensions
from services.runtime.clients import call_peer
from services.runtime.db import run_db, transaction
from services.runtime.errors import AwarenessError
from services.runtime.metrics import ServiceMetrics
from services.runtime.timestamps import timestamp_from_us

log = logging.getLogger("awareness.ingest.analytics")

# RecordEvents takes at most 1000 facts; smaller batches keep each fold transaction short.
MAX_FACTS = 500


@dataclass(frozen=True, slots=True)
class AnalyticsFeedSettings:
    enabled: bool = True
    interval_seconds: float = 0.5
    # Events younger than this may still be in enrichment's in-memory queue.
    settle_seconds: float = 1.0
    # After this long without a score or an evaluation, an event's fact is sent without them.
    unenriched_after_seconds: float = 300.0
    backoff_seconds: float = 5.0


def event_fact(row: repository.AnalyticsRow) -> analytics_pb2.EventFact:
    """The fact analytics folds in: no subject, summary or personal detail."""
    fact = analytics_pb2.EventFact(
        event_id=row.event_id,
        type=row.type,
        occurred_at=timestamp_from_us(row.occurred_at_us),
        subject_pseudonym=row.subject_pseudonym,
        severity=row.severity,
        department=row.department,
        scored=row.scoring_state == repository.SCORING_SCORED and row.risk_score is not None,
        risk_score=row.risk_score or 0.0,
    )
    if row.dimensions:
        fact.dimensions.update(decode_dimensions(row.dimensions))
    for violation in json.loads(row.violations or "[]"):
        fact.violations.add(
            policy=str(violation.get("policy", "")), severity=int(violation.get("severity", 0))
        )
    return fact


class AnalyticsFeed:
    def __init__(
        self,
        *,
        sessions: sessionmaker[Session],
        analytics: Callable[[], grpc.aio.Channel],
        settings: AnalyticsFeedSettings,
        gate: repository.WriteGate,
        metrics: ServiceMetrics | None = None,
        wait_for_enrichment: bool = True,
    ) -> None:
        self._sessions = sessions
        self._channel = analytics
        self.settings = settings
        self._gate = gate
        self._wait_for_enrichment = wait_for_enrichment
        self._last_warning = 0.0
        self._metrics = metrics
        if metrics is not None:
            self._sent = metrics.counter(
                "analytics_facts_sent_total", "Event facts analytics acknowledged", ["outcome"]
            )
            for outcome in ("folded", "duplicate", "excluded"):
                self._sent.labels(outcome)
            self._failures = metrics.counter(
                "analytics_feed_failures_total", "RecordEvents calls that failed (the events stay pending)"
            )

    def _stub(self) -> analytics_pb2_grpc.AnalyticsServiceStub:
        return analytics_pb2_grpc.AnalyticsServiceStub(self._channel())

    async def run(self) -> None:
        while True:
            try:
                sent = await self.send_once()
            except asyncio.CancelledError:
                raise
            except AwarenessError as error:
                self._failed(error)
                await asyncio.sleep(self.settings.backoff_seconds)
                continue
            except Exception:
                log.exception("analytics feed round failed; the events stay pending")
                await asyncio.sleep(self.settings.backoff_seconds)
                continue
            if sent < MAX_FACTS:  # caught up: wait for more
                await asyncio.sleep(self.settings.interval_seconds)

    async def send_once(self) -> int:
        """Send one batch of pending facts; returns how many were sent. AwarenessError when
        analytics did not take them (they stay pending)."""
        now_us = time.time_ns() // 1000
        settle_us = int(self.settings.settle_seconds * 1_000_000)
        rows = await run_db(
            self._pending,
            enriched_before_us=now_us - settle_us,
            unenriched_before_us=now_us
            - (
                int(self.settings.unenriched_after_seconds * 1_000_000)
                if self._wait_for_enrichment
                else settle_us
            ),
        )
        if not rows:
            return 0
        request = analytics_pb2.RecordEventsRequest(facts=[event_fact(row) for row in rows])
        stub = self._stub()
        response = await call_peer(stub.RecordEvents(request), target="analytics")
        await run_db(self._mark, [row.event_id for row in rows])
        if self._metrics is not None:
            self._sent.labels("folded").inc(response.folded)
            self._sent.labels("duplicate").inc(response.duplicates)
            self._sent.labels("excluded").inc(response.excluded)
        return len(rows)

    async def forget(self, pseudonym: str) -> None:
        """Tell analytics to forget an erased subject (AwarenessError while it cannot be told)."""
        if not self.settings.enabled:
            return
        request = analytics_pb2.ForgetSubjectsRequest(subject_pseudonyms=[pseudonym])
        await call_peer(self._stub().ForgetSubjects(request), target="analytics")

    def _pending(
        self, *, enriched_before_us: int, unenriched_before_us: int
    ) -> list[repository.AnalyticsRow]:
        with repository.reading(self._sessions) as session:
            return repository.analytics_pending(
                session,
                enriched_before_us=enriched_before_us,
                unenriched_before_us=unenriched_before_us,
                limit=MAX_FACTS,
            )

    def _mark(self, event_ids: Sequence[str]) -> None:
        with self._gate, transaction(self._sessions) as session:
            repository.set_analytics_state(session, event_ids=event_ids, state=repository.ANALYTICS_SENT)

    def _failed(self, error: AwarenessError) -> None:
        if self._metrics is not None:
            self._failures.inc()
        now = time.monotonic()
        if now - self._last_warning > 60:
            self._last_warning = now
            reason = error.metadata.get("code", type(error).__name__)
            log.warning("analytics unavailable; events stay pending", extra={"reason": reason})


__all__ = ["AnalyticsFeed", "AnalyticsFeedSettings", "event_fact"]
