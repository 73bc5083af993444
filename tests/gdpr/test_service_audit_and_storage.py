"""The audit trail over gRPC (who, what, when, why; hash chain) and the append-only triggers."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from awareness.gdpr.v1 import gdpr_pb2
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from services.gdpr.domain.audit import AuditEntry, verify_chain
from services.runtime.db import create_db_engine
from tests.gdpr.conftest import ADMIN, Harness
from tests.gdpr.test_service_keys_and_erasure import unique_subject

MAY = datetime(2025, 5, 5, tzinfo=UTC)
APPEND_ONLY = ("consent_records", "retention_runs", "kek_rotations", "audit_records")


async def all_audit_records(harness: Harness, *, action: str = "") -> list[gdpr_pb2.AuditRecord]:
    records: list[gdpr_pb2.AuditRecord] = []
    token = ""
    while True:
        page = await harness.dpo.ListAuditRecords(
            gdpr_pb2.ListAuditRecordsRequest(page_size=2, page_token=token, action=action)
        )
        records.extend(page.audit_records)
        token = page.next_page_token
        if not token:
            return records


async def test_every_gdpr_action_is_audited_with_who_what_when_why_in_a_verifiable_chain(
    harness: Harness,
) -> None:
    subject = unique_subject()
    await harness.ingest_event(subject=subject, occurred_at=MAY, summary="s")
    pseudonym = next(iter(harness.fake_ingest.records))
    await harness.dpo.WithdrawConsent(
        gdpr_pb2.WithdrawConsentRequest(subject=subject, purpose="profiling", reason="objection DPO-20")
    )
    async for _ in harness.dpo.ExportSubject(
        gdpr_pb2.ExportSubjectRequest(subject=subject, reason="Art. 15 DPO-21")
    ):
        pass
    await harness.dpo.SetRetentionRule(
        gdpr_pb2.SetRetentionRuleRequest(rule=gdpr_pb2.RetentionRule(retention_days=3000), reason="policy v2")
    )
    await harness.dpo.ApplyRetention(gdpr_pb2.ApplyRetentionRequest(dry_run=True, reason="preview"))
    await harness.stub(ADMIN).RotateKek(gdpr_pb2.RotateKekRequest(reason="yearly rotation"))
    await harness.dpo.EraseSubject(gdpr_pb2.EraseSubjectRequest(subject=subject, reason="Art. 17 DPO-22"))

    records = await all_audit_records(harness)

    assert [(r.action, r.actor) for r in records] == [
        ("subject.erase", "dpo:dana"),
        ("kek.rotate", "admin:ada"),
        ("retention.dry_run", "dpo:dana"),
        ("retention.set_rule", "dpo:dana"),
        ("subject.export", "dpo:dana"),
        ("consent.withdraw", "dpo:dana"),
    ]
    by_action = {r.action: r for r in records}
    assert (
        by_action["subject.erase"].target == pseudonym
        and by_action["subject.erase"].reason == "Art. 17 DPO-22"
    )
    assert by_action["subject.export"].reason == "Art. 15 DPO-21"
    assert "objection DPO-20" in by_action["consent.withdraw"].reason
    assert "yearly rotation" in by_action["kek.rotate"].reason
    assert [r.sequence for r in records] == [6, 5, 4, 3, 2, 1]
    assert all(subject not in str(record) for record in records)
    entries = [
        AuditEntry(
            actor=r.actor,
            action=r.action,
            target=r.target,
            at=r.time.ToDatetime(tzinfo=UTC),
            reason=r.reason,
            request_id=r.request_id,
            prev_hash=r.prev_hash,
            entry_hash=r.entry_hash,
        )
        for r in reversed(records)
    ]
    # The chain verifies from what a client received: the stored time round-trips to the microsecond.
    assert verify_chain(entries) is None
    assert harness.service.store.verify_audit() is None
    only_erasures = await all_audit_records(harness, action="subject.erase")
    assert [r.sequence for r in only_erasures] == [6]


def _engine(harness: Harness) -> Engine:
    # The service's own engine settings: on PostgreSQL, search_path = awareness_gdpr.
    return create_db_engine(harness.database_url, service="gdpr")


async def test_append_only_tables_refuse_update_and_delete(harness: Harness) -> None:
    subject = unique_subject()
    await harness.ingest_event(subject=subject, occurred_at=MAY)
    await harness.dpo.WithdrawConsent(gdpr_pb2.WithdrawConsentRequest(subject=subject, purpose="profiling"))
    await harness.dpo.ApplyRetention(gdpr_pb2.ApplyRetentionRequest(dry_run=True))
    await harness.stub(ADMIN).RotateKek(gdpr_pb2.RotateKekRequest())
    engine = _engine(harness)
    try:
        for table in APPEND_ONLY:
            with engine.connect() as connection:
                assert connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one() >= 1
            for statement in (f"UPDATE {table} SET actor = 'mallory'", f"DELETE FROM {table}"):
                with pytest.raises(DBAPIError, match="append-only"), engine.begin() as connection:
                    connection.execute(text(statement))
        assert harness.service.store.verify_audit() is None
    finally:
        engine.dispose()


async def test_erasure_records_are_immutable_except_write_once_outcomes(harness: Harness) -> None:
    subject = unique_subject()
    await harness.ingest_event(subject=subject, occurred_at=MAY)
    harness.fake_ingest.down = True  # leaves both outcome columns empty
    record = await harness.dpo.EraseSubject(
        gdpr_pb2.EraseSubjectRequest(subject=subject, reason="ticket DPO-30")
    )
    erasure_id = record.name.removeprefix("erasures/")
    engine = _engine(harness)
    where = {"id": erasure_id}
    try:
        with engine.begin() as connection:  # NULL -> value: allowed once
            connection.execute(
                text("UPDATE erasure_records SET events_affected = 1 WHERE erasure_id = :id"), where
            )
        refused = (
            "UPDATE erasure_records SET events_affected = 99 WHERE erasure_id = :id",
            "UPDATE erasure_records SET pseudonym = 'psn_other' WHERE erasure_id = :id",
            "UPDATE erasure_records SET reason = 'rewritten' WHERE erasure_id = :id",
            "DELETE FROM erasure_records WHERE erasure_id = :id",
        )
        for statement in refused:
            with pytest.raises(DBAPIError, match="append-only"), engine.begin() as connection:
                connection.execute(text(statement), where)
        with engine.connect() as connection:
            row = connection.execute(
                text("SELECT events_affected, reason FROM erasure_records WHERE erasure_id = :id"), where
            ).one()
        assert tuple(row) == (1, "ticket DPO-30")
    finally:
        engine.dispose()
