"""GetSubjectKeys under concurrency: callers share transactions, a first sighting gets one key, erasure wins.

Runs on SQLite and PostgreSQL (the harness's ``database_url`` parameter).
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

from awareness.gdpr.v1 import gdpr_pb2
from sqlalchemy import create_engine, text

from services.gdpr.keysource import load_key_material
from services.gdpr.service.transactions import GdprStore, KeyRequest
from services.runtime import db
from tests.gdpr.conftest import Harness, timestamp

MARCH = datetime(2025, 3, 14, 9, 30, tzinfo=UTC)


def request_for(*subjects: str) -> gdpr_pb2.GetSubjectKeysRequest:
    return gdpr_pb2.GetSubjectKeysRequest(
        lookups=[
            gdpr_pb2.SubjectKeyLookup(
                subject=subject, occurred_at=timestamp(MARCH), event_type="phishing.clicked"
            )
            for subject in subjects
        ]
    )


def batches_observed(harness: Harness) -> tuple[float, float]:
    """(transactions, lookups) counted by the issuance histogram so far."""
    registry = harness.metrics.registry
    count = registry.get_sample_value("awareness_gdpr_key_issuance_batch_lookups_count") or 0.0
    total = registry.get_sample_value("awareness_gdpr_key_issuance_batch_lookups_sum") or 0.0
    return count, total


async def test_concurrent_first_sightings_of_one_person_get_one_key(harness: Harness) -> None:
    subject = f"person-{uuid.uuid4().hex}@example.org"
    replies = await asyncio.gather(
        *(harness.internal.GetSubjectKeys(request_for(subject)) for _ in range(40))
    )
    keys = {(reply.keys[0].pseudonym, reply.keys[0].key_id, reply.keys[0].data_key) for reply in replies}
    assert len(keys) == 1
    assert harness.metrics.registry.get_sample_value("awareness_gdpr_data_keys_created_total") == 1


async def test_concurrent_callers_share_transactions_and_each_gets_its_own_keys(harness: Harness) -> None:
    people = [f"person-{uuid.uuid4().hex}@example.org" for _ in range(120)]
    calls = [people[index : index + 2] for index in range(0, len(people), 2)]
    before = batches_observed(harness)
    replies = await asyncio.gather(*(harness.internal.GetSubjectKeys(request_for(*pair)) for pair in calls))
    after = batches_observed(harness)
    transactions, lookups = after[0] - before[0], after[1] - before[1]
    assert lookups == len(people)
    # 60 concurrent calls: fewer transactions than calls (how many fewer depends on the scheduler).
    assert transactions < len(calls)
    # Each caller's answer is about its own people, in its order: the same key when asked again alone.
    for pair, reply in zip(calls, replies, strict=True):
        assert [key.key_period for key in reply.keys] == ["2025-03", "2025-03"]
        assert reply.keys[0].pseudonym != reply.keys[1].pseudonym
        alone = await harness.internal.GetSubjectKeys(request_for(*pair))
        assert [key.key_id for key in alone.keys] == [key.key_id for key in reply.keys]
    assert len({key.pseudonym for reply in replies for key in reply.keys}) == len(people)


async def test_an_erasure_racing_issuance_leaves_no_key_behind(harness: Harness) -> None:
    subject = f"person-{uuid.uuid4().hex}@example.org"
    first = await harness.internal.GetSubjectKeys(request_for(subject))
    issuing = [
        asyncio.ensure_future(harness.internal.GetSubjectKeys(request_for(subject))) for _ in range(20)
    ]
    erasure = await harness.dpo.EraseSubject(
        gdpr_pb2.EraseSubjectRequest(subject=subject, reason="Art. 17 ticket", request_id=uuid.uuid4().hex)
    )
    await asyncio.gather(*issuing, return_exceptions=True)
    assert erasure.pseudonym == first.keys[0].pseudonym
    # The erased key is gone: it cannot be unwrapped again, whatever the racing calls did.
    reply = await harness.internal.UnwrapDataKeys(
        gdpr_pb2.UnwrapDataKeysRequest(
            keys=[gdpr_pb2.DataKeyRef(pseudonym=first.keys[0].pseudonym, key_period="2025-03")]
        )
    )
    assert reply.keys[0].HasField("error") and not reply.keys[0].data_key


def event_types_recorded(harness: Harness, key_id: str) -> set[str]:
    engine = create_engine(harness.database_url)
    try:
        with engine.connect() as connection:
            if engine.dialect.name == "postgresql":
                connection.execute(text("SET search_path TO awareness_gdpr"))
            rows = connection.execute(
                text("SELECT event_type FROM data_key_event_types WHERE key_id = :key_id"), {"key_id": key_id}
            )
            return {row.event_type for row in rows}
    finally:
        engine.dispose()


async def test_a_known_key_is_read_back_and_a_new_event_type_is_recorded_on_it(harness: Harness) -> None:
    subject = f"person-{uuid.uuid4().hex}@example.org"
    created = harness.metrics.registry.get_sample_value("awareness_gdpr_data_keys_created_total") or 0.0
    first = (await harness.internal.GetSubjectKeys(request_for(subject))).keys[0]
    again = (await harness.internal.GetSubjectKeys(request_for(subject, subject))).keys
    assert {(key.key_id, key.data_key) for key in again} == {(first.key_id, first.data_key)}
    assert event_types_recorded(harness, first.key_id) == {"phishing.clicked"}

    # The same person's same month under another event type: the same key, the type recorded too
    # (retention keeps a key as long as its longest-kept event type needs it).
    reported = gdpr_pb2.GetSubjectKeysRequest(
        lookups=[
            gdpr_pb2.SubjectKeyLookup(
                subject=subject, occurred_at=timestamp(MARCH), event_type="phishing.reported"
            )
        ]
    )
    other = (await harness.internal.GetSubjectKeys(reported)).keys[0]
    assert (other.key_id, other.data_key) == (first.key_id, first.data_key)
    assert event_types_recorded(harness, first.key_id) == {"phishing.clicked", "phishing.reported"}
    # Another month is another key; April's and March's both come back from one mixed call.
    april = datetime(2025, 4, 2, tzinfo=UTC)
    mixed = gdpr_pb2.GetSubjectKeysRequest(
        lookups=[
            gdpr_pb2.SubjectKeyLookup(
                subject=subject, occurred_at=timestamp(april), event_type="phishing.clicked"
            ),
            gdpr_pb2.SubjectKeyLookup(
                subject=subject, occurred_at=timestamp(MARCH), event_type="phishing.clicked"
            ),
        ]
    )
    april_key, march_key = (await harness.internal.GetSubjectKeys(mixed)).keys
    assert (april_key.key_period, march_key.key_period) == ("2025-04", "2025-03")
    assert march_key.key_id == first.key_id and april_key.key_id != first.key_id
    after = harness.metrics.registry.get_sample_value("awareness_gdpr_data_keys_created_total") or 0.0
    assert after - created == 2  # March's and April's, each once


async def test_two_replicas_creating_the_same_people_at_once_agree_on_one_key_each(harness: Harness) -> None:
    """Each replica's write lock serialises only its own issuance: two replicas meet in the
    database, where the one that inserts second gets nothing back and reads the first's rows."""
    material = load_key_material(env={}, data_dir=harness.data_dir)
    engines = [db.create_db_engine(harness.database_url, service="gdpr") for _ in range(2)]
    replicas = [GdprStore(engine=e, sessions=db.session_factory(e), material=material) for e in engines]
    people = [f"person-{uuid.uuid4().hex}@example.org" for _ in range(300)]
    requests = [KeyRequest(subject=p, occurred_at=MARCH, event_type="phishing.clicked") for p in people]
    try:
        # Each replica asks for everyone, in its own order, from its own thread.
        first, second = await asyncio.gather(
            asyncio.to_thread(replicas[0].issue_keys, requests),
            asyncio.to_thread(replicas[1].issue_keys, list(reversed(requests))),
        )
    finally:
        for engine in engines:
            engine.dispose()
    by_person = dict(zip(people, first.keys, strict=True))
    for person, key in zip(reversed(people), second.keys, strict=True):
        mine = by_person[person]
        assert (key.pseudonym, key.key_id, key.data_key) == (mine.pseudonym, mine.key_id, mine.data_key)
    assert first.keys_created + second.keys_created == len(people)
    # What the service answers is the same key too: nothing else was created.
    reply = await harness.internal.GetSubjectKeys(request_for(people[0]))
    assert reply.keys[0].key_id == by_person[people[0]].key_id
