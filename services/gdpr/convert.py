"""gdpr's stored rows as their proto messages (the transport's side of ``services.gdpr.api``)."""

from __future__ import annotations

from collections.abc import Sequence

from awareness.gdpr.v1 import gdpr_pb2

from services.gdpr.domain.consent import ConsentAction
from services.gdpr.domain.directory import DirectoryEntry, entry_violations
from services.gdpr.models import AuditRecordRow, ConsentRecordRow, ErasureRecordRow
from services.gdpr.service.transactions import DirectoryImportResult, RuleView, rule_name
from services.runtime.errors import FieldViolation, InvalidArgumentError
from services.runtime.timestamps import optional_timestamp

# The access-record resource of a directory import (it names the directory, not the many people in it).
DIRECTORY = "directory"


def invalid_request(violations: Sequence[FieldViolation]) -> InvalidArgumentError:
    """INVALID_ARGUMENT naming every bad field of a request."""
    return InvalidArgumentError(
        "; ".join(f"{v.field}: {v.description}" for v in violations),
        reason="INVALID_ARGUMENT",
        violations=violations,
    )


def erasure_proto(record: ErasureRecordRow) -> gdpr_pb2.ErasureRecord:
    return gdpr_pb2.ErasureRecord(
        name=f"erasures/{record.erasure_id}",
        pseudonym=record.pseudonym,
        erase_time=optional_timestamp(record.erase_time),
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
        time=optional_timestamp(row.at),
        actor=row.actor,
        reason=row.reason,
    )


def rule_proto(view: RuleView) -> gdpr_pb2.RetentionRule:
    return gdpr_pb2.RetentionRule(
        name=rule_name(view.event_type),
        event_type=view.event_type,
        retention_days=view.retention_days,
        update_time=optional_timestamp(view.updated_at),
        actor=view.actor,
    )


def audit_proto(row: AuditRecordRow) -> gdpr_pb2.AuditRecord:
    return gdpr_pb2.AuditRecord(
        actor=row.actor,
        action=row.action,
        time=optional_timestamp(row.at),
        target=row.target,
        reason=row.reason,
        request_id=row.request_id,
        sequence=row.sequence,
        prev_hash=row.prev_hash,
        entry_hash=row.entry_hash,
    )


def directory_entries(request: gdpr_pb2.ImportDirectoryRequest) -> list[DirectoryEntry]:
    """The request's entries as domain values; refuses the request naming each bad field
    (``entries[3].subject``), never the identifier it holds."""
    entries = [
        DirectoryEntry(
            subject=entry.subject, department=entry.department, manager_subject=entry.manager_subject
        )
        for entry in request.entries
    ]
    violations = entry_violations(entries)
    if violations:
        raise invalid_request(violations)
    return entries


def directory_counts(result: DirectoryImportResult) -> dict[str, str]:
    """What an import's access record keeps: counts only."""
    return {
        "created": str(result.created),
        "updated": str(result.updated),
        "unchanged": str(result.unchanged),
        "removed": str(result.removed),
    }


def directory_import_proto(result: DirectoryImportResult) -> gdpr_pb2.ImportDirectoryResponse:
    return gdpr_pb2.ImportDirectoryResponse(
        created_count=result.created,
        updated_count=result.updated,
        unchanged_count=result.unchanged,
        removed_count=result.removed,
    )
