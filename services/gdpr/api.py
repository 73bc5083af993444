# ruff: noqa: N802 - gRPC method names are the proto's (PascalCase)
"""The gdpr gRPC servicer: transport only (request validation, proto <-> domain, one use case per RPC).

Permissions are enforced by the runtime's interceptor from each method's proto option (erase and export
are the DPO's); here the calling principal is only read to record who acted. Subject identifiers appear
in requests only: they are never logged, never put into error messages and never stored (only their HMAC).
The use cases and the erasure saga are in ``services.gdpr.service.usecases``.

Access records (``services.runtime.audit``): no audited request here has a ``name`` or ``parent``, so each
handler names its resource itself, and a subject only by the pseudonym it resolved, once it did (an unknown
subject's record names none). Reasons are free text typed by people and are never copied into a record.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import grpc
from awareness.gdpr.v1 import gdpr_pb2, gdpr_pb2_grpc
from google.protobuf import duration_pb2

from services.gdpr import convert
from services.gdpr.convert import audit_proto, consent_proto, erasure_proto, invalid_request, rule_proto
from services.gdpr.domain.consent import ConsentAction
from services.gdpr.domain.keys import normalise_identifier
from services.gdpr.models import ConsentRecordRow
from services.gdpr.service.transactions import KeyRequest
from services.gdpr.service.usecases import GdprUseCases
from services.runtime import audit, auth
from services.runtime.errors import FieldViolation, NotFoundError
from services.runtime.paging import PageTokens, invalid_page_token, page_size
from services.runtime.timestamps import from_timestamp, optional_timestamp

MAX_BATCH = 1000
# Access-record resources of calls that name no single item (or before the item exists).
ERASURES = "erasures"
RETENTION_RULES = "retentionRules"
KEKS = "keks"


def _token_time(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise invalid_page_token("page_token holds no position of this list") from None


def _actor() -> str:
    principal = auth.current_principal()
    return principal.subject if principal is not None else "unknown"


def _check_subject(value: str, field: str, violations: list[FieldViolation]) -> None:
    try:
        normalise_identifier(value)
    except ValueError:
        violations.append(FieldViolation(field, "must name a data subject"))


def _require_subject(value: str) -> None:
    violations: list[FieldViolation] = []
    _check_subject(value, "subject", violations)
    if violations:
        raise invalid_request(violations)


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


class GdprServicer(gdpr_pb2_grpc.GdprServiceServicer):
    def __init__(self, *, gdpr: GdprUseCases, key_cache_seconds: int, page_tokens: PageTokens) -> None:
        self._gdpr = gdpr
        self._tokens = page_tokens
        self._cache_ttl = duration_pb2.Duration(seconds=key_cache_seconds)

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
            raise invalid_request(violations)
        keys = await self._gdpr.issue_keys(
            [
                KeyRequest(
                    subject=item.subject,
                    occurred_at=from_timestamp(item.occurred_at),
                    event_type=item.event_type,
                )
                for item in request.lookups
            ]
        )
        return gdpr_pb2.GetSubjectKeysResponse(
            keys=[
                gdpr_pb2.SubjectKey(
                    pseudonym=key.pseudonym,
                    key_period=key.period,
                    key_id=key.key_id,
                    data_key=key.data_key,
                    cache_ttl=self._cache_ttl,
                    department=key.department,
                )
                for key in keys
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
            raise invalid_request(violations)
        results = await self._gdpr.unwrap_keys([(ref.pseudonym, ref.key_period) for ref in request.keys])
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
        _require_subject(request.subject)
        # A read of the HMAC index only (never GetSubjectKeys' get-or-create): an unknown or erased
        # person is SUBJECT_NOT_FOUND and stays unregistered.
        subject = await self._gdpr.find_subject(request.subject)
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
        audit.note(resource=ERASURES)
        if violations:
            raise invalid_request(violations)
        record = await self._gdpr.erase_subject(
            identifier=request.subject,
            actor=_actor(),
            reason=request.reason.strip(),
            request_id=request.request_id,
        )
        audit.note(
            resource=f"{ERASURES}/{record.erasure_id}",
            pseudonyms=[record.pseudonym],
            details={"keys_shredded": str(record.keys_shredded)},
        )
        return erasure_proto(record)

    async def GetErasureRecord(
        self, request: gdpr_pb2.GetErasureRecordRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> gdpr_pb2.ErasureRecord:
        prefix, _, erasure_id = request.name.partition("/")
        if prefix != "erasures" or not erasure_id or "/" in erasure_id:
            raise invalid_request([FieldViolation("name", "must be erasures/{erasure}")])
        return erasure_proto(await self._gdpr.get_erasure(erasure_id))

    async def ListErasureRecords(
        self, request: gdpr_pb2.ListErasureRecordsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> gdpr_pb2.ListErasureRecordsResponse:
        limit = page_size(request.page_size)
        position = self._tokens.decode(request.page_token, method="gdpr.ListErasureRecords", shape=(str, str))
        before = None if position is None else (_token_time(position[0]), position[1])
        rows = await self._gdpr.erasure_page(before=before, limit=limit + 1)
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
            raise invalid_request(violations)
        subject = await self._gdpr.find_subject(request.subject)
        audit.note(pseudonyms=[subject.pseudonym])
        chunks = self._gdpr.export_subject(
            identifier=request.subject, subject=subject, actor=_actor(), reason=request.reason
        )
        async for chunk in chunks:
            yield gdpr_pb2.ExportSubjectResponse(data=chunk)

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
            raise invalid_request(violations)
        row = await self._gdpr.change_consent(
            identifier=request.subject,
            purpose=request.purpose,
            action=action,
            actor=_actor(),
            reason=request.reason,
            request_id=request.request_id,
        )
        # The purpose from the stored row: the request's is only known to be valid once stored.
        audit.note(pseudonyms=[row.pseudonym], details={"purpose": row.purpose})
        return row

    async def CheckConsent(
        self, request: gdpr_pb2.CheckConsentRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> gdpr_pb2.CheckConsentResponse:
        violations: list[FieldViolation] = []
        _check_batch(len(request.pseudonyms), "pseudonyms", violations)
        if not request.purpose:
            violations.append(FieldViolation("purpose", "is required"))
        if violations:
            raise invalid_request(violations)
        pseudonyms = list(request.pseudonyms)
        granted = await self._gdpr.check_consent(pseudonyms=pseudonyms, purpose=request.purpose)
        return gdpr_pb2.CheckConsentResponse(
            results=[
                gdpr_pb2.ConsentStatus(pseudonym=pseudonym, granted=allowed)
                for pseudonym, allowed in zip(pseudonyms, granted, strict=True)
            ]
        )

    async def ListConsentHistory(
        self, request: gdpr_pb2.ListConsentHistoryRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> gdpr_pb2.ListConsentHistoryResponse:
        _require_subject(request.subject)
        limit = page_size(request.page_size)
        # The token's scope holds the HMAC of the identifier, never the identifier itself.
        filters = {"subject": self._gdpr.subject_ref(request.subject), "purpose": request.purpose}
        before = self._tokens.decode(
            request.page_token, method="gdpr.ListConsentHistory", filters=filters, shape=(int,)
        )
        pseudonym, rows = await self._gdpr.consent_page(
            identifier=request.subject,
            purpose=request.purpose,
            before_id=None if before is None else before[0],
            limit=limit + 1,
        )
        audit.note(pseudonyms=[pseudonym], details={"purpose": request.purpose} if request.purpose else None)
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
        audit.note(resource=RETENTION_RULES)  # until the rule's event type is known to be valid
        if not request.HasField("rule"):
            raise invalid_request([FieldViolation("rule", "is required")])
        view = await self._gdpr.set_retention_rule(
            event_type=request.rule.event_type,
            retention_days=request.rule.retention_days,
            actor=_actor(),
            reason=request.reason,
        )
        rule = rule_proto(view)
        audit.note(resource=rule.name, details={"retention_days": str(rule.retention_days)})
        return rule

    async def ListRetentionRules(
        self, request: gdpr_pb2.ListRetentionRulesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> gdpr_pb2.ListRetentionRulesResponse:
        limit = page_size(request.page_size)
        position = self._tokens.decode(request.page_token, method="gdpr.ListRetentionRules", shape=(int,))
        offset = position[0] if position else 0
        if offset < 0:
            raise invalid_page_token("page_token holds no position of this list")
        views = await self._gdpr.list_retention_rules()
        response = gdpr_pb2.ListRetentionRulesResponse(
            rules=[rule_proto(v) for v in views[offset : offset + limit]]
        )
        if offset + limit < len(views):
            response.next_page_token = self._tokens.encode([offset + limit], method="gdpr.ListRetentionRules")
        return response

    async def ApplyRetention(
        self, request: gdpr_pb2.ApplyRetentionRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> gdpr_pb2.ApplyRetentionResponse:
        audit.note(resource=RETENTION_RULES, details={"dry_run": str(request.dry_run).lower()})
        report = await self._gdpr.apply_retention(
            dry_run=request.dry_run,
            actor=_actor(),
            reason=request.reason,
            request_id=request.request_id,
            time_remaining=context.time_remaining(),
        )
        # Counts only: the shredded keys' pseudonyms are many, and no one chose them.
        audit.note(
            details={
                "keys_shredded": str(report.keys_shredded),
                "key_periods": str(len({entry.key_period for entry in report.entries})),
            }
        )
        return gdpr_pb2.ApplyRetentionResponse(
            dry_run=report.dry_run,
            run_time=optional_timestamp(report.run_time),
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

    # --- directory -----------------------------------------------------------------------------------

    async def ImportDirectory(
        self, request: gdpr_pb2.ImportDirectoryRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> gdpr_pb2.ImportDirectoryResponse:
        audit.note(resource=convert.DIRECTORY)
        entries = convert.directory_entries(request)  # refuses the call naming each bad field
        result = await self._gdpr.import_directory(
            entries, replace=request.replace, import_id=request.import_id, actor=_actor()
        )
        # Counts only, as for retention: the people are many, and their pseudonyms are in the store.
        audit.note(details=convert.directory_counts(result))
        return convert.directory_import_proto(result)

    # --- KEK and audit -------------------------------------------------------------------------------

    async def RotateKek(
        self, request: gdpr_pb2.RotateKekRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> gdpr_pb2.RotateKekResponse:
        audit.note(resource=KEKS)  # the collection, until the new KEK exists
        result = await self._gdpr.rotate_kek(
            actor=_actor(), reason=request.reason, request_id=request.request_id
        )
        audit.note(
            resource=f"{KEKS}/{result.kek_id}",
            details={
                "keys_rewrapped": str(result.keys_rewrapped),
                "retired_kek_ids": ",".join(result.retired_kek_ids),
            },
        )
        return gdpr_pb2.RotateKekResponse(
            kek_id=result.kek_id, keys_rewrapped=result.keys_rewrapped, retired_kek_ids=result.retired_kek_ids
        )

    async def ListAuditRecords(
        self, request: gdpr_pb2.ListAuditRecordsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> gdpr_pb2.ListAuditRecordsResponse:
        limit = page_size(request.page_size)
        start = from_timestamp(request.start_time) if request.HasField("start_time") else None
        end = from_timestamp(request.end_time) if request.HasField("end_time") else None
        filters = {
            "actor": request.actor,
            "action": request.action,
            "start": start.isoformat() if start else "",
            "end": end.isoformat() if end else "",
        }
        before = self._tokens.decode(
            request.page_token, method="gdpr.ListAuditRecords", filters=filters, shape=(int,)
        )
        rows = await self._gdpr.audit_page(
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
