"""Scoring and policy evaluation after append, off the acknowledgement path, and the reconciler.

New events are queued in memory after their commit; a worker sends them to scoring (with the
subject's history aggregates) and policy (with the plaintext details, held only in memory) through
the guarded channels and writes the results into ``event_metadata``. A peer that fails is left
alone for a short back-off; its events stay PENDING, and the reconciler back-fills PENDING rows
later (decrypting details for policy with keys from gdpr; an erased subject's event can no longer
be evaluated and is marked FAILED with a note).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple, TypeVar

import grpc
from awareness.policy.v1 import policy_pb2, policy_pb2_grpc
from awareness.scoring.v1 import scoring_pb2_grpc
from awareness.scoring.v1.scoring_pb2 import ScoreEventsRequest
from sqlalchemy.orm import Session, sessionmaker

from services.evidence.envelope import SealedPersonal, open_personal
from services.evidence.errors import TamperedRecordError
from services.ingest import aggregates, repository
from services.ingest.convert import scoring_input
from services.ingest.domain.history import SubjectHistory
from services.ingest.keys import ERASED, SubjectKey, SubjectKeys
from services.ingest.models import EventMetadata, EventRecord
from services.ingest.repository import to_us
from services.ingest.service.append import EnrichmentItem
from services.runtime.clients import call_peer
from services.runtime.db import run_db, transaction
from services.runtime.errors import AwarenessError
from services.runtime.metrics import ServiceMetrics
from services.runtime.timestamps import timestamp_from_us
from services.runtime.tracing import batch_span

log = logging.getLogger("awareness.ingest.enrichment")
T = TypeVar("T")

MAX_PEER_BATCH = 500
PEERS = ("scoring", "policy")


@dataclass(frozen=True, slots=True)
class EnrichmentSettings:
    queue_limit: int = 200_000
    peer_backoff_seconds: float = 5.0
    reconcile_interval_seconds: float = 30.0
    # Rows younger than this are still in the in-memory queue; the reconciler leaves them alone.
    reconcile_settle_seconds: float = 10.0
    reconcile_batch: int = 500
    # How long the worker lets new events gather before it sends a batch: single appends arrive one
    # at a time, and each batch costs one history query, one call to each peer and one transaction
    # whatever its size. Enrichment is off the acknowledgement path, so the wait costs no caller.
    batch_linger_seconds: float = 0.1


class _Batch(NamedTuple):
    """One enrichment round: its events, their subject histories, and the metadata changes that
    both peers' answers fill in (per event id), stamped now_us."""

    items: Sequence[EnrichmentItem]
    histories: dict[str, SubjectHistory]
    changes: dict[str, dict[str, Any]]
    now_us: int


class _Peer:
    """A peer skipped for a back-off period after a failure (its breaker does the rest)."""

    def __init__(self, name: str, backoff: float) -> None:
        self.name = name
        self._backoff = backoff
        self._down_until = 0.0
        self._last_warning = 0.0

    def available(self) -> bool:
        return time.monotonic() >= self._down_until

    def failed(self, error: AwarenessError) -> None:
        now = time.monotonic()
        self._down_until = now + self._backoff
        if now - self._last_warning > 60:
            self._last_warning = now
            # The peer's status code (services.runtime.clients.peer_error), else what refused the call.
            reason = error.metadata.get("code", type(error).__name__)
            log.warning(
                "enrichment peer failed; events stay pending", extra={"peer": self.name, "reason": reason}
            )


class Enricher:
    def __init__(
        self,
        *,
        sessions: sessionmaker[Session],
        keys: SubjectKeys,
        scoring: Callable[[], grpc.aio.Channel],
        policy: Callable[[], grpc.aio.Channel],
        settings: EnrichmentSettings,
        gate: repository.WriteGate,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        self._sessions = sessions
        self._gate = gate
        self._keys = keys
        self._scoring_channel = scoring
        self._policy_channel = policy
        self.settings = settings
        self._queue: asyncio.Queue[EnrichmentItem] = asyncio.Queue(maxsize=settings.queue_limit)
        # Subjects erased since the current batch was taken from the queue.
        self._forgotten: set[str] = set()
        self._scoring_peer = _Peer("scoring", settings.peer_backoff_seconds)
        self._policy_peer = _Peer("policy", settings.peer_backoff_seconds)
        self._metrics = metrics
        if metrics is not None:
            self._dropped = metrics.counter(
                "enrichment_dropped_total", "Events not queued for enrichment (queue full); reconciled later"
            )
            self._enriched = metrics.counter(
                "enrichment_results_total", "Enrichment outcomes", ["peer", "state"]
            )
            self._peer_failures = metrics.counter(
                "enrichment_peer_failures_total",
                "Scoring and policy calls of enrichment that failed (the fields stay pending)",
                ["peer"],
            )
            self._backfills = metrics.counter(
                "reconciler_backfills_total",
                "Pending scores and evaluations filled in by the reconciler",
                ["peer"],
            )
            for peer in PEERS:
                self._backfills.labels(peer)
                self._peer_failures.labels(peer)
            metrics.gauge(
                "enrichment_queue_depth", "Committed events waiting in memory for scoring and policy"
            ).set_function(self._queue.qsize)

    def forget(self, pseudonym: str) -> int:
        """Drop the waiting events of an erased subject: their details are plaintext in memory.

        A batch already taken from the queue skips them too (see `run` and `enrich`). Returns how
        many queued events were dropped.
        """
        kept: list[EnrichmentItem] = []
        dropped = 0
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if item.pseudonym == pseudonym:
                dropped += 1
            else:
                kept.append(item)
        for item in kept:
            self._queue.put_nowait(item)
        self._forgotten.add(pseudonym)
        return dropped

    async def _ask(self, peer: _Peer, call: Callable[[], Awaitable[T]]) -> T | None:
        """The peer's answer; None when the call failed (the peer is skipped for a while, and the
        fields it fills stay pending for the reconciler)."""
        try:
            return await call_peer(call(), target=peer.name)
        except AwarenessError as error:
            peer.failed(error)
            if self._metrics is not None:
                self._peer_failures.labels(peer.name).inc()
            return None

    def submit(self, items: Sequence[EnrichmentItem]) -> None:
        for item in items:
            try:
                self._queue.put_nowait(item)
            except asyncio.QueueFull:
                if self._metrics is not None:
                    self._dropped.inc()

    async def run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            self._forgotten.clear()  # earlier erasures already left the queue (see forget)
            if self.settings.batch_linger_seconds > 0 and self._queue.qsize() < MAX_PEER_BATCH - 1:
                await asyncio.sleep(self.settings.batch_linger_seconds)
            while len(batch) < MAX_PEER_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self.enrich(batch, evaluate=True, in_memory=True)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("enrichment batch failed; the reconciler will retry it")

    async def reconcile_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.reconcile_interval_seconds)
            try:
                await self.reconcile_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reconciliation round failed")

    async def enrich(
        self,
        items: Sequence[EnrichmentItem],
        *,
        evaluate: bool,
        score: bool = True,
        in_memory: bool = False,
    ) -> dict[str, int]:
        """Score and evaluate `items` (evaluation needs their details) and store the results.

        `in_memory`: the items come from the queue, with details kept in plaintext since the
        append; those of a subject erased meanwhile are dropped (the reconciler scores them later
        from the log, where their details can no longer be read).

        Returns how many results each peer gave. The batch span is current during the peer calls, so
        scoring's and policy's spans join the appending request's trace (or the batch links to several).
        """
        want_scoring = score and self._scoring_peer.available()
        want_policy = evaluate and self._policy_peer.available()
        if in_memory:
            items = [item for item in items if item.pseudonym not in self._forgotten]
        if not items or not (want_scoring or want_policy):
            return {}
        with batch_span(
            "ingest.enrich",
            service="ingest",
            origins=(item.origin for item in items),
            attributes={"awareness.events": len(items)},
        ):
            histories = await run_db(self._histories, items)
            if in_memory:  # an erasure may have arrived during the query
                items = [item for item in items if item.pseudonym not in self._forgotten]
                if not items:
                    return {}
            batch = _Batch(items, histories, changes={}, now_us=to_us_now())
            # Both peers at once: each fills its own columns of `changes` when its answer arrives
            # (a task group, so an unexpected error in one cancels the other).
            calls: dict[str, asyncio.Task[int]] = {}
            async with asyncio.TaskGroup() as group:
                if want_scoring:
                    calls["scoring"] = group.create_task(self._score(batch))
                if want_policy:
                    calls["policy"] = group.create_task(self._evaluate(batch))
            results = {peer: task.result() for peer, task in calls.items()}
            if batch.changes:
                changed = [{"event_id": key, **values} for key, values in batch.changes.items()]
                await run_db(self._store, changed)
        return results

    def _histories(self, items: Sequence[EnrichmentItem]) -> dict[str, SubjectHistory]:
        with repository.reading(self._sessions) as session:
            return aggregates.histories(
                session,
                queries=[
                    aggregates.HistoryQuery(i.event_id, i.pseudonym, i.occurred_at_us, i.source)
                    for i in items
                ],
            )

    def _store(self, changes: list[dict[str, Any]]) -> None:
        with self._gate, transaction(self._sessions) as session:
            repository.update_metadata(session, changes=changes)

    async def _score(self, batch: _Batch) -> int:
        items, histories, changes, now_us = batch
        stub = scoring_pb2_grpc.ScoringServiceStub(self._scoring_channel())
        request = ScoreEventsRequest(
            inputs=[
                scoring_input(
                    event_id=i.event_id,
                    pseudonym=i.pseudonym,
                    event_type=i.type,
                    source=i.source,
                    severity=i.severity,
                    occurred_at_us=i.occurred_at_us,
                    summary_length=i.summary_length,
                    detail_count=i.detail_count,
                    history=histories[i.event_id],
                )
                for i in items
            ]
        )
        response = await self._ask(self._scoring_peer, lambda: stub.ScoreEvents(request))
        if response is None:
            return 0
        for result in response.results:
            if result.skipped:
                values: dict[str, Any] = {
                    "scoring_state": repository.SCORING_SKIPPED,
                    "scoring_note": result.skip_reason or "skipped by the scoring service",
                }
            else:
                values = {
                    "scoring_state": repository.SCORING_SCORED,
                    "risk_score": result.score,
                    "risk_level": int(result.level),
                    "model_version": result.model_version,
                    "scoring_note": "",
                    "features": json.dumps(dict(result.features), sort_keys=True),
                }
            changes.setdefault(result.event_id, {}).update(values, update_time_us=now_us)
            if self._metrics is not None:
                self._enriched.labels("scoring", "skipped" if result.skipped else "scored").inc()
        return len(response.results)

    async def _evaluate(self, batch: _Batch) -> int:
        items, histories, changes, now_us = batch
        stub = policy_pb2_grpc.PolicyServiceStub(self._policy_channel())
        request = policy_pb2.EvaluateEventsRequest(
            events=[
                policy_pb2.EvaluationInput(
                    event_id=i.event_id,
                    type=i.type,
                    source=i.source,
                    severity=i.severity,  # type: ignore[arg-type]
                    occurred_at=timestamp_from_us(i.occurred_at_us),
                    details=i.details,
                    facts=histories[i.event_id].as_facts(),
                )
                for i in items
            ]
        )
        response = await self._ask(self._policy_peer, lambda: stub.EvaluateEvents(request))
        if response is None:
            return 0
        for result in response.results:
            violations = [
                {"policy": v.policy, "version": v.version, "severity": int(v.severity), "title": v.title}
                for v in result.violations
            ]
            note = "; ".join(f"{e.policy} v{e.version}: {e.message}" for e in result.errors)
            changes.setdefault(result.event_id, {}).update(
                evaluation_state=repository.EVALUATION_EVALUATED,
                violations=json.dumps(violations, sort_keys=True),
                violation_count=len(violations),
                evaluation_note=note[:4000],
                update_time_us=now_us,
            )
            if self._metrics is not None:
                self._enriched.labels("policy", "evaluated").inc()
        return len(response.results)

    async def reconcile_once(self) -> int:
        """Back-fill PENDING metadata rows; returns how many rows were looked at."""
        if not (self._scoring_peer.available() or self._policy_peer.available()):
            return 0
        cutoff = to_us_now() - int(self.settings.reconcile_settle_seconds * 1_000_000)

        def load() -> tuple[list[EventMetadata], dict[str, EventRecord]]:
            with self._sessions() as session:
                rows = repository.pending_metadata(
                    session, received_before_us=cutoff, limit=self.settings.reconcile_batch
                )
                need_details = [
                    m.event_id for m in rows if m.evaluation_state == repository.EVALUATION_PENDING
                ]
                return rows, repository.records_by_ids(session, event_ids=need_details)

        rows, records = await run_db(load)
        if not rows:
            return 0
        # A round of its own: the enrichment batches it sends are its children.
        with batch_span(
            "ingest.reconcile", service="ingest", origins=(), attributes={"awareness.events": len(rows)}
        ):
            await self._backfill(rows, records)
        return len(rows)

    async def _backfill(self, rows: list[EventMetadata], records: dict[str, EventRecord]) -> None:
        items = {
            m.event_id: EnrichmentItem(
                event_id=m.event_id,
                pseudonym=m.subject_pseudonym,
                type=m.type,
                source=m.source,
                severity=m.severity,
                occurred_at_us=m.occurred_at_us,
                summary_length=m.summary_length,
                detail_count=m.detail_count,
                details={},
            )
            for m in rows
        }
        to_score = [items[m.event_id] for m in rows if m.scoring_state == repository.SCORING_PENDING]
        to_evaluate, unreadable = await self._with_details(
            [items[m.event_id] for m in rows if m.evaluation_state == repository.EVALUATION_PENDING], records
        )
        if unreadable:
            now_us = to_us_now()
            await run_db(
                self._store,
                [
                    {
                        "event_id": event_id,
                        "evaluation_state": repository.EVALUATION_FAILED,
                        "evaluation_note": note,
                        "update_time_us": now_us,
                    }
                    for event_id, note in unreadable.items()
                ],
            )
        filled: dict[str, int] = {}
        for start in range(0, len(to_score), MAX_PEER_BATCH):
            done = await self.enrich(to_score[start : start + MAX_PEER_BATCH], evaluate=False)
            filled["scoring"] = filled.get("scoring", 0) + done.get("scoring", 0)
        for start in range(0, len(to_evaluate), MAX_PEER_BATCH):
            done = await self.enrich(to_evaluate[start : start + MAX_PEER_BATCH], evaluate=True, score=False)
            filled["policy"] = filled.get("policy", 0) + done.get("policy", 0)
        if self._metrics is not None:
            for peer, count in filled.items():
                self._backfills.labels(peer).inc(count)

    async def _with_details(
        self, items: list[EnrichmentItem], records: dict[str, EventRecord]
    ) -> tuple[list[EnrichmentItem], dict[str, str]]:
        """Items with their details decrypted, and a note for each that can never be evaluated."""
        if not items or not self._policy_peer.available():
            return [], {}
        try:
            keys = await self._keys.unwrap(
                [(records[i.event_id].subject_pseudonym, records[i.event_id].key_period) for i in items]
            )
        except AwarenessError:
            return [], {}  # gdpr unavailable: try again next round
        ready: list[EnrichmentItem] = []
        unreadable: dict[str, str] = {}
        for item in items:
            record = records[item.event_id]
            key = keys.get((record.subject_pseudonym, record.key_period))
            if key == ERASED or not isinstance(key, SubjectKey):
                unreadable[item.event_id] = "the subject was erased before the event could be evaluated"
                continue
            try:
                personal = open_personal(
                    key=key.data_key,
                    key_id=record.key_id,
                    event_id=record.event_id,
                    sealed=SealedPersonal(nonce=bytes(record.nonce), ciphertext=bytes(record.ciphertext)),
                )
            except TamperedRecordError:
                unreadable[item.event_id] = "the stored record failed authentication"
                continue
            ready.append(replace(item, details=personal.details))
        return ready, unreadable


def to_us_now() -> int:
    return time.time_ns() // 1000


__all__ = ["Enricher", "EnrichmentItem", "EnrichmentSettings", "to_us"]
