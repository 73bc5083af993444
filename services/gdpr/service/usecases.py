"""The gdpr use cases as the servicer calls them: one method per RPC, sagas across gdpr and ingest.

Each method takes domain values (already validated by the transport) and returns domain values; the
blocking units of work run in ``GdprStore`` (``transactions``) through ``run_db``. The erasure saga is:
one transaction that shreds the keys and records the erasure, then ingest is told (ForgetSubject, then
the erasure event appended); a step that fails is retried by ``retry_pending_erasures`` (app.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from awareness.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from google.protobuf.json_format import MessageToDict
from prometheus_client import Counter, Gauge, Histogram

from services.evidence.envelope import SealedPersonal, is_sealed_note, open_note, open_personal
from services.evidence.errors import TamperedRecordError
from services.gdpr.domain.consent import ConsentAction, current_states
from services.gdpr.domain.directory import DirectoryEntry
from services.gdpr.domain.export import aiter_export_json
from services.gdpr.models import (
    AuditRecordRow,
    ConsentRecordRow,
    DirectoryEntryRow,
    ErasureRecordRow,
    Subject,
)
from services.gdpr.service.transactions import (
    DirectoryImportResult,
    GdprStore,
    IssuedKey,
    IssueResult,
    KeyRequest,
    RetentionReport,
    RotationResult,
    RuleView,
    UnwrappedKey,
    erasure_log_event_id,
)
from services.runtime.batching import Coalescer
from services.runtime.clients import call_peer
from services.runtime.db import run_db
from services.runtime.errors import AlreadyExistsError, AwarenessError, NotFoundError
from services.runtime.metrics import ServiceMetrics
from services.runtime.timestamps import from_timestamp, to_timestamp

log = logging.getLogger("awareness.gdpr")

EXPORT_PAGE_SIZE = 200
ERASURE_EVENT_TYPE = "gdpr.erasure"
ERASURE_EVENT_SOURCE = "gdpr"
# After retention shreds keys, ingest is asked to drop each affected pseudonym's cached keys: at most this
# many ForgetSubject calls at a time, and ApplyRetention waits at most this long for them before answering
# (the rest go on in the background; ingest's cache expires within its TTL anyway).
RETENTION_FORGET_CONCURRENCY = 8
RETENTION_FORGET_WAIT_SECONDS = 3.0
# The most key lookups one issuance transaction serves (a single call may bring up to 1,000).
KEY_ISSUANCE_BATCH = 2000
_SEVERITY_NAMES = {
    value: name.removeprefix("SEVERITY_").lower() for name, value in ingest_pb2.Severity.items()
}

IngestStubFactory = Callable[[], ingest_pb2_grpc.IngestServiceStub]


@dataclass
class GdprMetrics:
    erasures: Counter
    exports: Counter
    keys_issued: Counter
    data_keys_created: Counter
    retention_keys_shredded: Counter
    consent_changes: Counter
    kek_rotations: Counter
    erasure_log_failures: Counter
    erasure_log_pending: Gauge
    retention_forget_failures: Counter
    key_issuance_batch: Histogram
    directory_changes: Counter

    @classmethod
    def create(cls, metrics: ServiceMetrics) -> GdprMetrics:
        return cls(
            erasures=metrics.counter("erasures_total", "Data subjects erased (crypto-shredded)"),
            exports=metrics.counter("exports_total", "Data subject exports started"),
            keys_issued=metrics.counter("keys_issued_total", "Subject data keys handed to ingest"),
            data_keys_created=metrics.counter("data_keys_created_total", "Per-period data keys created"),
            retention_keys_shredded=metrics.counter(
                "retention_keys_shredded_total", "Data keys shredded because their retention expired"
            ),
            consent_changes=metrics.counter(
                "consent_changes_total", "Consent grants and withdrawals", ["purpose", "action"]
            ),
            kek_rotations=metrics.counter("kek_rotations_total", "Key-encryption key rotations"),
            key_issuance_batch=metrics.histogram(
                "key_issuance_batch_lookups",
                "Key lookups served per store transaction (concurrent GetSubjectKeys calls share one)",
                buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500),
            ),
            erasure_log_failures=metrics.counter(
                "erasure_log_failures_total", "Failed attempts to append an erasure record to the event log"
            ),
            erasure_log_pending=metrics.gauge(
                "erasure_log_pending", "Erasures whose event-log append is still pending"
            ),
            retention_forget_failures=metrics.counter(
                "retention_forget_failures_total",
                "Pseudonyms whose shredded keys ingest could not be told to drop from its cache after "
                "retention (they expire within the cache TTL)",
            ),
            directory_changes=metrics.counter(
                "directory_changes_total",
                "Directory entries changed by imports (created, updated, removed)",
                ["change"],
            ),
        )


def erasure_event(record: ErasureRecordRow) -> ingest_pb2.Event:
    """The log event recording an erasure: no personal data, deterministic for idempotent retries."""
    erase_time = to_timestamp(record.erase_time)
    return ingest_pb2.Event(
        event_id=erasure_log_event_id(record.erasure_id),
        type=ERASURE_EVENT_TYPE,
        source=ERASURE_EVENT_SOURCE,
        subject_pseudonym=record.pseudonym,
        occurred_at=erase_time,
        severity=ingest_pb2.SEVERITY_INFO,
        details={
            "erasure": f"erasures/{record.erasure_id}",
            "erase_time": record.erase_time.astimezone(UTC).isoformat(timespec="microseconds"),
            "events_affected": str(record.events_affected or 0),
            "keys_shredded": str(record.keys_shredded),
        },
    )


def export_event(record: ingest_pb2.SubjectRecord, key: tuple[str, bytes] | None) -> dict[str, Any]:
    """One event of an Art. 20 export: the stored fields, the decrypted personal ones, the metadata."""
    document: dict[str, Any] = {
        "event_id": record.event_id,
        "type": record.type,
        "source": record.source,
        "occurred_at": from_timestamp(record.occurred_at),
        "receive_time": from_timestamp(record.receive_time),
        "severity": _SEVERITY_NAMES.get(record.severity, "unspecified"),
        "key_period": record.key_period,
        "receipt": {
            "leaf_index": record.leaf_index if record.HasField("leaf_index") else None,
            "leaf_hash": record.leaf_hash.hex(),
        },
    }
    if not record.ciphertext:
        document["personal_data"] = "none"
    elif key is None:
        document["personal_data"] = "erased"
    else:
        key_id, data_key = key
        try:
            fields = open_personal(
                key=data_key,
                key_id=key_id,
                event_id=record.event_id,
                sealed=SealedPersonal(nonce=record.nonce, ciphertext=record.ciphertext),
            )
        except TamperedRecordError:
            document["personal_data"] = "unreadable"
        else:
            document.update(
                personal_data="available",
                subject=fields.subject,
                summary=fields.summary,
                details=fields.details,
            )
    document["metadata"] = MessageToDict(record.metadata, preserving_proto_field_name=True)
    note = record.metadata.label_note
    if note:
        # Sealed under the event's data key: exported opened while the key lives, else left out.
        document["metadata"].pop("label_note", None)
        if key is not None and not is_sealed_note(note):
            document["metadata"]["label_note"] = note  # written before notes were sealed
        elif key is not None:
            with contextlib.suppress(TamperedRecordError):  # unreadable: left out, like the fields
                document["metadata"]["label_note"] = open_note(
                    key=key[1], key_id=key[0], event_id=record.event_id, stored=note
                )
    return document


def export_directory(entry: DirectoryEntryRow | None) -> dict[str, Any] | None:
    """The person's directory entry in their export: the department, and whether a manager is set (the
    manager is another person: their pseudonym is not the subject's data)."""
    if entry is None:
        return None
    return {
        "department": entry.department,
        "manager_set": entry.manager_pseudonym is not None,
        "updated_at": entry.updated_at,
    }


def _failure_code(error: AwarenessError) -> str:
    """What is recorded and logged of a failed call to ingest: its gRPC code, else our reason."""
    return error.metadata.get("code") or error.reason


class GdprUseCases:
    def __init__(self, *, store: GdprStore, ingest: IngestStubFactory, metrics: GdprMetrics) -> None:
        self.store = store
        self._ingest = ingest
        self._metrics = metrics
        self._finishing: dict[str, asyncio.Lock] = {}
        self.forget_concurrency = RETENTION_FORGET_CONCURRENCY
        self.forget_wait_seconds = RETENTION_FORGET_WAIT_SECONDS
        # Strong references: the event loop keeps only weak ones to running tasks.
        self._forgetting: set[asyncio.Task[int]] = set()
        self._issuance: Coalescer[KeyRequest, IssuedKey] = Coalescer(
            self._issue_batch, max_items=KEY_ISSUANCE_BATCH
        )

    # --- keys ----------------------------------------------------------------------------------------

    async def issue_keys(self, requests: Sequence[KeyRequest]) -> list[IssuedKey]:
        """Concurrent callers' requests share one store transaction (see ``_issue_batch``)."""
        return await self._issuance.submit(requests)

    async def _issue_batch(self, requests: list[KeyRequest]) -> list[IssuedKey]:
        # One read (and, for first sightings, one write under the store's lock) for every caller
        # waiting: key issuance costs a transaction per batch, not per event.
        result: IssueResult = await run_db(self.store.issue_keys, requests)
        self._metrics.keys_issued.inc(len(result.keys))
        self._metrics.data_keys_created.inc(result.keys_created)
        self._metrics.key_issuance_batch.observe(len(requests))
        return result.keys

    async def unwrap_keys(self, refs: Sequence[tuple[str, str]]) -> list[UnwrappedKey]:
        return await run_db(self.store.unwrap_keys, refs)

    async def find_subject(self, identifier: str) -> Subject:
        """A read of the HMAC index only: an unknown or erased person is SUBJECT_NOT_FOUND."""
        return await run_db(self.store.find_subject, identifier)

    def subject_ref(self, identifier: str) -> str:
        """The identifier's HMAC (hex): what page tokens and logs may hold instead of the identifier."""
        return self.store.lookup(identifier).hex()

    # --- erasure -------------------------------------------------------------------------------------

    async def erase_subject(
        self, *, identifier: str, actor: str, reason: str, request_id: str
    ) -> ErasureRecordRow:
        """Shred and record in one transaction, then tell ingest; a replay returns the first record."""
        outcome = await run_db(
            self.store.erase, identifier=identifier, actor=actor, reason=reason, request_id=request_id
        )
        if not outcome.replayed:
            self._metrics.erasures.inc()
            log.info("subject erased", extra={"erasure_id": outcome.record.erasure_id})
        record = outcome.record
        if record.log_event_id is None:
            # A record this call just wrote is current: no need to read it back before finishing.
            record = await self.finish_erasure(record, reread=outcome.replayed)
        return record

    async def finish_erasure(self, record: ErasureRecordRow, *, reread: bool = True) -> ErasureRecordRow:
        """Tell ingest (drop cached keys, count events) and append the erasure event; retried until done.

        Failures are recorded, not raised: the keys are already gone, which is what the erasure is.
        Every step is idempotent (write-once count, deterministic event id), so a duplicate run by the
        retrier is harmless.
        """
        lock = self._finishing.setdefault(record.erasure_id, asyncio.Lock())
        try:
            async with lock:
                return await self._finish_erasure_locked(record, reread=reread)
        finally:
            if not lock.locked():
                self._finishing.pop(record.erasure_id, None)

    async def _finish_erasure_locked(self, record: ErasureRecordRow, *, reread: bool) -> ErasureRecordRow:
        if reread:
            current: ErasureRecordRow | None = await run_db(self.store.get_erasure, record.erasure_id)
            record = current or record
        if record.log_event_id is not None:
            return record
        stub = self._ingest()
        try:
            if record.events_affected is None:
                forgotten = await call_peer(
                    stub.ForgetSubject(ingest_pb2.ForgetSubjectRequest(pseudonym=record.pseudonym)),
                    target="ingest",
                )
                record = await run_db(
                    self.store.set_events_affected,
                    erasure_id=record.erasure_id,
                    events_affected=forgotten.event_count,
                )
            event = erasure_event(record)
            try:
                await call_peer(stub.AppendEvent(ingest_pb2.AppendEventRequest(event=event)), target="ingest")
            except AlreadyExistsError:
                # Already in the log under its deterministic id: an earlier attempt got through.
                log.warning("erasure event already in the log", extra={"erasure_id": record.erasure_id})
            return await run_db(
                self.store.set_log_event_id, erasure_id=record.erasure_id, log_event_id=event.event_id
            )
        except AwarenessError as exc:  # ingest's answer (by the runtime's peer rule) or an open breaker
            code = _failure_code(exc)
            attempts = await run_db(self.store.record_log_failure, erasure_id=record.erasure_id, error=code)
            self._metrics.erasure_log_failures.inc()
            log.warning(
                "erasure log append pending; will retry",
                extra={"erasure_id": record.erasure_id, "code": code, "attempts": attempts},
            )
            return record

    async def retry_pending_erasures(self) -> int:
        """One pass of the background retrier; returns how many erasures are still pending."""
        pending = await run_db(self.store.pending_erasures)
        still_pending = 0
        for record in pending:
            finished = await self.finish_erasure(record)
            still_pending += finished.log_event_id is None
        self._metrics.erasure_log_pending.set(still_pending)
        return still_pending

    async def get_erasure(self, erasure_id: str) -> ErasureRecordRow:
        record = await run_db(self.store.get_erasure, erasure_id)
        if record is None:
            raise NotFoundError(f"erasures/{erasure_id} does not exist", reason="ERASURE_NOT_FOUND")
        return record

    async def erasure_page(
        self, *, before: tuple[datetime, str] | None, limit: int
    ) -> list[ErasureRecordRow]:
        return await run_db(self.store.erasure_page, before=before, limit=limit)

    # --- export --------------------------------------------------------------------------------------

    async def export_subject(
        self, *, identifier: str, subject: Subject, actor: str, reason: str
    ) -> AsyncIterator[bytes]:
        """The Art. 15/20 export of ``subject`` (found by :meth:`find_subject` from ``identifier``) as
        JSON text chunks, streamed page by page from ingest."""
        pseudonym = subject.pseudonym
        stub = self._ingest()
        # The first page is fetched before anything is sent, so "ingest unavailable" is a clean error.
        first_page = await call_peer(
            stub.ListSubjectRecords(
                ingest_pb2.ListSubjectRecordsRequest(pseudonym=pseudonym, page_size=EXPORT_PAGE_SIZE)
            ),
            target="ingest",
        )
        consents = await run_db(self.store.consent_events, pseudonym)
        directory = await run_db(self.store.directory_entry, pseudonym)
        await run_db(self.store.record_export, pseudonym=pseudonym, actor=actor, reason=reason)
        self._metrics.exports.inc()
        subject_info = {
            "identifier": identifier,
            "pseudonym": pseudonym,
            "created_at": subject.created_at,
            "consent_state": current_states(consents),
            "directory": export_directory(directory),
        }
        async for chunk in aiter_export_json(
            subject_info=subject_info,
            events=self._export_events(stub, pseudonym, first_page),
            consents=[consent.to_dict() for consent in consents],
        ):
            yield chunk

    async def _export_events(
        self,
        stub: ingest_pb2_grpc.IngestServiceStub,
        pseudonym: str,
        page: ingest_pb2.ListSubjectRecordsResponse,
    ) -> AsyncIterator[dict[str, Any]]:
        # One entry per key period (a few dozen for years of history), not per event.
        keys: dict[str, tuple[str, bytes] | None] = {}
        while True:
            needed = sorted({record.key_period for record in page.records if record.key_period} - keys.keys())
            if needed:
                unwrapped = await run_db(self.store.unwrap_keys, [(pseudonym, period) for period in needed])
                for item in unwrapped:
                    keys[item.period] = (
                        None if item.key_id is None or item.data_key is None else (item.key_id, item.data_key)
                    )
            for record in page.records:
                yield export_event(record, keys.get(record.key_period))
            if not page.next_page_token:
                return
            page = await call_peer(
                stub.ListSubjectRecords(
                    ingest_pb2.ListSubjectRecordsRequest(
                        pseudonym=pseudonym, page_size=EXPORT_PAGE_SIZE, page_token=page.next_page_token
                    )
                ),
                target="ingest",
            )

    # --- directory -----------------------------------------------------------------------------------

    async def import_directory(
        self, entries: Sequence[DirectoryEntry], *, replace: bool, import_id: str, actor: str
    ) -> DirectoryImportResult:
        """One call of a directory import (entries already checked by the transport)."""
        result: DirectoryImportResult = await run_db(
            self.store.import_directory, entries, replace=replace, import_id=import_id, actor=actor
        )
        for change, count in (
            ("created", result.created),
            ("updated", result.updated),
            ("removed", result.removed),
        ):
            self._metrics.directory_changes.labels(change).inc(count)
        log.info(
            "directory imported",
            extra={
                "created_count": result.created,  # "created" is a LogRecord attribute: KeyError
                "updated": result.updated,
                "unchanged": result.unchanged,
                "removed": result.removed,
                "replace": replace,
            },
        )
        return result

    # --- consent -------------------------------------------------------------------------------------

    async def change_consent(
        self,
        *,
        identifier: str,
        purpose: str,
        action: ConsentAction,
        actor: str,
        reason: str,
        request_id: str,
    ) -> ConsentRecordRow:
        row, replayed = await run_db(
            self.store.change_consent,
            identifier=identifier,
            purpose=purpose,
            action=action,
            actor=actor,
            reason=reason,
            request_id=request_id,
        )
        if not replayed:
            self._metrics.consent_changes.labels(purpose, action.value).inc()
        return row

    async def check_consent(self, *, pseudonyms: Sequence[str], purpose: str) -> list[bool]:
        return await run_db(self.store.check_consent, pseudonyms=pseudonyms, purpose=purpose)

    async def consent_page(
        self, *, identifier: str, purpose: str, before_id: int | None, limit: int
    ) -> tuple[str, list[ConsentRecordRow]]:
        """The subject's pseudonym and one page of its consent records, newest first."""
        return await run_db(
            self.store.consent_page, identifier=identifier, purpose=purpose, before_id=before_id, limit=limit
        )

    # --- retention -----------------------------------------------------------------------------------

    async def set_retention_rule(
        self, *, event_type: str, retention_days: int, actor: str, reason: str
    ) -> RuleView:
        return await run_db(
            self.store.set_retention_rule,
            event_type=event_type,
            retention_days=retention_days,
            actor=actor,
            reason=reason,
        )

    async def list_retention_rules(self) -> list[RuleView]:
        return await run_db(self.store.list_retention_rules)

    async def apply_retention(
        self, *, dry_run: bool, actor: str, reason: str, request_id: str, time_remaining: float | None
    ) -> RetentionReport:
        """Shred expired keys, then have ingest drop them from its cache within ``time_remaining``."""
        report = await run_db(
            self.store.apply_retention, dry_run=dry_run, actor=actor, reason=reason, request_id=request_id
        )
        if not report.dry_run and not report.replayed:
            self._metrics.retention_keys_shredded.inc(report.keys_shredded)
            if report.shredded:
                await self._forget_after_retention(report.shredded, time_remaining)
        log.info(
            "retention applied",
            extra={
                "dry_run": report.dry_run,
                "keys_shredded": report.keys_shredded,
                "replayed": report.replayed,
            },
        )
        return report

    async def _forget_after_retention(
        self, shredded: Sequence[tuple[str, str]], time_remaining: float | None
    ) -> None:
        """Start dropping ingest's cached keys of the shredded pseudonyms; wait a bounded time for it.

        A daily run's few pseudonyms are done before ApplyRetention answers, so reads right after it
        already see the keys gone; a run that shredded thousands answers in time and finishes in the
        background. Shredding is what retention is: this only shortens the cache's grace period.
        """
        pseudonyms = list(dict.fromkeys(pseudonym for pseudonym, _ in shredded))
        task = asyncio.create_task(self.forget_pseudonyms(pseudonyms))
        self._forgetting.add(task)
        task.add_done_callback(self._forgetting.discard)
        wait = self.forget_wait_seconds
        remaining = time_remaining
        if remaining is not None:  # answer well within the caller's deadline, whatever is left undone
            wait = min(wait, max(remaining / 2, 0.0))
        # asyncio.wait never cancels the task: on timeout (or if this call is cancelled) it goes on.
        await asyncio.wait({task}, timeout=wait)

    async def close(self) -> None:
        """On shutdown: stop telling ingest to drop cached keys (they expire within the TTL anyway)."""
        pending = list(self._forgetting)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if pending:
            log.warning("shutting down with cached-key drops after retention unfinished")

    async def forget_pseudonyms(self, pseudonyms: Sequence[str]) -> int:
        """ForgetSubject for each pseudonym, a bounded number at a time; returns how many were not told.

        Best-effort: the first failure (ingest down, breaker open, refused) stops the rest, since they
        would fail alike and the cached keys expire within the TTL anyway; it is logged and counted.
        """
        stub = self._ingest()
        pending = iter(pseudonyms)  # shared by the workers: each takes the next pseudonym
        told = 0
        failure: str | None = None

        async def worker() -> None:
            nonlocal told, failure
            for pseudonym in pending:
                if failure is not None:
                    return
                try:
                    request = ingest_pb2.ForgetSubjectRequest(pseudonym=pseudonym)
                    await call_peer(stub.ForgetSubject(request), target="ingest")
                except AwarenessError as exc:  # ingest's answer or an open breaker
                    failure = failure or _failure_code(exc)
                    return
                told += 1

        workers = max(1, min(self.forget_concurrency, len(pseudonyms)))
        outcomes = await asyncio.gather(*(worker() for _ in range(workers)), return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, Exception):  # a bug, not ingest's answer: log it, never lose it
                failure = failure or outcome.__class__.__name__
                log.error("dropping cached keys after retention failed", exc_info=outcome)
        missed = len(pseudonyms) - told
        if missed:
            self._metrics.retention_forget_failures.inc(missed)
            log.warning(
                "ingest was not told to drop cached keys shredded by retention; they expire within its "
                "cache TTL",
                extra={"code": failure, "pseudonyms_told": told, "pseudonyms_missed": missed},
            )
        return missed

    # --- KEK and audit -------------------------------------------------------------------------------

    async def rotate_kek(self, *, actor: str, reason: str, request_id: str) -> RotationResult:
        result = await run_db(self.store.rotate_kek, actor=actor, reason=reason, request_id=request_id)
        if not result.replayed:
            self._metrics.kek_rotations.inc()
        return result

    async def audit_page(
        self,
        *,
        before_sequence: int | None,
        limit: int,
        actor: str,
        action: str,
        start: datetime | None,
        end: datetime | None,
    ) -> list[AuditRecordRow]:
        rows: list[AuditRecordRow] = await run_db(
            self.store.audit_page,
            before_sequence=before_sequence,
            limit=limit,
            actor=actor,
            action=action,
            start=start,
            end=end,
        )
        return rows
