"""Data access of the gdpr service: typed, keyword-only functions that take the session explicitly.

The reads and writes behind every key issuance and consent check also take a Core ``Connection``
(``SessionOrConnection``): those callers skip the ORM session, whose set-up and tear-down cost more
than their one query.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict
from datetime import datetime
from typing import Any, NamedTuple, cast

from sqlalchemy import (
    Connection,
    Insert,
    Row,
    Select,
    Table,
    and_,
    bindparam,
    delete,
    func,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import dml as pg_dml
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import dml as sqlite_dml
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from services.gdpr.domain.audit import AuditEntry, new_audit_entry
from services.gdpr.models import (
    AuditRecordRow,
    Base,
    ConsentRecordRow,
    DataKey,
    DataKeyEventType,
    DirectoryEntryRow,
    ErasureLogAttempt,
    ErasureRecordRow,
    KekRotationRow,
    RetentionRuleRow,
    RetentionRunRow,
    Subject,
)

# Serialises audit appends across replicas on PostgreSQL (the chain has one head); any constant works.
_AUDIT_LOCK_KEY = 0x67647072  # "gdpr"
_IN_CHUNK = 500  # bound on the size of IN (...) lists

# Where the hot paths run their statements: the caller's session, or a plain Core connection.
SessionOrConnection = Session | Connection


def _connection(db: SessionOrConnection) -> Connection:
    return db.connection() if isinstance(db, Session) else db


def _chunks(values: Sequence[Any], size: int = _IN_CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


# SQLAlchemy 2.0 leaves its PostgreSQL and SQLite INSERT out of the compiled-statement cache
# (sqlalchemy#10445): the ON CONFLICT clause is not part of the key. Key issuance inserts on every
# first sight, and compiling each statement again cost a tenth of gdpr's CPU in a cold step. The
# classes below only ever carry one ON CONFLICT DO NOTHING with no target, set at construction
# (a second ON CONFLICT is refused), so the key of the standard INSERT they build on is complete.


class _PgDoNothing(pg_dml.OnConflictDoNothing):
    inherit_cache = True
    _traverse_internals = []  # no target, no condition: nothing to key


class _PgInsertSkippingConflicts(pg_dml.Insert):
    inherit_cache = True

    def __init__(self, target: Any) -> None:
        super().__init__(target)
        self._post_values_clause = _PgDoNothing()


class _SqliteDoNothing(sqlite_dml.OnConflictDoNothing):
    inherit_cache = True
    _traverse_internals = []


class _SqliteInsertSkippingConflicts(sqlite_dml.Insert):
    inherit_cache = True

    def __init__(self, target: Any) -> None:
        super().__init__(target)
        self._post_values_clause = _SqliteDoNothing()


def _insert_skipping_conflicts(db: SessionOrConnection, target: Any) -> Insert:
    """INSERT ... ON CONFLICT DO NOTHING into ``target`` (a model or a table), in this dialect, cached."""
    dialect = (db.get_bind() if isinstance(db, Session) else db).dialect.name
    if dialect == "postgresql":
        return _PgInsertSkippingConflicts(target)
    if dialect == "sqlite":
        return _SqliteInsertSkippingConflicts(target)
    raise RuntimeError(f"unsupported dialect {dialect}: SQLite and PostgreSQL only")  # pragma: no cover


def _insert_ignoring_conflicts(
    session: Session, model: type[Base], rows: Sequence[Mapping[str, Any]]
) -> None:
    """INSERT ... ON CONFLICT DO NOTHING: concurrent creators agree on whichever row landed first."""
    if rows:
        session.execute(_insert_skipping_conflicts(session, model), list(rows))


def _insert_returning_created(
    session: Session, model: type[Base], rows: Sequence[Mapping[str, Any]], column: str
) -> set[Any]:
    """INSERT ... ON CONFLICT DO NOTHING RETURNING ``column``: the rows this statement created.

    Rows another writer created first are skipped and not returned. One statement for every row
    (SQLAlchemy's "insertmanyvalues"), on Core, so no ORM objects are built for rows never read.
    """
    if not rows:
        return set()
    table = cast(Table, model.__table__)
    statement = _insert_skipping_conflicts(session, table).returning(table.c[column])
    return {row[0] for row in session.connection().execute(statement, list(rows))}


# --- subjects ----------------------------------------------------------------------------------------


def find_pseudonyms(db: SessionOrConnection, *, lookup_hashes: Sequence[bytes]) -> dict[bytes, str]:
    found: dict[bytes, str] = {}
    unique = list(dict.fromkeys(lookup_hashes))
    connection = _connection(db)  # Core: the ORM's execution costs more than this read
    for chunk in _chunks(unique):
        rows = connection.execute(
            select(Subject.lookup_hash, Subject.pseudonym).where(Subject.lookup_hash.in_(chunk))
        )
        found.update({row.lookup_hash: row.pseudonym for row in rows})
    return found


def find_subject(session: Session, *, lookup_hash: bytes) -> Subject | None:
    return session.scalars(select(Subject).where(Subject.lookup_hash == lookup_hash)).first()


def insert_subjects_if_absent(session: Session, *, rows: Sequence[Mapping[str, Any]]) -> None:
    _insert_ignoring_conflicts(session, Subject, rows)


def create_subjects(session: Session, *, rows: Sequence[Mapping[str, Any]]) -> set[bytes]:
    """Insert the subjects not there yet: the lookup hashes of those this call created."""
    return _insert_returning_created(session, Subject, rows, "lookup_hash")


def delete_subject(session: Session, *, pseudonym: str) -> int:
    result = session.execute(delete(Subject).where(Subject.pseudonym == pseudonym))
    return int(getattr(result, "rowcount", 0) or 0)


# --- data keys ---------------------------------------------------------------------------------------


def find_data_keys(session: Session, *, pairs: Sequence[tuple[str, str]]) -> dict[tuple[str, str], DataKey]:
    """Data keys by (pseudonym, period); absent pairs are simply missing from the result."""
    found: dict[tuple[str, str], DataKey] = {}
    for chunk in _chunks(list(dict.fromkeys(pairs))):
        query = select(DataKey).where(tuple_(DataKey.pseudonym, DataKey.period).in_(list(chunk)))
        found.update({(key.pseudonym, key.period): key for key in session.scalars(query)})
    return found


class StoredKey(NamedTuple):
    """A data key's row as the issuance read path sees it, with the event types it protects and its
    subject's department in the directory ("" when the directory does not list them)."""

    key_id: str
    pseudonym: str
    period: str
    kek_id: str
    nonce: bytes
    wrapped: bytes
    event_types: frozenset[str]
    department: str = ""


# The statements behind every key lookup and consent check are built once: a statement object keeps
# its cache key, which SQLAlchemy otherwise derives again on every call (tens of µs per statement).


@functools.cache
def _keys_by_lookup_query() -> Select[Any]:
    subjects, keys, types = Subject.__table__, DataKey.__table__, DataKeyEventType.__table__
    directory = DirectoryEntryRow.__table__
    return (
        select(
            subjects.c.lookup_hash,
            keys.c.key_id,
            keys.c.pseudonym,
            keys.c.period,
            keys.c.kek_id,
            keys.c.nonce,
            keys.c.wrapped,
            types.c.event_type,
            directory.c.department,
        )
        .select_from(subjects.join(keys, keys.c.pseudonym == subjects.c.pseudonym))
        .outerjoin(types, types.c.key_id == keys.c.key_id)
        .outerjoin(directory, directory.c.pseudonym == keys.c.pseudonym)
        .where(
            subjects.c.lookup_hash.in_(bindparam("hashes", expanding=True)),
            keys.c.period.in_(bindparam("periods", expanding=True)),
        )
    )


def find_keys_by_lookup(
    db: SessionOrConnection, *, lookup_hashes: Sequence[bytes], periods: Sequence[str]
) -> dict[tuple[bytes, str], StoredKey]:
    """The existing keys of the subjects with these lookup hashes, for these periods, with their
    departments: one query.

    Core rows, not ORM objects: this is the read behind every event whose key ingest has not
    cached, so it skips the identity map and runs one statement where the write path runs three.
    """
    found: dict[tuple[bytes, str], StoredKey] = {}
    wanted_periods = list(dict.fromkeys(periods))
    connection = _connection(db)
    for chunk in _chunks(list(dict.fromkeys(lookup_hashes))):
        query, parameters = _keys_by_lookup_query(), {"hashes": list(chunk), "periods": wanted_periods}
        event_types: dict[tuple[bytes, str], set[str]] = {}
        for row in connection.execute(query, parameters):
            where = (row.lookup_hash, row.period)
            if where not in found:
                found[where] = StoredKey(
                    row.key_id,
                    row.pseudonym,
                    row.period,
                    row.kek_id,
                    row.nonce,
                    row.wrapped,
                    frozenset(),
                    row.department or "",
                )
            if row.event_type is not None:
                event_types.setdefault(where, set()).add(row.event_type)
        for where, known in event_types.items():
            found[where] = found[where]._replace(event_types=frozenset(known))
    return found


def create_data_keys(session: Session, *, rows: Sequence[Mapping[str, Any]]) -> set[str]:
    """Insert the data keys whose (pseudonym, period) has none yet: the key ids this call created."""
    return _insert_returning_created(session, DataKey, rows, "key_id")


def event_types_of(session: Session, *, key_ids: Sequence[str]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for chunk in _chunks(list(dict.fromkeys(key_ids))):
        rows = session.execute(
            select(DataKeyEventType.key_id, DataKeyEventType.event_type).where(
                DataKeyEventType.key_id.in_(chunk)
            )
        )
        for row in rows:
            found.setdefault(row.key_id, set()).add(row.event_type)
    return found


def add_event_types_if_absent(db: SessionOrConnection, *, pairs: Iterable[tuple[str, str]]) -> None:
    """Record (key id, event type) pairs not recorded yet, in one multi-row statement per batch of
    pairs. A key deleted meanwhile (erased, shredded) fails the foreign key, with IntegrityError."""
    rows = [{"key_id": key_id, "event_type": event_type} for key_id, event_type in sorted(set(pairs))]
    if rows:
        table = cast(Table, DataKeyEventType.__table__)
        # RETURNING, though unread: SQLAlchemy batches an executemany of ON CONFLICT into multi-row
        # statements ("insertmanyvalues") only with it; without, psycopg2 sends a statement per row.
        statement = _insert_skipping_conflicts(db, table).returning(table.c.key_id)
        _connection(db).execute(statement, rows).all()


def delete_data_keys(session: Session, *, key_ids: Sequence[str]) -> int:
    """Delete data keys (and their event-type rows). Returns how many keys were deleted."""
    deleted = 0
    for chunk in _chunks(list(dict.fromkeys(key_ids))):
        session.execute(delete(DataKeyEventType).where(DataKeyEventType.key_id.in_(chunk)))
        result = session.execute(delete(DataKey).where(DataKey.key_id.in_(chunk)))
        deleted += int(getattr(result, "rowcount", 0) or 0)
    return deleted


def key_ids_of(session: Session, *, pseudonym: str) -> list[str]:
    return list(session.scalars(select(DataKey.key_id).where(DataKey.pseudonym == pseudonym)))


def data_keys_not_under(session: Session, *, kek_id: str, after_key_id: str, limit: int) -> list[DataKey]:
    """Keys wrapped under another KEK than ``kek_id``, keyset-paged by key id."""
    query = (
        select(DataKey)
        .where(DataKey.kek_id != kek_id, DataKey.key_id > after_key_id)
        .order_by(DataKey.key_id)
        .limit(limit)
    )
    return list(session.scalars(query))


def replace_wrapping(
    session: Session,
    *,
    key_id: str,
    expected_kek_id: str,
    kek_id: str,
    nonce: bytes,
    wrapped: bytes,
    at: datetime,
) -> bool:
    """Store a re-wrapped key unless someone else re-wrapped (or shredded) it meanwhile."""
    result = session.execute(
        update(DataKey)
        .where(DataKey.key_id == key_id, DataKey.kek_id == expected_kek_id)
        .values(kek_id=kek_id, nonce=nonce, wrapped=wrapped, rewrapped_at=at)
    )
    return bool(getattr(result, "rowcount", 0))


def key_counts_by_kek(session: Session) -> dict[str, int]:
    rows = session.execute(select(DataKey.kek_id, func.count()).group_by(DataKey.kek_id))
    return {row[0]: int(row[1]) for row in rows}


def retention_candidates(session: Session, *, periods_before: str) -> list[DataKey]:
    """Keys whose period sorts before ``periods_before`` (a superset of the expired ones)."""
    return list(
        session.scalars(
            select(DataKey).where(DataKey.period < periods_before).order_by(DataKey.pseudonym, DataKey.period)
        )
    )


# --- directory ---------------------------------------------------------------------------------------


class StoredPlacement(NamedTuple):
    """A person's stored directory entry: department and manager's pseudonym."""

    department: str
    manager_pseudonym: str | None


def directory_placements(session: Session, *, pseudonyms: Sequence[str]) -> dict[str, StoredPlacement]:
    """The stored entries of these pseudonyms; people not in the directory are missing from the result."""
    found: dict[str, StoredPlacement] = {}
    table = DirectoryEntryRow.__table__
    for chunk in _chunks(list(dict.fromkeys(pseudonyms))):
        query = select(table.c.pseudonym, table.c.department, table.c.manager_pseudonym).where(
            table.c.pseudonym.in_(list(chunk))
        )
        for row in session.connection().execute(query):
            found[row.pseudonym] = StoredPlacement(row.department, row.manager_pseudonym)
    return found


@functools.cache
def _departments_query() -> Select[Any]:
    return select(DirectoryEntryRow.pseudonym, DirectoryEntryRow.department).where(
        DirectoryEntryRow.pseudonym.in_(bindparam("pseudonyms", expanding=True))
    )


def departments_of(session: Session, *, pseudonyms: Sequence[str]) -> dict[str, str]:
    """The department of each pseudonym in the directory (one query per 500 pseudonyms)."""
    found: dict[str, str] = {}
    for chunk in _chunks(list(dict.fromkeys(pseudonyms))):
        rows = session.execute(_departments_query(), {"pseudonyms": list(chunk)})
        found.update({row.pseudonym: row.department for row in rows})
    return found


def directory_imports(session: Session) -> dict[str, str | None]:
    """Every pseudonym in the directory with the import that last listed it (what a full sync compares)."""
    rows = session.execute(select(DirectoryEntryRow.pseudonym, DirectoryEntryRow.import_id))
    return {row.pseudonym: row.import_id for row in rows}


def upsert_directory_entries(session: Session, *, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert or overwrite entries (each row: pseudonym, department, manager_pseudonym, updated_at,
    import_id), in one statement per chunk; a concurrent writer's row is overwritten, not duplicated."""
    if not rows:
        return
    table = cast(Table, DirectoryEntryRow.__table__)
    dialect = session.get_bind().dialect.name
    for chunk in _chunks(list(rows)):
        statement = pg_insert(table) if dialect == "postgresql" else sqlite_insert(table)
        excluded = statement.excluded
        statement = statement.on_conflict_do_update(
            index_elements=[table.c.pseudonym],
            set_={
                "department": excluded.department,
                "manager_pseudonym": excluded.manager_pseudonym,
                "updated_at": excluded.updated_at,
                "import_id": excluded.import_id,
            },
        )
        session.execute(statement, list(chunk))


def mark_directory_import(session: Session, *, pseudonyms: Sequence[str], import_id: str | None) -> None:
    """Record that ``import_id`` listed these (unchanged) entries, without touching their update time."""
    for chunk in _chunks(list(dict.fromkeys(pseudonyms))):
        session.execute(
            update(DirectoryEntryRow)
            .where(DirectoryEntryRow.pseudonym.in_(chunk))
            .values(import_id=import_id)
        )


def delete_directory_entries(session: Session, *, pseudonyms: Sequence[str]) -> int:
    deleted = 0
    for chunk in _chunks(list(dict.fromkeys(pseudonyms))):
        result = session.execute(delete(DirectoryEntryRow).where(DirectoryEntryRow.pseudonym.in_(chunk)))
        deleted += int(getattr(result, "rowcount", 0) or 0)
    return deleted


def shred_subject(session: Session, *, pseudonym: str) -> int:
    """What an erasure deletes: the person's data keys, directory entry (and place as anyone's
    manager) and subject row; the number of keys shredded."""
    shredded = delete_data_keys(session, key_ids=key_ids_of(session, pseudonym=pseudonym))
    forget_directory_person(session, pseudonym=pseudonym)
    delete_subject(session, pseudonym=pseudonym)
    return shredded


def directory_entry(session: Session, *, pseudonym: str) -> DirectoryEntryRow | None:
    return session.get(DirectoryEntryRow, pseudonym)


def forget_directory_person(session: Session, *, pseudonym: str) -> None:
    """Erasure: delete the person's entry and blank them wherever they are the manager."""
    session.execute(delete(DirectoryEntryRow).where(DirectoryEntryRow.pseudonym == pseudonym))
    session.execute(
        update(DirectoryEntryRow)
        .where(DirectoryEntryRow.manager_pseudonym == pseudonym)
        .values(manager_pseudonym=None)
    )


# --- consents ----------------------------------------------------------------------------------------


def insert_consent(session: Session, *, row: ConsentRecordRow) -> ConsentRecordRow:
    session.add(row)
    session.flush()
    return row


def consent_by_request_id(session: Session, *, request_id: str) -> ConsentRecordRow | None:
    return session.scalars(select(ConsentRecordRow).where(ConsentRecordRow.request_id == request_id)).first()


def consent_history(
    session: Session, *, pseudonyms: Sequence[str], purpose: str | None = None
) -> list[ConsentRecordRow]:
    """Consent records of the pseudonyms, oldest first (recording order breaks ties in time)."""
    rows: list[ConsentRecordRow] = []
    for chunk in _chunks(list(dict.fromkeys(pseudonyms))):
        query = select(ConsentRecordRow).where(ConsentRecordRow.pseudonym.in_(chunk))
        if purpose is not None:
            query = query.where(ConsentRecordRow.purpose == purpose)
        rows.extend(session.scalars(query))
    return sorted(rows, key=lambda row: (row.at, row.id))


@functools.cache
def _consents_query() -> Select[Any]:
    subjects, consents = Subject.__table__, ConsentRecordRow.__table__
    return (
        select(subjects.c.pseudonym, consents.c.id, consents.c.at, consents.c.action)
        .select_from(
            subjects.outerjoin(
                consents,
                and_(
                    consents.c.pseudonym == subjects.c.pseudonym,
                    consents.c.purpose == bindparam("purpose"),
                ),
            )
        )
        .where(subjects.c.pseudonym.in_(bindparam("pseudonyms", expanding=True)))
    )


def latest_consents(
    db: SessionOrConnection, *, pseudonyms: Sequence[str], purpose: str
) -> dict[str, tuple[datetime, str] | None]:
    """The time and action of each known pseudonym's latest consent record for ``purpose`` (the
    later-recorded one among equal times), None when it has none; unknown (or erased) pseudonyms
    are missing. One statement per 500 pseudonyms, subjects and records together."""
    latest: dict[str, tuple[datetime, int, str] | None] = {}
    connection = _connection(db)
    for chunk in _chunks(list(dict.fromkeys(pseudonyms))):
        for row in connection.execute(_consents_query(), {"pseudonyms": list(chunk), "purpose": purpose}):
            if row.id is None:  # no record: the outer join's one row of the subject
                latest.setdefault(row.pseudonym, None)
                continue
            best = latest.get(row.pseudonym)
            if best is None or (row.at, row.id) > best[:2]:
                latest[row.pseudonym] = (row.at, row.id, row.action)
    return {pseudonym: None if best is None else (best[0], best[2]) for pseudonym, best in latest.items()}


def consent_page(
    session: Session, *, pseudonym: str, purpose: str | None, before_id: int | None, limit: int
) -> list[ConsentRecordRow]:
    """Newest first, keyset-paged by id."""
    query = select(ConsentRecordRow).where(ConsentRecordRow.pseudonym == pseudonym)
    if purpose:
        query = query.where(ConsentRecordRow.purpose == purpose)
    if before_id is not None:
        query = query.where(ConsentRecordRow.id < before_id)
    return list(session.scalars(query.order_by(ConsentRecordRow.id.desc()).limit(limit)))


# --- retention ---------------------------------------------------------------------------------------


def retention_rules(session: Session) -> list[RetentionRuleRow]:
    return list(session.scalars(select(RetentionRuleRow).order_by(RetentionRuleRow.event_type)))


def upsert_retention_rule(
    session: Session, *, event_type: str, retention_days: int, actor: str, at: datetime
) -> RetentionRuleRow:
    row = session.get(RetentionRuleRow, event_type)
    if row is None:
        row = RetentionRuleRow(
            event_type=event_type, retention_days=retention_days, updated_at=at, actor=actor
        )
        session.add(row)
    else:
        row.retention_days = retention_days
        row.updated_at = at
        row.actor = actor
    session.flush()
    return row


def insert_retention_run(session: Session, *, row: RetentionRunRow) -> RetentionRunRow:
    session.add(row)
    session.flush()
    return row


def retention_run_by_request_id(session: Session, *, request_id: str) -> RetentionRunRow | None:
    return session.scalars(select(RetentionRunRow).where(RetentionRunRow.request_id == request_id)).first()


# --- KEK rotations -----------------------------------------------------------------------------------


def insert_kek_rotation(session: Session, *, row: KekRotationRow) -> KekRotationRow:
    session.add(row)
    session.flush()
    return row


def kek_rotation_by_request_id(session: Session, *, request_id: str) -> KekRotationRow | None:
    return session.scalars(select(KekRotationRow).where(KekRotationRow.request_id == request_id)).first()


# --- erasures ----------------------------------------------------------------------------------------


def insert_erasure(session: Session, *, row: ErasureRecordRow) -> ErasureRecordRow:
    session.add(row)
    session.flush()
    return row


def erasure_by_request_id(session: Session, *, request_id: str) -> ErasureRecordRow | None:
    return session.scalars(select(ErasureRecordRow).where(ErasureRecordRow.request_id == request_id)).first()


def get_erasure(session: Session, *, erasure_id: str) -> ErasureRecordRow | None:
    return session.get(ErasureRecordRow, erasure_id)


def erasure_page(
    session: Session, *, before: tuple[datetime, str] | None, limit: int
) -> list[ErasureRecordRow]:
    """Newest first, keyset-paged by (erase_time, erasure_id)."""
    query = select(ErasureRecordRow)
    if before is not None:
        moment, erasure_id = before
        query = query.where(
            (ErasureRecordRow.erase_time < moment)
            | ((ErasureRecordRow.erase_time == moment) & (ErasureRecordRow.erasure_id < erasure_id))
        )
    query = query.order_by(ErasureRecordRow.erase_time.desc(), ErasureRecordRow.erasure_id.desc())
    return list(session.scalars(query.limit(limit)))


def pending_erasures(session: Session, *, limit: int) -> list[ErasureRecordRow]:
    """Erasures whose log append has not succeeded yet, oldest first."""
    query = (
        select(ErasureRecordRow)
        .where(ErasureRecordRow.log_event_id.is_(None))
        .order_by(ErasureRecordRow.erase_time, ErasureRecordRow.erasure_id)
        .limit(limit)
    )
    return list(session.scalars(query))


def set_events_affected(session: Session, *, erasure_id: str, events_affected: int) -> None:
    """Fill the write-once count; a value already there stays (the first count is the recorded one)."""
    session.execute(
        update(ErasureRecordRow)
        .where(ErasureRecordRow.erasure_id == erasure_id, ErasureRecordRow.events_affected.is_(None))
        .values(events_affected=events_affected)
    )


def set_log_event_id(session: Session, *, erasure_id: str, log_event_id: str) -> None:
    session.execute(
        update(ErasureRecordRow)
        .where(ErasureRecordRow.erasure_id == erasure_id, ErasureRecordRow.log_event_id.is_(None))
        .values(log_event_id=log_event_id)
    )
    session.execute(delete(ErasureLogAttempt).where(ErasureLogAttempt.erasure_id == erasure_id))


def record_log_attempt(session: Session, *, erasure_id: str, error: str, at: datetime) -> int:
    """Count a failed log append; returns the number of attempts so far."""
    row = session.get(ErasureLogAttempt, erasure_id)
    if row is None:
        row = ErasureLogAttempt(erasure_id=erasure_id, attempts=0, last_error="", last_attempt_at=None)
        session.add(row)
    row.attempts += 1
    row.last_error = error[:2000]
    row.last_attempt_at = at
    session.flush()
    return row.attempts


def log_attempts(session: Session, *, erasure_id: str) -> ErasureLogAttempt | None:
    return session.get(ErasureLogAttempt, erasure_id)


# --- audit trail -------------------------------------------------------------------------------------


def _entry(row: AuditRecordRow | Row[Any]) -> AuditEntry:
    """The chained entry of an ORM row or of a plain row with the same columns."""
    return AuditEntry(
        actor=row.actor,
        action=row.action,
        target=row.target,
        at=row.at,
        reason=row.reason,
        request_id=row.request_id,
        prev_hash=bytes(row.prev_hash),
        entry_hash=bytes(row.entry_hash),
    )


def append_audit(
    session: Session, *, actor: str, action: str, target: str, at: datetime, reason: str, request_id: str
) -> AuditRecordRow:
    """Chain a new entry onto the current head, in the caller's transaction (atomic with the action)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _AUDIT_LOCK_KEY})
    head = session.scalars(select(AuditRecordRow).order_by(AuditRecordRow.sequence.desc()).limit(1)).first()
    entry = new_audit_entry(
        previous=None if head is None else _entry(head),
        actor=actor,
        action=action,
        target=target,
        at=at,
        reason=reason,
        request_id=request_id,
    )
    row = AuditRecordRow(**asdict(entry))
    session.add(row)
    session.flush()
    return row


def audit_page(
    session: Session,
    *,
    before_sequence: int | None,
    limit: int,
    actor: str = "",
    action: str = "",
    start: datetime | None = None,
    end: datetime | None = None,
) -> list[AuditRecordRow]:
    """Newest first, keyset-paged by sequence."""
    query = select(AuditRecordRow)
    if before_sequence is not None:
        query = query.where(AuditRecordRow.sequence < before_sequence)
    if actor:
        query = query.where(AuditRecordRow.actor == actor)
    if action:
        query = query.where(AuditRecordRow.action == action)
    if start is not None:
        query = query.where(AuditRecordRow.at >= start)
    if end is not None:
        query = query.where(AuditRecordRow.at < end)
    return list(session.scalars(query.order_by(AuditRecordRow.sequence.desc()).limit(limit)))


def audit_entries(session: Session) -> list[AuditEntry]:
    """The whole chain, oldest first, as domain entries (for verification)."""
    rows = session.scalars(select(AuditRecordRow).order_by(AuditRecordRow.sequence))
    return [_entry(row) for row in rows]


def audit_chain_batch(
    session: Session, *, after_sequence: int | None, limit: int
) -> list[tuple[int, AuditEntry]]:
    """Up to ``limit`` entries after ``after_sequence``, oldest first, with their sequence numbers.

    Plain rows rather than ORM objects, so verifying millions of entries keeps no identity map.
    """
    query = select(
        AuditRecordRow.sequence,
        AuditRecordRow.actor,
        AuditRecordRow.action,
        AuditRecordRow.target,
        AuditRecordRow.at,
        AuditRecordRow.reason,
        AuditRecordRow.request_id,
        AuditRecordRow.prev_hash,
        AuditRecordRow.entry_hash,
    )
    if after_sequence is not None:
        query = query.where(AuditRecordRow.sequence > after_sequence)
    rows = session.execute(query.order_by(AuditRecordRow.sequence).limit(limit)).all()
    return [(row.sequence, _entry(row)) for row in rows]


def audit_count(session: Session) -> int:
    return int(session.execute(select(func.count()).select_from(AuditRecordRow)).scalar_one())
