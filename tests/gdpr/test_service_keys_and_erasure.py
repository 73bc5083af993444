"""GetSubjectKeys, UnwrapDataKeys and EraseSubject over gRPC, on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import grpc
from awareness.gdpr.v1 import gdpr_pb2
from grpc_status import rpc_status
from sqlalchemy import create_engine, text

from services.gdpr.service.transactions import ERASURE_EVENT_NAMESPACE
from services.runtime.errors import field_violations
from tests.gdpr.conftest import ANALYST, Harness, timestamp
from tests.grpc_errors import reason_of, rpc_error

MARCH = datetime(2025, 3, 14, 9, 30, tzinfo=UTC)
APRIL = datetime(2025, 4, 2, 17, 0, tzinfo=UTC)


def lookup(subject: str, moment: datetime, event_type: str = "phishing.clicked") -> gdpr_pb2.SubjectKeyLookup:
    return gdpr_pb2.SubjectKeyLookup(subject=subject, occurred_at=timestamp(moment), event_type=event_type)


def unique_subject() -> str:
    return f"person-{uuid.uuid4().hex}@example.org"


async def test_keys_are_created_once_per_subject_and_period_and_returned_in_order(harness: Harness) -> None:
    alice, bob = unique_subject(), unique_subject()
    first = await harness.internal.GetSubjectKeys(
        gdpr_pb2.GetSubjectKeysRequest(
            lookups=[lookup(alice, MARCH), lookup(bob, MARCH), lookup(alice, APRIL)]
        )
    )
    again = await harness.internal.GetSubjectKeys(
        # The same person spelled differently (case, spaces) reaches the same pseudonym and key.
        gdpr_pb2.GetSubjectKeysRequest(lookups=[lookup(f"  {alice.upper()} ", MARCH.replace(day=30))])
    )
    alice_march, bob_march, alice_april = first.keys
    assert [k.key_period for k in first.keys] == ["2025-03", "2025-03", "2025-04"]
    assert alice_march.pseudonym == alice_april.pseudonym != bob_march.pseudonym
    assert alice_march.pseudonym.startswith("psn_") and alice.split("@")[0] not in alice_march.pseudonym
    assert len({alice_march.key_id, bob_march.key_id, alice_april.key_id}) == 3
    assert len(alice_march.data_key) == 32 and alice_march.data_key != alice_april.data_key
    assert again.keys[0].key_id == alice_march.key_id and again.keys[0].data_key == alice_march.data_key
    assert alice_march.cache_ttl.seconds == 900
    assert harness.metrics.registry.get_sample_value("awareness_gdpr_keys_issued_total") == 4
    assert harness.metrics.registry.get_sample_value("awareness_gdpr_data_keys_created_total") == 3


async def test_unwrap_returns_each_issued_key_and_not_found_per_unknown_key(harness: Harness) -> None:
    subject = unique_subject()
    issued = await harness.internal.GetSubjectKeys(
        gdpr_pb2.GetSubjectKeysRequest(lookups=[lookup(subject, MARCH)])
    )
    key = issued.keys[0]
    reply = await harness.internal.UnwrapDataKeys(
        gdpr_pb2.UnwrapDataKeysRequest(
            keys=[
                gdpr_pb2.DataKeyRef(pseudonym=key.pseudonym, key_period="2025-03"),
                gdpr_pb2.DataKeyRef(pseudonym=key.pseudonym, key_period="2019-01"),
            ]
        )
    )
    found, missing = reply.keys
    assert found.WhichOneof("result") == "data_key"
    assert (found.data_key, found.key_id) == (key.data_key, key.key_id)
    assert missing.WhichOneof("result") == "error"
    assert missing.error.code == grpc.StatusCode.NOT_FOUND.value[0]


async def test_key_rpcs_are_internal_only_and_validate_every_lookup(harness: Harness) -> None:
    denied = await rpc_error(
        harness.stub(ANALYST).GetSubjectKeys(gdpr_pb2.GetSubjectKeysRequest(lookups=[lookup("a@b.c", MARCH)]))
    )
    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
    dpo_denied = await rpc_error(harness.dpo.UnwrapDataKeys(gdpr_pb2.UnwrapDataKeysRequest()))
    assert dpo_denied.code() == grpc.StatusCode.PERMISSION_DENIED
    invalid = await rpc_error(
        harness.internal.GetSubjectKeys(
            gdpr_pb2.GetSubjectKeysRequest(
                lookups=[lookup("ok@example.org", MARCH), gdpr_pb2.SubjectKeyLookup(subject="   ")]
            )
        )
    )
    assert invalid.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(invalid)
    assert status is not None
    assert {v.field for v in field_violations(status)} == {"lookups[1].subject", "lookups[1].occurred_at"}


async def test_erasure_shreds_every_key_and_appends_a_log_event_without_personal_data(
    harness: Harness,
) -> None:
    subject = unique_subject()
    for moment in (MARCH, MARCH, APRIL):
        await harness.ingest_event(
            subject=subject, occurred_at=moment, summary="clicked", details={"url": "x"}
        )
    pseudonym = next(iter(harness.fake_ingest.records))

    record = await harness.dpo.EraseSubject(
        gdpr_pb2.EraseSubjectRequest(subject=subject, reason="Art. 17 ticket DPO-1", request_id="req-erase-1")
    )

    erasure_id = record.name.removeprefix("erasures/")
    assert record.pseudonym == pseudonym
    assert (record.keys_shredded, record.events_affected) == (2, 3)
    assert (record.actor, record.reason, record.request_id) == (
        "dpo:dana",
        "Art. 17 ticket DPO-1",
        "req-erase-1",
    )
    assert record.log_event_id == str(uuid.uuid5(ERASURE_EVENT_NAMESPACE, erasure_id))
    assert harness.fake_ingest.forgotten == [pseudonym]
    (event,) = harness.fake_ingest.appended
    assert (event.event_id, event.type, event.subject_pseudonym) == (
        record.log_event_id,
        "gdpr.erasure",
        pseudonym,
    )
    assert event.subject == "" and event.summary == ""
    assert event.details["erasure"] == record.name and event.details["events_affected"] == "3"
    assert subject not in str(event)

    gone = await harness.internal.UnwrapDataKeys(
        gdpr_pb2.UnwrapDataKeysRequest(
            keys=[gdpr_pb2.DataKeyRef(pseudonym=pseudonym, key_period=p) for p in ("2025-03", "2025-04")]
        )
    )
    assert [item.WhichOneof("result") for item in gone.keys] == ["error", "error"]
    assert await harness.dpo.GetErasureRecord(gdpr_pb2.GetErasureRecordRequest(name=record.name)) == record
    listed = await harness.dpo.ListErasureRecords(gdpr_pb2.ListErasureRecordsRequest())
    assert list(listed.erasure_records) == [record]
    assert harness.metrics.registry.get_sample_value("awareness_gdpr_erasures_total") == 1


async def test_erasing_twice_returns_the_first_record_and_a_new_request_finds_nobody(
    harness: Harness,
) -> None:
    subject = unique_subject()
    await harness.ingest_event(subject=subject, occurred_at=MARCH)
    request = gdpr_pb2.EraseSubjectRequest(
        subject=subject, reason="ticket DPO-2", request_id=str(uuid.uuid4())
    )
    first = await harness.dpo.EraseSubject(request)
    second = await harness.dpo.EraseSubject(request)
    assert second == first
    assert len(harness.fake_ingest.appended) == 1
    assert harness.metrics.registry.get_sample_value("awareness_gdpr_erasures_total") == 1
    # Without the same request id the identifier leads nowhere any more: nothing links it to the pseudonym.
    fresh = await rpc_error(
        harness.dpo.EraseSubject(
            gdpr_pb2.EraseSubjectRequest(subject=subject, reason="again", request_id="other")
        )
    )
    assert fresh.code() == grpc.StatusCode.NOT_FOUND
    assert reason_of(fresh) == "SUBJECT_NOT_FOUND"
    assert subject not in (fresh.details() or "")


async def test_erasure_needs_the_dpo_permission_and_a_reason(harness: Harness) -> None:
    subject = unique_subject()
    await harness.ingest_event(subject=subject, occurred_at=MARCH)
    denied = await rpc_error(
        harness.stub(ANALYST).EraseSubject(gdpr_pb2.EraseSubjectRequest(subject=subject, reason="curious"))
    )
    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
    no_reason = await rpc_error(harness.dpo.EraseSubject(gdpr_pb2.EraseSubjectRequest(subject=subject)))
    assert no_reason.code() == grpc.StatusCode.INVALID_ARGUMENT
    keys = await harness.internal.GetSubjectKeys(
        gdpr_pb2.GetSubjectKeysRequest(lookups=[lookup(subject, MARCH)])
    )
    assert keys.keys[0].pseudonym == next(iter(harness.fake_ingest.records))  # still there


async def test_erasure_with_ingest_down_shreds_now_and_appends_the_log_event_later(harness: Harness) -> None:
    subject = unique_subject()
    await harness.ingest_event(subject=subject, occurred_at=MARCH)
    await harness.ingest_event(subject=subject, occurred_at=APRIL)
    pseudonym = next(iter(harness.fake_ingest.records))
    harness.fake_ingest.down = True

    record = await harness.dpo.EraseSubject(
        gdpr_pb2.EraseSubjectRequest(subject=subject, reason="ticket DPO-3")
    )

    assert record.log_event_id == "" and record.keys_shredded == 2
    gone = await harness.internal.UnwrapDataKeys(
        gdpr_pb2.UnwrapDataKeysRequest(keys=[gdpr_pb2.DataKeyRef(pseudonym=pseudonym, key_period="2025-03")])
    )
    assert gone.keys[0].WhichOneof("result") == "error"
    store, use_cases = harness.service.store, harness.service.use_cases
    erasure_id = record.name.removeprefix("erasures/")
    assert store.log_attempts(erasure_id) == 1
    assert await use_cases.retry_pending_erasures() == 1  # still down: still pending
    assert store.log_attempts(erasure_id) == 2
    assert harness.metrics.registry.get_sample_value("awareness_gdpr_erasure_log_pending") == 1

    harness.fake_ingest.down = False
    assert await use_cases.retry_pending_erasures() == 0
    finished = await harness.dpo.GetErasureRecord(gdpr_pb2.GetErasureRecordRequest(name=record.name))
    assert finished.log_event_id == str(uuid.uuid5(ERASURE_EVENT_NAMESPACE, erasure_id))
    assert finished.events_affected == 2
    assert [event.event_id for event in harness.fake_ingest.appended] == [finished.log_event_id]
    assert store.log_attempts(erasure_id) == 0


async def test_events_after_an_erasure_belong_to_a_new_pseudonym(harness: Harness) -> None:
    subject = unique_subject()
    before = await harness.internal.GetSubjectKeys(
        gdpr_pb2.GetSubjectKeysRequest(lookups=[lookup(subject, MARCH)])
    )
    await harness.dpo.EraseSubject(gdpr_pb2.EraseSubjectRequest(subject=subject, reason="ticket DPO-4"))
    after = await harness.internal.GetSubjectKeys(
        gdpr_pb2.GetSubjectKeysRequest(lookups=[lookup(subject, MARCH)])
    )
    assert after.keys[0].pseudonym != before.keys[0].pseudonym
    assert after.keys[0].data_key != before.keys[0].data_key


async def test_shredded_keys_leave_no_bytes_behind_in_the_store(harness: Harness) -> None:
    """The wrapped key and the lookup HMAC are gone from the raw database (free pages and WAL included)."""
    subject = unique_subject()
    await harness.ingest_event(subject=subject, occurred_at=MARCH)
    engine = create_engine(harness.database_url)
    with engine.connect() as connection:
        if engine.dialect.name == "postgresql":
            connection.execute(text("SET search_path TO awareness_gdpr"))
        wrapped, lookup_hash = connection.execute(
            text("SELECT k.wrapped, s.lookup_hash FROM data_keys k JOIN subjects s USING (pseudonym)")
        ).one()
    engine.dispose()
    secrets_of_subject = [bytes(wrapped), bytes(lookup_hash)]
    raw_before = _raw_store_bytes(harness)
    assert all(_contains(raw_before, value) for value in secrets_of_subject)  # the scan sees the store

    await harness.dpo.EraseSubject(gdpr_pb2.EraseSubjectRequest(subject=subject, reason="ticket DPO-5"))

    raw_after = _raw_store_bytes(harness)
    assert not any(_contains(raw_after, value) for value in secrets_of_subject)


def _contains(raw: bytes, value: bytes) -> bool:
    # SQLite files hold the bytes themselves; pg_dump prints bytea as hex.
    return value in raw or value.hex().encode() in raw


def _raw_store_bytes(harness: Harness) -> bytes:
    if harness.database_url.startswith("sqlite"):
        return b"".join(path.read_bytes() for path in sorted(harness.data_dir.glob("gdpr.db*")))
    from tests.gdpr.dumps import pg_dump

    return pg_dump(harness.database_url)


async def test_a_reason_naming_the_subject_is_refused_because_it_outlives_the_erasure(
    harness: Harness,
) -> None:
    subject = unique_subject()
    await harness.ingest_event(subject=subject, occurred_at=MARCH)
    error = await rpc_error(
        harness.dpo.EraseSubject(
            gdpr_pb2.EraseSubjectRequest(subject=subject, reason=f"request from {subject.upper()}")
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(error)
    assert status is not None and [v.field for v in field_violations(status)] == ["reason"]
    assert subject not in (error.details() or "").casefold()
