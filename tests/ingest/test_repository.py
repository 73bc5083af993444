"""The ingest repository's hot-path writes and indexes, on SQLite and the real PostgreSQL."""

from __future__ import annotations

import uuid

import pytest
from awareness.ingest.v1 import ingest_pb2
from sqlalchemy import Engine, Table, inspect, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from services.ingest import repository
from services.runtime import migrations
from services.runtime.db import create_db_engine, session_factory, transaction

SCORED, PENDING = repository.SCORING_SCORED, repository.SCORING_PENDING


def _record(event_id: str, **changes: object) -> tuple[object, ...]:
    values: dict[str, object] = {
        "event_id": event_id,
        "type": "phishing.clicked",
        "source": "gophish ✓ o'brien",
        "occurred_at_us": 1_800_000_000_123_456,
        "severity": 5,
        "subject_pseudonym": "ps_" + "x" * 40,
        "key_period": "2026-11",
        "key_id": "key-1",
        "nonce": bytes(range(12)),
        "ciphertext": bytes(range(256)) * 3,
        "receive_time_us": 1_800_000_001_000_000,
        "content_fingerprint": "f" * 64,
        "leaf_hash": b"\x00" * 31 + b"\xff",
        "record_version": 1,
        "system_payload": None,
        "dimensions": None,
        **changes,
    }
    return tuple(values[name] for name in repository.RECORD_COLUMNS)


def _metadata(event_id: str, **changes: object) -> tuple[object, ...]:
    values: dict[str, object] = {name: 0 for name in repository.METADATA_COLUMNS}
    values.update(
        event_id=event_id,
        subject_pseudonym="ps_x",
        type="phishing.clicked",
        source="gophish",
        risk_score=None,
        model_version="",
        scoring_note="",
        violations="[]",
        evaluation_note="",
        label_note="",
        labeled_by="",
        label_time_us=None,
        occurred_at_us=-1,  # before 1970: signed 64-bit
        update_time_us=2**62,
        department="",
        analytics_state=repository.ANALYTICS_PENDING,
    )
    values.update(changes)
    return tuple(values[name] for name in repository.METADATA_COLUMNS)


def test_bulk_insert_stores_every_column_type_exactly(engine: Engine) -> None:
    # On PostgreSQL this is a binary COPY: the types come from the model, so a mismatch would
    # show here as a refused COPY or a changed value.
    sessions = session_factory(engine)
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    rows = [_record(first), _record(second, system_payload='{"summary":"ünïcode"}', severity=1)]
    with transaction(sessions) as session:
        repository.insert_events(session, records=rows, metadata=[_metadata(first), _metadata(second)])
    with sessions() as session:
        stored = session.execute(
            select(*(repository.RECORDS.c[name] for name in repository.RECORD_COLUMNS)).order_by(
                repository.RECORDS.c.seq
            )
        ).all()
        metadata = session.execute(
            select(*(repository.METADATA.c[name] for name in repository.METADATA_COLUMNS)).where(
                repository.METADATA.c.event_id == first
            )
        ).one()
    assert [tuple(bytes(v) if isinstance(v, memoryview) else v for v in row) for row in stored] == rows
    assert tuple(metadata) == _metadata(first)


def test_binary_copy_still_enforces_column_lengths(fresh_postgres_db: str) -> None:
    # PostgreSQL only: SQLite does not enforce VARCHAR lengths at all.
    engine = create_db_engine(fresh_postgres_db, service="ingest")
    try:
        migrations.upgrade("ingest", engine)
        with pytest.raises(DBAPIError, match="too long"), transaction(session_factory(engine)) as session:
            repository.insert_events(
                session, records=[_record(str(uuid.uuid4()), type="t" * 65)], metadata=[]
            )
    finally:
        engine.dispose()


def _access(event_id: str, ordinal: int) -> tuple[object, ...]:
    values: dict[str, object] = {
        "event_id": event_id,
        "pseudonym": f"ps_{ordinal:040d}",
        "ordinal": ordinal,
        "principal": "svc:gateway",
        "action": "events.read",
        "resource": "events/e1",
        "outcome": "OK",
        "service": "ingest",
        "time_us": 1_800_000_002_000_000,
    }
    return tuple(values[name] for name in repository.ACCESS_COLUMNS)


def _stored(
    sessions: sessionmaker[Session], table: Table, columns: tuple[str, ...]
) -> set[tuple[object, ...]]:
    with sessions() as session:
        rows = session.execute(select(*(table.c[name] for name in columns))).all()
    return {tuple(bytes(v) if isinstance(v, memoryview) else v for v in row) for row in rows}


# A few events go in one pipelined round trip of INSERTs; more go by COPY. Both must store the same.
@pytest.mark.parametrize("events", [1, repository.PIPELINED_EVENTS, repository.PIPELINED_EVENTS + 1])
def test_store_events_stores_every_column_exactly_by_either_path(engine: Engine, events: int) -> None:
    sessions = session_factory(engine)
    ids = [str(uuid.uuid4()) for _ in range(events)]
    records = [
        _record(event_id, system_payload='{"summary":"ünïcode"}' if i % 2 else None)
        for i, event_id in enumerate(ids)
    ]
    metadata = [_metadata(event_id) for event_id in ids]
    access = [_access(ids[0], ordinal) for ordinal in range(2)]
    with transaction(sessions) as session:
        repository.store_events(session, records=records, metadata=metadata, access=access)
    assert _stored(sessions, repository.RECORDS, repository.RECORD_COLUMNS) == set(records)
    assert _stored(sessions, repository.METADATA, repository.METADATA_COLUMNS) == set(metadata)
    assert _stored(sessions, repository.ACCESS, repository.ACCESS_COLUMNS) == set(access)


@pytest.mark.parametrize("events", [1, repository.PIPELINED_EVENTS + 1])
def test_store_events_raises_sqlalchemys_integrity_error_for_a_stored_id(engine: Engine, events: int) -> None:
    sessions = session_factory(engine)
    stored = str(uuid.uuid4())
    with transaction(sessions) as session:
        repository.store_events(session, records=[_record(stored)], metadata=[_metadata(stored)])
    ids = [stored, *(str(uuid.uuid4()) for _ in range(events - 1))]
    # Rows for a later table follow the refused one: the error raised is still the refusal.
    with pytest.raises(IntegrityError), transaction(sessions) as session:
        repository.store_events(
            session,
            records=[_record(event_id) for event_id in ids],
            metadata=[_metadata(event_id) for event_id in ids[1:]],
            access=[_access(ids[-1], 0)],
        )
    assert _stored(sessions, repository.RECORDS, ("event_id",)) == {(stored,)}  # the batch rolled back


@pytest.mark.parametrize("events", [1, repository.PIPELINED_EVENTS + 1])
def test_store_events_holds_the_append_barrier_until_commit(fresh_postgres_db: str, events: int) -> None:
    # The integrator takes the barrier exclusively to wait out in-flight inserts (settled_seq).
    engine = create_db_engine(fresh_postgres_db, service="ingest")
    try:
        migrations.upgrade("ingest", engine)
        sessions = session_factory(engine)
        probe = "SELECT pg_try_advisory_lock(:key)"

        def integrator_could_settle() -> bool:
            with engine.connect() as other:
                taken = bool(other.execute(text(probe), {"key": repository.APPEND_BARRIER_KEY}).scalar_one())
                if taken:
                    other.execute(
                        text("SELECT pg_advisory_unlock(:key)"), {"key": repository.APPEND_BARRIER_KEY}
                    )
                return taken

        ids = [str(uuid.uuid4()) for _ in range(events)]
        with transaction(sessions) as session:
            repository.store_events(session, records=[_record(event_id) for event_id in ids], metadata=[])
            assert not integrator_could_settle()
        assert integrator_could_settle()
    finally:
        engine.dispose()


def test_pipelined_inserts_still_enforce_column_lengths(fresh_postgres_db: str) -> None:
    engine = create_db_engine(fresh_postgres_db, service="ingest")
    try:
        migrations.upgrade("ingest", engine)
        with pytest.raises(DBAPIError, match="too long"), transaction(session_factory(engine)) as session:
            repository.store_events(session, records=[_record(str(uuid.uuid4()), type="t" * 65)], metadata=[])
    finally:
        engine.dispose()


def test_label_index_holds_only_labelled_events(engine: Engine) -> None:
    indexes = {index["name"]: index for index in inspect(engine).get_indexes("event_metadata")}
    assert indexes["ix_event_metadata_label"]["column_names"] == ["label"]
    with engine.connect() as connection:
        if engine.dialect.name == "postgresql":
            definition = connection.execute(
                text("SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_event_metadata_label'")
            ).scalar_one()
        else:
            definition = connection.execute(
                text("SELECT sql FROM sqlite_master WHERE name = 'ix_event_metadata_label'")
            ).scalar_one()
    assert "WHERE" in definition.upper() and "label <> 0" in definition


def test_a_repeated_event_id_raises_sqlalchemys_integrity_error(engine: Engine) -> None:
    # The committer's optimistic insert relies on exactly this exception to retry with a lookup.
    sessions = session_factory(engine)
    event_id = str(uuid.uuid4())
    with transaction(sessions) as session:
        repository.insert_events(session, records=[_record(event_id)], metadata=[_metadata(event_id)])
    with pytest.raises(IntegrityError), transaction(sessions) as session:
        repository.insert_events(session, records=[_record(event_id)], metadata=[])


def test_a_record_gets_one_leaf_and_leaves_are_indexed_by_seq(engine: Engine) -> None:
    sessions = session_factory(engine)
    event_id = str(uuid.uuid4())
    with transaction(sessions) as session:
        repository.insert_events(session, records=[_record(event_id)], metadata=[])
        seq = session.execute(select(repository.RECORDS.c.seq)).scalar_one()
        leaf = (0, event_id, seq, b"\x01" * 32, 1)
        repository.insert_leaves_and_nodes(session, leaves=[leaf], nodes={})
    with pytest.raises(IntegrityError), transaction(sessions) as session:
        repository.insert_leaves_and_nodes(session, leaves=[(1, event_id, seq, b"\x01" * 32, 1)], nodes={})
    indexes = {index["name"]: index for index in inspect(engine).get_indexes("leaves")}
    assert indexes["uq_leaves_seq"]["unique"] and indexes["uq_leaves_seq"]["column_names"] == ["seq"]
    with sessions() as session:
        found = repository.leaf_by_event(session, event_id=event_id)
        assert found is not None and found.leaf_index == 0
        assert repository.find_receipts(session, event_ids=[event_id])[event_id].leaf_index == 0


def test_the_risk_level_filter_keeps_scored_events_at_or_above_the_level(engine: Engine) -> None:
    sessions = session_factory(engine)
    # (risk level, scoring state): the model's levels, not its score thresholds, decide.
    levels = {
        str(uuid.uuid4()): (ingest_pb2.RISK_LEVEL_CRITICAL, SCORED),
        str(uuid.uuid4()): (ingest_pb2.RISK_LEVEL_HIGH, SCORED),
        str(uuid.uuid4()): (ingest_pb2.RISK_LEVEL_MODERATE, SCORED),
        str(uuid.uuid4()): (ingest_pb2.RISK_LEVEL_UNSPECIFIED, PENDING),
    }
    with transaction(sessions) as session:
        repository.insert_events(
            session,
            records=[_record(event_id) for event_id in levels],
            metadata=[
                _metadata(event_id, risk_level=level, scoring_state=state, risk_score=0.1 * level)
                for event_id, (level, state) in levels.items()
            ],
        )

    def matching(level: int) -> set[str]:
        where = repository.EventFilter(min_risk_level=level)
        with sessions() as session:
            return set(repository.list_event_ids(session, where=where, after=None, limit=10))

    critical, high, moderate, _pending = levels
    assert matching(ingest_pb2.RISK_LEVEL_HIGH) == {critical, high}
    assert matching(ingest_pb2.RISK_LEVEL_LOW) == {critical, high, moderate}
    assert matching(ingest_pb2.RISK_LEVEL_UNSPECIFIED) == set(levels)  # no filter


def test_the_riskiest_first_order_pages_through_equal_scores_by_receive_time(engine: Engine) -> None:
    sessions = session_factory(engine)
    # (score, receive time): two pairs of equal scores, and one event not scored at all.
    specs = [(0.9, 1), (0.5, 2), (0.9, 3), (0.2, 4), (0.5, 5), (None, 6)]
    ids = [str(uuid.uuid4()) for _ in specs]
    with transaction(sessions) as session:
        repository.insert_events(
            session,
            records=[_record(event_id) for event_id in ids],
            metadata=[
                _metadata(
                    event_id,
                    risk_score=score,
                    scoring_state=SCORED if score is not None else PENDING,
                    receive_time_us=received,
                )
                for event_id, (score, received) in zip(ids, specs, strict=True)
            ],
        )
    scores = {event_id: (score, received) for event_id, (score, received) in zip(ids, specs, strict=True)}
    seen: list[str] = []
    after: tuple[float, int, str] | None = None
    while True:
        with sessions() as session:
            page = repository.list_riskiest_event_ids(
                session, where=repository.EventFilter(), after=after, limit=2
            )
        if not page:
            break
        seen += page
        last = page[-1]
        score, received = scores[last]
        assert score is not None
        after = (score, received, last)
    assert seen == [ids[2], ids[0], ids[4], ids[1], ids[3]]  # riskiest, then newest; unscored never
