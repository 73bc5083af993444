"""LookupSubject over gRPC, on SQLite and PostgreSQL: the pseudonym of a registered subject, NOT_FOUND for
an unknown or erased one, and never a registry entry, key or audit record created by asking."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import grpc
from awareness.gdpr.v1 import gdpr_pb2
from grpc_status import rpc_status
from sqlalchemy import create_engine, text

from services.runtime.errors import field_violations
from tests.gdpr.conftest import ANALYST, Harness
from tests.grpc_errors import reason_of, rpc_error

MARCH = datetime(2025, 3, 14, 9, 30, tzinfo=UTC)


def unique_subject() -> str:
    return f"person-{uuid.uuid4().hex}@example.org"


def row_counts(harness: Harness) -> dict[str, int]:
    """Rows of every table a lookup could be tempted to write to."""
    engine = create_engine(harness.database_url)
    try:
        with engine.connect() as connection:
            if engine.dialect.name == "postgresql":
                connection.execute(text("SET search_path TO awareness_gdpr"))
            return {
                table: int(connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())
                for table in ("subjects", "data_keys", "audit_records", "consent_records")
            }
    finally:
        engine.dispose()


def lookup(subject: str) -> gdpr_pb2.LookupSubjectRequest:
    return gdpr_pb2.LookupSubjectRequest(subject=subject)


async def test_lookup_answers_the_pseudonym_of_a_registered_subject(harness: Harness) -> None:
    subject = unique_subject()
    record = await harness.ingest_event(subject=subject, occurred_at=MARCH)
    pseudonym = next(iter(harness.fake_ingest.records))
    before = row_counts(harness)

    found = await harness.internal.LookupSubject(lookup(subject))
    # The same person however a source spelled them (case, surrounding spaces), as GetSubjectKeys.
    respelled = await harness.internal.LookupSubject(lookup(f"  {subject.upper()} "))

    assert found.pseudonym == respelled.pseudonym == pseudonym
    assert record.event_id and row_counts(harness) == before


async def test_lookup_of_an_unknown_subject_is_not_found_and_registers_nobody(harness: Harness) -> None:
    await harness.ingest_event(subject=unique_subject(), occurred_at=MARCH)  # someone else exists
    stranger = unique_subject()
    before = row_counts(harness)

    for _ in range(2):  # asking twice still finds nobody: the first ask created nothing
        missing = await rpc_error(harness.internal.LookupSubject(lookup(stranger)))
        assert missing.code() == grpc.StatusCode.NOT_FOUND
        assert reason_of(missing) == "SUBJECT_NOT_FOUND"
        assert stranger not in (missing.details() or "")  # identifiers never go into error messages

    assert row_counts(harness) == before
    assert harness.metrics.registry.get_sample_value("awareness_gdpr_data_keys_created_total") == 1


async def test_lookup_after_erasure_is_not_found(harness: Harness) -> None:
    subject = unique_subject()
    await harness.ingest_event(subject=subject, occurred_at=MARCH)
    assert (await harness.internal.LookupSubject(lookup(subject))).pseudonym

    await harness.dpo.EraseSubject(
        gdpr_pb2.EraseSubjectRequest(
            subject=subject, reason="Art. 17, ticket DPO-9", request_id=str(uuid.uuid4())
        )
    )
    before = row_counts(harness)

    gone = await rpc_error(harness.internal.LookupSubject(lookup(subject)))
    assert gone.code() == grpc.StatusCode.NOT_FOUND and reason_of(gone) == "SUBJECT_NOT_FOUND"
    assert row_counts(harness) == before  # the erased person was not re-registered


async def test_lookup_is_internal_only_and_validates_the_identifier(harness: Harness) -> None:
    for caller in (harness.stub(ANALYST), harness.dpo):
        denied = await rpc_error(caller.LookupSubject(lookup("someone@example.org")))
        assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
    for blank in ("", "   "):
        invalid = await rpc_error(harness.internal.LookupSubject(lookup(blank)))
        assert invalid.code() == grpc.StatusCode.INVALID_ARGUMENT
        status = rpc_status.from_call(invalid)
        assert status is not None
        assert {v.field for v in field_violations(status)} == {"subject"}
