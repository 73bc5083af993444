# ruff: noqa: N802 - gRPC method names are the proto's (PascalCase)
"""The gdpr gRPC servicer: request validation, proto mapping and the calls to ingest.

Permissions are enforced by the runtime's interceptor from each method's proto option (erase and export
are the DPO's); here the calling principal is only read to record who acted. Subject identifiers appear
in requests only: they are never logged, never put into error messages and never stored (only their HMAC).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import grpc
from awareness.gdpr.v1 import gdpr_pb2, gdpr_pb2_grpc
from awareness.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from google.protobuf import duration_pb2, timestamp_pb2
from google.protobuf.json_format import MessageToDict
from prometheus_client import Counter, Gauge

from services.evidence.envelope import SealedPersonal, is_sealed_note, open_note, open_personal
from services.evidence.errors import TamperedRecordError
from services.gdpr.domain.consent import ConsentAction, current_states
from services.gdpr.domain.export import aiter_export_json
from services.gdpr.domain.keys import normalise_identifier
from services.gdpr.models import AuditRecordRow, ConsentRecordRow, ErasureRecordRow
from services.gdpr.store import (
    DEFAULT_RULE,
    ErasureOutcome,
    GdprStore,
    KeyRequest,
    RuleView,
    erasure_log_event_id,
    rule_name,
)
from services.runtime import auth
from services.runtime.clients import TRANSIENT_CODES
from services.runtime.db import run_db
from services.runtime.errors import (
    AwarenessError,
    DependencyUnavailableError,
    FieldViolation,
    InvalidArgumentError,
    NotFoundError,
)
from services.runtime.metrics import ServiceMetrics
from services.runtime.paging import PageTokens, invalid_page_token, page_size

log = logging.getLogger("awareness.gdpr")
T = TypeVar("T")

MAX_BATCH = 1000
EXPORT_PAGE_SIZE = 200
ERASURE_EVENT_TYPE = "gdpr.erasure"
ERASURE_EVENT_SOURCE = "gdpr"
# After retention shreds keys, ingest is asked to drop each affected pseudonym's cached keys: at most this
# many ForgetSubject calls at a time, and ApplyRetention waits at most this long for them before answering
# (the rest go on in the background; ingest's cache expires within its TTL anyway).
RETENTION_FORGET_CONCURRENCY = 8
RETENTION_FORGET_WAIT_SECONDS = 3.0
_SEVERITY_NAMES = {
    value: name.removeprefix("SEVERITY_").lower() for name, value in ingest_pb2.Severity.items()
}


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
        )


IngestStubFactory = Callable[[], ingest_pb2_grpc.IngestServiceStub]


def _timestamp(moment: datetime | None) -> timestamp_pb2.Timestamp | None:
    if moment is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment.astimezone(UTC))
    return stamp


def _token_time(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise invalid_page_token("page_token holds no position of this list") from None


def _datetime(stamp: timestamp_pb2.Timestamp) -> datetime:
    return stamp.ToDatetime(tzinfo=UTC)


def _actor() -> str:
    principal = auth.current_principal()
    return principal.subject if principal is not None else "unknown"


def _invalid(violations: Sequence[FieldViolation]) -> InvalidArgumentError:
    return InvalidArgumentError(
        "; ".join(f"{v.field}: {v.description}" for v in violations),
        reason="INVALID_ARGUMENT",
        violations=violations,
    )


def _check_subject(value: str, field: str, violations: list[FieldViolation]) -> None:
    try:
        normalise_identifier(value)
    except ValueError:
        violations.append(FieldViolation(field, "must name a data subject"))


def _check_reason(reason: str, *, subject: str, field: str, violations: list[FieldViolation]) -> None:
    """Reasons are kept in records that outlive an erasure: refuse one that names the subject."""
    try:
        identifier = normalise_identifier(subject)
    except ValueError:
        return
    if identifier in reason.casefold():
        violations.append(
            FieldViolation(field, "must not contain the subject identifier (it outlives erasure)")
        )


def _check_batch(count: int, field: str, violations: list[FieldViolation]) -> None:
    if count == 0:
        violations.append(FieldViolation(field, "must not be empty"))
    elif count > MAX_BATCH:
        violations.append(FieldViolation(field, f"at most {MAX_BATCH} items"))


async def from_ingest(call: Awaitable[T]) -> T:
    """Await a call to ingest; its failures become errors of ours (UNAVAILABLE when ingest is down)."""
    try:
        return await call
    except grpc.aio.AioRpcError as exc:
        if exc.code() in TRANSIENT_CODES:
            raise DependencyUnavailableError(
                "the ingest service is unavailable; try again later",
                metadata={"target": "ingest", "code": exc.code().name},
            ) from exc
        raise AwarenessError(
            "the ingest service refused the request",
            reason="DEPENDENCY_ERROR",
            metadata={"code": exc.code().name},
        ) from exc


def erasure_proto(record: ErasureRecordRow) -> gdpr_pb2.ErasureRecord:
    return gdpr_pb2.ErasureRecord(
        name=f"erasures/{record.erasure_id}",
        pseudonym=record.pseudonym,
        erase_time=_timestamp(record.erase_time),
        events_affected=record.events_affected or 0,
        actor=record.actor,
        reason=record.reason,
        log_event_id=record.log_event_id or "",
        keys_shredded=record.keys_shredded,
        request_id=record.request_id,
    )


def consent_proto(row: ConsentRecordRow) -> gdpr_pb2.ConsentRecord:
    action = (
        gdpr_pb2.ConsentRecord.ACTION_GRANT
        if row.action == ConsentAction.GRANT.value
        else gdpr_pb2.ConsentRecord.ACTION_WITHDRAW
    )
    return gdpr_pb2.ConsentRecord(
        pseudonym=row.pseudonym,
        purpose=row.purpose,
        action=action,
        time=_timestamp(row.at),
        actor=row.actor,
        reason=row.reason,
    )


def rule_proto(view: RuleView) -> gdpr_pb2.RetentionRule:
    return gdpr_pb2.RetentionRule(
        name=rule_name(view.event_type),
        event_type=view.event_type,
        retention_days=view.retention_days,
        update_time=_timestamp(view.updated_at),
        actor=view.actor,
    )


def audit_proto(row: AuditRecordRow) -> gdpr_pb2.AuditRecord:
    return gdpr_pb2.AuditRecord(
        actor=row.actor,
        action=row.action,
        time=_timestamp(row.at),
        target=row.target,
        reason=row.reason,
        request_id=row.request_id,
        sequence=row.sequence,
        prev_hash=row.prev_hash,
        entry_hash=row.entry_hash,
    )


def erasure_event(record: ErasureRecordRow) -> ingest_pb2.Event:
    """The log event recording an erasure: no personal data, deterministic for idempotent retries."""
    erase_time = _timestamp(record.erase_time)
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
        "occurred_at": _datetime(record.occurred_at),
        "receive_time": _datetime(record.receive_time),
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


class GdprServicer(gdpr_pb2_grpc.GdprServiceServicer):
    def __init__(
        self,
        *,
        store: GdprStore,
        ingest: IngestStubFactory,
        metrics: GdprMetrics,
        key_cache_seconds: int,
        page_tokens: PageTokens,
    ) -> None:
        self._store = store
        self._tokens = page_tokens
        self._ingest = ingest
        self._metrics = metrics
        self._cache_ttl = duration_pb2.Duration(seconds=key_cache_seconds)
        self._finishing: dict[str, asyncio.Lock] = {}
        self.forget_concurrency = RETENTION_FORGET_CONCURRENCY
        self.forget_wait_seconds = RETENTION_FORGET_WAIT_SECONDS
        # Strong references: the event loop keeps only weak ones to running tasks.
        self._forgetting: set[asyncio.Task[int]] = set()

    # --- keys ----------------------------------------------------------------------------------------

    async def GetSubjectKeys(
        self, request: gdpr_pb2.GetSubjectKeysRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> gdpr_pb2.GetSubjectKeysResponse:
        violations: list[FieldViolation] = []
        _check_batch(len(request.lookups), "lookups", violations)
        for index, lookup in enumerate(request.lookups):
            _check_subject(lookup.subject, f"lookups[{index}].subject", violations)
            if not lookup.HasField("occurred_at"):
                violations.append(FieldViolation(f"lookups[{index}].occurred_at", "is required"))
        if violations:
            raise _invalid(violations)
        requests = [
            KeyRequest(
                subject=item.subject, occurred_at=_datetime(item.occurred_at), event_type=item.event_type
            )
            for item in request.lookups
        ]
        result = await run_db(self._store.issue_keys, requests)
        self._metrics.keys_issued.inc(len(result.keys))
        self._metrics.data_keys_created.inc(result.keys_created)
        return gdpr_pb2.GetSubjectKeysResponse(
            keys=[
                gdpr_pb2.SubjectKey(
                    pseudonym=key.pseudonym,
                    key_period=key.period,
                    key_id=key.key_id,
                    data_key=key.data_key,
                    cache_ttl=self._cache_ttl,
                )
                for key in result.keys
            ]
        )

    async def UnwrapDataKeys(
        self, request: gdpr_pb2.UnwrapDataKeysRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> gdpr_pb2.UnwrapDataKeysResponse:
        violations: list[FieldViolation] = []
        _check_batch(len(request.keys), "keys", violations)
        for index, ref in enumerate(request.keys):
            if not ref.pseudonym:
                violations.append(FieldViolation(f"keys[{index}].pseudonym", "is required"))
            if not ref.key_period:
                violations.append(FieldViolation(f"keys[{index}].key_period", "is required"))
        if violations:
            raise _invalid(violations)
        results = await run_db(
            self._store.unwrap_keys, [(ref.pseudonym, ref.key_period) for ref in request.keys]
        )
        response = gdpr_pb2.UnwrapDataKeysResponse()
        for result in results:
            item = response.keys.add(pseudonym=result.pseudonym, key_period=result.period)
            if result.data_key is None:
                missing = NotFoundError(
                    "the data key was erased or shredded by retention", reason="KEY_SHREDDED"
                )
                item.error.CopyFrom(missing.to_status())
            else:
                item.data_key = result.data_key
                item.key_id = result.key_id or ""
                item.cache_ttl.CopyFrom(self._cache_ttl)
        return response

    async def LookupSubject(
        self, request: gdpr_pb2.LookupSubjectRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> gdpr_pb2.LookupSubjectResponse:
        violations: list[FieldViolation] = []
        _check_subject(request.subject, "subject", violations)
        if violations:
            raise _invalid(violations)
        # A read of the HMAC index only (never GetSubjectKeys' get-or-create): an unknown or erased
        # person is SUBJECT_NOT_FOUND and stays unregistered.
        subject = await run_db(self._store.find_subject, request.subject)
        return gdpr_pb2.LookupSubjectResponse(pseudonym=subject.pseudonym)

    # --- erasure -------------------------------------------------------------------------------------

    async def EraseSubject(
        self, request: gdpr_pb2.EraseSubjectRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> gdpr_pb2.ErasureRecord:
        violations: list[FieldViolation] = []
        _check_subject(request.subject, "subject", violations)
        if not request.reason.strip():
            violations.append(
                FieldViolation("reason", "is required (e.g. the ticket of the Art. 17 request)")
            )
        _check_reason(request.reason, subject=request.subject, field="reason", violations=violations)
        if violations:
            raise _invalid(violations)
        outcome: ErasureOutcome = await run_db(
            self._store.erase,
            identifier=request.subject,
            actor=_actor(),
            reason=request.reason.strip(),
            request_id=request.request_id,
        )
        if not outcome.replayed:
            self._metrics.erasures.inc()
            log.info("subject erased", extra={"erasure_id": outcome.record.erasure_id})
        record = outcome.record
        if record.log_event_id is None:
            record = await self.finish_erasure(record)
        return erasure_proto(record)

    async def finish_erasure(self, record: ErasureRecordRow) -> ErasureRecordRow:
        """Tell ingest (drop cached keys, count events) and append the erasure event; retried until done.

        Failures are recorded, not raised: the keys are already gone, which is what the erasure is.
        """
        lock = self._finishing.setdefault(record.erasure_id, asyncio.Lock())
        try:
            async with lock:
                return await self._finish_erasure_locked(record)
        finally:
            if not lock.locked():
                self._finishing.pop(record.erasure_id, None)

    async def _finish_erasure_locked(self, record: ErasureRecordRow) -> ErasureRecordRow:
        current: ErasureRecordRow | None = await run_db(self._store.get_erasure, record.erasure_id)
        record = current or record
        if record.log_event_id is not None:
            return record
        stub = self._ingest()
        try:
            if record.events_affected is None:
                forgotten = await stub.ForgetSubject(
                    ingest_pb2.ForgetSubjectRequest(pseudonym=record.pseudonym)
                )
                record = await run_db(
                    self._store.set_events_affected,
                    erasure_id=record.erasure_id,
                    events_affected=forgotten.event_count,
                )
            event = erasure_event(record)
            try:
                await stub.AppendEvent(ingest_pb2.AppendEventRequest(event=event))
            except grpc.aio.AioRpcError as exc:
                # Already in the log under its deterministic id: an earlier attempt got through.
                if exc.code() != grpc.StatusCode.ALREADY_EXISTS:
                    raise
                log.warning("erasure event already in the log", extra={"erasure_id": record.erasure_id})
            return await run_db(
                self._store.set_log_event_id, erasure_id=record.erasure_id, log_event_id=event.event_id
            )
        except (grpc.aio.AioRpcError, AwarenessError) as exc:
            code = exc.code().name if isinstance(exc, grpc.aio.AioRpcError) else exc.reason
            attempts = await run_db(self._store.record_log_failure, erasure_id=record.erasure_id, error=code)
            self._metrics.erasure_log_failures.inc()
            log.warning(
                "erasure log append pending; will retry",
                extra={"erasure_id": record.erasure_id, "code": code, "attempts": attempts},
            )
            return record

    async def retry_pending_erasures(self) -> int:
        """One pass of the background retrier; returns how many erasures are still pending."""
        pending = await run_db(self._store.pending_erasures)
        still_pending = 0
        for record in pending:
            finished = await self.finish_erasure(record)
            still_pending += finished.log_event_id is None
        self._metrics.erasure_log_pending.set(still_pending)
        return still_pending

    async def GetErasureRecord(
        self, request: gdpr_pb2.GetErasureRecordRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> gdpr_pb2.ErasureRecord:
        prefix, _, erasure_id = request.name.partition("/")
        if prefix != "erasures" or not erasure_id or "/" in erasure_id:
            raise _invalid([FieldViolation("name", "must be erasures/{erasure}")])
        record = await run_db(self._store.get_erasure, erasure_id)
        if record is None:
            raise NotFoundError(f"{request.name} does not exist", reason="ERASURE_NOT_FOUND")
        return erasure_proto(record)

    async def ListErasureRecords(
        self, request: gdpr_pb2.ListErasureRecordsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> gdpr_pb2.ListErasureRecordsResponse:
        limit = page_size(request.page_size)
        position = self._tokens.decode(request.page_token, method="gdpr.ListErasureRecords", shape=(str, str))
        before = None if position is None else (_token_time(position[0]), position[1])
        rows = await run_db(self._store.erasure_page, before=before, limit=limit + 1)
        response = gdpr_pb2.ListErasureRecordsResponse(
            erasure_records=[erasure_proto(r) for r in rows[:limit]]
        )
        if len(rows) > limit:
            last = rows[limit - 1]
            response.next_page_token = self._tokens.encode(
                [last.erase_time.isoformat(), last.erasure_id], method="gdpr.ListErasureRecords"
            )
        return response

    # --- export --------------------------------------------------------------------------------------

    async def ExportSubject(
        self, request: gdpr_pb2.ExportSubjectRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[gdpr_pb2.ExportSubjectResponse]:
        violations: list[FieldViolation] = []
        _check_subject(request.subject, "subject", violations)
        _check_reason(request.reason, subject=request.subject, field="reason", violations=violations)
        if violations:
            raise _invalid(violations)
        subject = await run_db(self._store.find_subject, request.subject)
        pseudonym = subject.pseudonym
        stub = self._ingest()
        # The first page is fetched before anything is sent, so "ingest unavailable" is a clean error.
        first_page = await from_ingest(
            stub.ListSubjectRecords(
                ingest_pb2.ListSubjectRecordsRequest(pseudonym=pseudonym, page_size=EXPORT_PAGE_SIZE)
            )
        )
        consents = await run_db(self._store.consent_events, pseudonym)
        await run_db(self._store.record_export, pseudonym=pseudonym, actor=_actor(), reason=request.reason)
        self._metrics.exports.inc()
        subject_info = {
            "identifier": request.subject,
            "pseudonym": pseudonym,
            "created_at": subject.created_at,
            "consent_state": current_states(consents),
        }
        async for chunk in aiter_export_json(
            subject_info=subject_info,
            events=self._export_events(stub, pseudonym, first_page),
            consents=[consent.to_dict() for consent in consents],
        ):
            yield gdpr_pb2.ExportSubjectResponse(data=chunk)

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
                unwrapped = await run_db(self._store.unwrap_keys, [(pseudonym, period) for period in needed])
                for item in unwrapped:
                    keys[item.period] = (
                        None if item.key_id is None or item.data_key is None else (item.key_id, item.data_key)
                    )
            for record in page.records:
                yield export_event(record, keys.get(record.key_period))
            if not page.next_page_token:
                return
            page = await from_ingest(
                stub.ListSubjectRecords(
                    ingest_pb2.ListSubjectRecordsRequest(
                        pseudonym=pseudonym, page_size=EXPORT_PAGE_SIZE, page_token=page.next_page_token
                    )
                )
            )

    # --- consent -------------------------------------------------------------------------------------

    async def GrantConsent(
        self, request: gdpr_pb2.GrantConsentRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> gdpr_pb2.GrantConsentResponse:
        row = await self._change_consent(request, ConsentAction.GRANT)
        return gdpr_pb2.GrantConsentResponse(record=consent_proto(row))

    async def WithdrawConsent(
        self, request: gdpr_pb2.WithdrawConsentRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> gdpr_pb2.WithdrawConsentResponse:
        row = await self._change_consent(request, ConsentAction.WITHDRAW)
        return gdpr_pb2.WithdrawConsentResponse(record=consent_proto(row))

    async def _change_consent(
        self, request: gdpr_pb2.GrantConsentRequest | gdpr_pb2.WithdrawConsentRequest, action: ConsentAction
    ) -> ConsentRecordRow:
        violations: list[FieldViolation] = []
        _check_subject(request.subject, "subject", violations)
        if not request.purpose:
            violations.append(FieldViolation("purpose", "is required"))
        _check_reason(request.reason, subject=request.subject, field="reason", violations=violations)
        if violations:
            raise _invalid(violations)
        row, replayed = await run_db(
            self._store.change_consent,
            identifier=request.subject,
            purpose=request.purpose,
            action=action,
            actor=_actor(),
            reason=request.reason,
            request_id=request.request_id,
        )
        if not replayed:
            self._metrics.consent_changes.labels(request.purpose, action.value).inc()
        return row

    async def CheckConsent(
        self, request: gdpr_pb2.CheckConsentRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> gdpr_pb2.CheckConsentResponse:
        violations: list[FieldViolation] = []
        _check_batch(len(request.pseudonyms), "pseudonyms", violations)
        if not request.purpose:
            violations.append(FieldViolation("purpose", "is required"))
        if violations:
            raise _invalid(violations)
        pseudonyms = list(request.pseudonyms)
        granted = await run_db(self._store.check_consent, pseudonyms=pseudonyms, purpose=request.purpose)
        return gdpr_pb2.CheckConsentResponse(
            results=[
                gdpr_pb2.ConsentStatus(pseudonym=pseudonym, granted=allowed)
                for pseudonym, allowed in zip(pseudonyms, granted, strict=True)
            ]
        )

    async def ListConsentHistory(
        self, request: gdpr_pb2.ListConsentHistoryRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> gdpr_pb2.ListConsentHistoryResponse:
        violations: list[FieldViolation] = []
        _check_subject(request.subject, "subject", violations)
        if violations:
            raise _invalid(violations)
        limit = page_size(request.page_size)
        # The token's scope holds the HMAC of the identifier, never the identifier itself.
        filters = {"subject": self._store.lookup(request.subject).hex(), "purpose": request.purpose}
        before = self._tokens.decode(
            request.page_token, method="gdpr.ListConsentHistory", filters=filters, shape=(int,)
        )
        rows = await run_db(
            self._store.consent_page,
            identifier=request.subject,
            purpose=request.purpose,
            before_id=None if before is None else before[0],
            limit=limit + 1,
        )
        response = gdpr_pb2.ListConsentHistoryResponse(records=[consent_proto(row) for row in rows[:limit]])
        if len(rows) > limit:
            response.next_page_token = self._tokens.encode(
                [rows[limit - 1].id], method="gdpr.ListConsentHistory", filters=filters
            )
        return response

    # --- retention -----------------------------------------------------------------------------------

    async def SetRetentionRule(
        self, request: gdpr_pb2.SetRetentionRuleRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> gdpr_pb2.RetentionRule:
        if not request.HasField("rule"):
            raise _invalid([FieldViolation("rule", "is required")])
        view = await run_db(
            self._store.set_retention_rule,
            event_type=request.rule.event_type,
            retention_days=request.rule.retention_days,
            actor=_actor(),
            reason=request.reason,
        )
        return rule_proto(view)

    async def ListRetentionRules(
        self, request: gdpr_pb2.ListRetentionRulesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> gdpr_pb2.ListRetentionRulesResponse:
        limit = page_size(request.page_size)
        position = self._tokens.decode(request.page_token, method="gdpr.ListRetentionRules", shape=(int,))
        offset = position[0] if position else 0
        if offset < 0:
            raise invalid_page_token("page_token holds no position of this list")
        views = await run_db(self._store.list_retention_rules)
        response = gdpr_pb2.ListRetentionRulesResponse(
            rules=[rule_proto(v) for v in views[offset : offset + limit]]
        )
        if offset + limit < len(views):
            response.next_page_token = self._tokens.encode([offset + limit], method="gdpr.ListRetentionRules")
        return response

    async def ApplyRetention(
        self, request: gdpr_pb2.ApplyRetentionRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> gdpr_pb2.ApplyRetentionResponse:
        report = await run_db(
            self._store.apply_retention,
            dry_run=request.dry_run,
            actor=_actor(),
            reason=request.reason,
            request_id=request.request_id,
        )
        if not report.dry_run and not report.replayed:
            self._metrics.retention_keys_shredded.inc(report.keys_shredded)
            if report.shredded:
                await self._forget_after_retention(report.shredded, context)
        log.info(
            "retention applied",
            extra={
                "dry_run": report.dry_run,
                "keys_shredded": report.keys_shredded,
                "replayed": report.replayed,
            },
        )
        return gdpr_pb2.ApplyRetentionResponse(
            dry_run=report.dry_run,
            run_time=_timestamp(report.run_time),
            entries=[
                gdpr_pb2.RetentionReportEntry(
                    key_period=entry.key_period,
                    event_type=entry.event_type,
                    pseudonym_count=entry.pseudonym_count,
                )
                for entry in report.entries
            ],
            keys_shredded=report.keys_shredded,
        )

    async def _forget_after_retention(
        self, shredded: Sequence[tuple[str, str]], context: grpc.aio.ServicerContext[Any, Any]
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
        remaining = context.time_remaining()
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
                    await stub.ForgetSubject(ingest_pb2.ForgetSubjectRequest(pseudonym=pseudonym))
                except grpc.aio.AioRpcError as exc:
                    failure = failure or exc.code().name
                    return
                except AwarenessError as exc:  # the breaker is open
                    failure = failure or exc.reason
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

    async def RotateKek(
        self, request: gdpr_pb2.RotateKekRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> gdpr_pb2.RotateKekResponse:
        result = await run_db(
            self._store.rotate_kek, actor=_actor(), reason=request.reason, request_id=request.request_id
        )
        if not result.replayed:
            self._metrics.kek_rotations.inc()
        return gdpr_pb2.RotateKekResponse(
            kek_id=result.kek_id, keys_rewrapped=result.keys_rewrapped, retired_kek_ids=result.retired_kek_ids
        )

    async def ListAuditRecords(
        self, request: gdpr_pb2.ListAuditRecordsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> gdpr_pb2.ListAuditRecordsResponse:
        limit = page_size(request.page_size)
        start = _datetime(request.start_time) if request.HasField("start_time") else None
        end = _datetime(request.end_time) if request.HasField("end_time") else None
        filters = {
            "actor": request.actor,
            "action": request.action,
            "start": start.isoformat() if start else "",
            "end": end.isoformat() if end else "",
        }
        before = self._tokens.decode(
            request.page_token, method="gdpr.ListAuditRecords", filters=filters, shape=(int,)
        )
        rows = await run_db(
            self._store.audit_page,
            before_sequence=None if before is None else before[0],
            limit=limit + 1,
            actor=request.actor,
            action=request.action,
            start=start,
            end=end,
        )
        response = gdpr_pb2.ListAuditRecordsResponse(audit_records=[audit_proto(r) for r in rows[:limit]])
        if len(rows) > limit:
            response.next_page_token = self._tokens.encode(
                [rows[limit - 1].sequence], method="gdpr.ListAuditRecords", filters=filters
            )
        return response


__all__ = ["DEFAULT_RULE", "GdprMetrics", "GdprServicer", "erasure_event", "export_event"]
