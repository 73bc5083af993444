"""gdpr's stored rows as their proto messages (the transport's side of ``services.gdpr.api``)."""

from __future__ import annotations

from awareness.gdpr.v1 import gdpr_pb2

from services.gdpr.domain.consent import ConsentAction
from services.gdpr.models import AuditRecordRow, ConsentRecordRow, ErasureRecordRow
from services.gdpr.service.transactions import RuleView, rule_name
from services.runtime.timestamps import optional_timestamp


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
