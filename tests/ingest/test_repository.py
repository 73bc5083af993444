"""The ingest repository's hot-path writes and indexes, on SQLite and the real PostgreSQL."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

import psycopg
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


# --- the writes and reads after each commit (enrichment, the replay lookup, the analytics feed) ------


def _all_metadata(sessions: sessionmaker[Session]) -> dict[str, dict[str, object]]:
    """Every column of every metadata row (features too, which the inserts leave to its default)."""
    with sessions() as session:
        rows = session.execute(select(repository.METADATA)).mappings().all()
    return {str(row["event_id"]): dict(row) for row in rows}


# One event takes a plain UPDATE on PostgreSQL, more take the unnest join: both must write the same.
@pytest.mark.parametrize("events", [1, 3])
def test_update_metadata_sets_exactly_the_changed_columns(engine: Engine, events: int) -> None:
    sessions = session_factory(engine)
    ids = [str(uuid.uuid4()) for _ in range(events)]
    bystander = str(uuid.uuid4())
    with transaction(sessions) as session:
        repository.insert_events(
            session,
            records=[_record(event_id) for event_id in [*ids, bystander]],
            metadata=[_metadata(event_id, label_time_us=7) for event_id in [*ids, bystander]],
        )
    before = _all_metadata(sessions)
    changes: list[dict[str, object]] = [
        {
            "event_id": event_id,
            "scoring_state": SCORED,
            "risk_score": 0.1 + i / 3 if i != 1 else None,
            "risk_level": 3,
            "model_version": f"m-{i} ✓ o'brien",
            "scoring_note": "",
            "features": '{"events_24h": 3}',
            "evaluation_state": repository.EVALUATION_EVALUATED,
            "violations": '[{"policy": "p", "title": "ünïcode \\"quoted\\""}]',
            "violation_count": 1,
            "evaluation_note": "n" * 4000,
            "label_time_us": None,
            "update_time_us": 2**62 + i,
        }
        for i, event_id in enumerate(ids)
    ]
    # A second change of the first event overrides some of its columns and adds one.
    changes.append(
        {
            "event_id": ids[0],
            "scoring_state": repository.SCORING_SKIPPED,
            "scoring_note": "skipped",
            "label": 2,
        }
    )
    changes.append({"event_id": str(uuid.uuid4()), "label": 1})  # no such event: nothing changes
    with transaction(sessions) as session:
        repository.update_metadata(session, changes=changes)
    expected = {event_id: dict(row) for event_id, row in before.items()}
    for change in changes:
        if change["event_id"] in expected:
            expected[str(change["event_id"])].update(change)
    assert _all_metadata(sessions) == expected
    assert expected[bystander] == before[bystander]
    assert expected[ids[0]]["scoring_state"] == repository.SCORING_SKIPPED and expected[ids[0]]["label"] == 2


def test_update_metadata_applies_each_set_of_columns_in_one_statement(
    fresh_postgres_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One UPDATE per batch and set of columns on PostgreSQL, not one per event.
    engine = create_db_engine(fresh_postgres_db, service="ingest")
    try:
        migrations.upgrade("ingest", engine)
        sessions = session_factory(engine)
        ids = [str(uuid.uuid4()) for _ in range(20)]
        with transaction(sessions) as session:
            repository.insert_events(
                session, records=[_record(event_id) for event_id in ids], metadata=[_metadata(e) for e in ids]
            )
        statements: list[str] = []
        execute = repository._driver_execute

        def counted(session: Session, statement: str, parameters: Any) -> tuple[list[Any], int]:
            statements.append(statement)
            return execute(session, statement, parameters)

        monkeypatch.setattr(repository, "_driver_execute", counted)
        with transaction(sessions) as session:
            repository.update_metadata(
                session,
                changes=[{"event_id": e, "risk_level": 2, "update_time_us": 5} for e in ids[:12]]
                + [{"event_id": e, "label": 1} for e in ids[12:]],
            )
        assert len(statements) == 2
        rows = _all_metadata(sessions)
        assert {e for e, row in rows.items() if (row["risk_level"], row["update_time_us"]) == (2, 5)} == set(
            ids[:12]
        )
        assert {e for e, row in rows.items() if row["label"] == 1} == set(ids[12:])
    finally:
        engine.dispose()


@pytest.mark.parametrize("events", [1, 3])
def test_update_metadata_still_enforces_column_lengths(fresh_postgres_db: str, events: int) -> None:
    # PostgreSQL only (SQLite does not enforce VARCHAR lengths); raised as SQLAlchemy's error.
    engine = create_db_engine(fresh_postgres_db, service="ingest")
    try:
        migrations.upgrade("ingest", engine)
        sessions = session_factory(engine)
        ids = [str(uuid.uuid4()) for _ in range(events)]
        with transaction(sessions) as session:
            repository.insert_events(
                session, records=[_record(event_id) for event_id in ids], metadata=[_metadata(e) for e in ids]
            )
        with pytest.raises(DBAPIError, match="too long"), transaction(sessions) as session:
            repository.update_metadata(
                session, changes=[{"event_id": e, "model_version": "m" * 129} for e in ids]
            )
        assert {row["model_version"] for row in _all_metadata(sessions).values()} == {""}
    finally:
        engine.dispose()


def test_set_analytics_state_marks_only_pending_events(engine: Engine) -> None:
    sessions = session_factory(engine)
    states = {
        str(uuid.uuid4()): repository.ANALYTICS_PENDING,
        str(uuid.uuid4()): repository.ANALYTICS_PENDING,
        str(uuid.uuid4()): repository.ANALYTICS_SENT,
        str(uuid.uuid4()): repository.ANALYTICS_SKIPPED,
        str(uuid.uuid4()): repository.ANALYTICS_PENDING,  # not marked: stays pending
    }
    ids = list(states)
    with transaction(sessions) as session:
        repository.insert_events(
            session,
            records=[_record(event_id) for event_id in ids],
            metadata=[_metadata(event_id, analytics_state=state) for event_id, state in states.items()],
        )
    before = _all_metadata(sessions)
    with transaction(sessions) as session:
        assert repository.set_analytics_state(session, event_ids=[], state=repository.ANALYTICS_SENT) == 0
        marked = repository.set_analytics_state(
            session, event_ids=[*ids[:4], str(uuid.uuid4())], state=repository.ANALYTICS_SKIPPED
        )
    assert marked == 2
    expected = {event_id: dict(row) for event_id, row in before.items()}
    for event_id in ids[:2]:
        expected[event_id]["analytics_state"] = repository.ANALYTICS_SKIPPED
    assert _all_metadata(sessions) == expected


def test_find_receipts_answers_each_stored_id_exactly(engine: Engine) -> None:
    sessions = session_factory(engine)
    ids = [str(uuid.uuid4()) for _ in range(1200)]  # more than SQLite's chunk of 1000
    records = [
        _record(event_id, leaf_hash=bytes([i % 256]) * 32, receive_time_us=i)
        for i, event_id in enumerate(ids)
    ]
    with transaction(sessions) as session:
        repository.insert_events(session, records=records, metadata=[])
        seq = session.execute(
            select(repository.RECORDS.c.seq).where(repository.RECORDS.c.event_id == ids[5])
        ).scalar_one()
        repository.insert_leaves_and_nodes(session, leaves=[(0, ids[5], seq, b"\x05" * 32, 1)], nodes={})
    missing = str(uuid.uuid4())
    with repository.reading(sessions) as session:
        assert repository.find_receipts(session, event_ids=[]) == {}
        found = repository.find_receipts(session, event_ids=[missing, *ids])
    assert found == {
        event_id: repository.StoredReceipt(
            event_id=event_id,
            content_fingerprint="f" * 64,
            leaf_hash=bytes([i % 256]) * 32,
            receive_time_us=i,
            leaf_index=0 if i == 5 else None,
        )
        for i, event_id in enumerate(ids)
    }
    assert all(type(receipt.leaf_hash) is bytes for receipt in found.values())


def test_analytics_pending_lists_enriched_then_overdue_events_oldest_first(engine: Engine) -> None:
    sessions = session_factory(engine)
    evaluated, scored = repository.EVALUATION_EVALUATED, repository.SCORING_SCORED
    # (receive time, scoring state, evaluation state, analytics state)
    specs = {
        "enriched-old": (10, scored, evaluated, repository.ANALYTICS_PENDING),
        "enriched-new": (30, scored, evaluated, repository.ANALYTICS_PENDING),  # after the cutoff
        "unenriched-overdue": (5, PENDING, evaluated, repository.ANALYTICS_PENDING),
        "unenriched-recent": (15, PENDING, evaluated, repository.ANALYTICS_PENDING),
        "sent": (1, scored, evaluated, repository.ANALYTICS_SENT),
        "enriched-second": (20, scored, evaluated, repository.ANALYTICS_PENDING),
    }
    ids = {name: str(uuid.uuid4()) for name in specs}
    with transaction(sessions) as session:
        repository.insert_events(
            session,
            records=[
                _record(
                    ids[name], dimensions='{"team":"a"}' if name == "enriched-old" else None, record_version=3
                )
                for name in specs
            ],
            metadata=[
                _metadata(
                    ids[name],
                    receive_time_us=received,
                    scoring_state=scoring,
                    evaluation_state=evaluation,
                    analytics_state=state,
                    risk_score=0.5 if scoring == scored else None,
                    department="d1",
                    severity=3,
                    violations='[{"policy":"p"}]',
                )
                for name, (received, scoring, evaluation, state) in specs.items()
            ],
        )

    def pending(limit: int) -> list[repository.AnalyticsRow]:
        with repository.reading(sessions) as session:
            return repository.analytics_pending(
                session, enriched_before_us=25, unenriched_before_us=8, limit=limit
            )

    def row(name: str) -> repository.AnalyticsRow:
        scoring = specs[name][1]
        return repository.AnalyticsRow(
            event_id=ids[name],
            type="phishing.clicked",
            occurred_at_us=-1,
            subject_pseudonym="ps_x",
            severity=3,
            department="d1",
            scoring_state=scoring,
            risk_score=0.5 if scoring == scored else None,
            violations='[{"policy":"p"}]',
            dimensions='{"team":"a"}' if name == "enriched-old" else None,
        )

    assert pending(10) == [row("unenriched-overdue"), row("enriched-old"), row("enriched-second")]
    assert pending(2) == [row("unenriched-overdue"), row("enriched-old")]


def test_the_pending_read_uses_the_partial_index_even_in_a_generic_plan(fresh_postgres_db: str) -> None:
    # A prepared statement's generic plan cannot prove `analytics_state = $1` implies the partial
    # index's predicate: it walked every event in receive order instead (44 ms on 30,000 events).
    engine = create_db_engine(fresh_postgres_db, service="ingest")
    try:
        migrations.upgrade("ingest", engine)
        sent, pending = repository.ANALYTICS_SENT, repository.ANALYTICS_PENDING
        ids = [str(uuid.uuid4()) for _ in range(3000)]
        with transaction(session_factory(engine)) as session:
            repository.insert_events(
                session,
                records=[_record(event_id) for event_id in ids],
                metadata=[
                    _metadata(event_id, receive_time_us=n, analytics_state=pending if n > 2990 else sent)
                    for n, event_id in enumerate(ids)
                ],
            )
        compiled = repository._analytics_pending_query().compile(dialect=engine.dialect)
        names: list[str] = []

        def placeholder(match: re.Match[str]) -> str:
            if match.group(1) not in names:
                names.append(match.group(1))
            return f"${names.index(match.group(1)) + 1}"

        sql = re.sub(r"%\((\w+)\)s", placeholder, str(compiled))
        values = {**compiled.params, "enriched_before_us": 10**6, "unenriched_before_us": 0, "limit": 500}
        with engine.connect() as connection:
            raw = connection.connection.dbapi_connection
            assert isinstance(raw, psycopg.Connection)
            raw.execute("SET plan_cache_mode = force_generic_plan")
            raw.execute(f"PREPARE pending_read AS {sql}")
            arguments = ", ".join(f"%({name})s" for name in names)
            cursor = psycopg.ClientCursor(raw)  # EXECUTE takes its arguments inline, not bound
            plan = cursor.execute(
                f"EXPLAIN (FORMAT JSON) EXECUTE pending_read({arguments})", values
            ).fetchone()
            assert plan is not None
            used = json.dumps(plan[0])
            assert "ix_event_metadata_analytics_pending" in used, used
            assert len(cursor.execute(f"EXECUTE pending_read({arguments})", values).fetchall()) == 9
    finally:
        engine.dispose()


def test_reading_runs_outside_a_transaction_and_leaves_writes_transactional(engine: Engine) -> None:
    sessions = session_factory(engine)
    engine.dispose()  # one pooled connection from here on: the read's and then the write's
    with repository.reading(sessions) as session:
        assert repository.find_receipts(session, event_ids=[str(uuid.uuid4())]) == {}
        raw = session.connection().connection.dbapi_connection
        if engine.dialect.name == "postgresql":
            assert raw is not None and raw.info.transaction_status.name == "IDLE"  # no BEGIN was sent
    event_id = str(uuid.uuid4())
    with pytest.raises(RuntimeError), transaction(sessions) as session:
        repository.insert_events(session, records=[_record(event_id)], metadata=[_metadata(event_id)])
        raise RuntimeError("roll back")
    with sessions() as session:
        assert repository.find_receipts(session, event_ids=[event_id]) == {}  # not autocommitted
