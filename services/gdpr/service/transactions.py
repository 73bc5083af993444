"""The gdpr use cases that run inside one database transaction each (the units of work).

Blocking (SQLAlchemy) code over ``repository``, called by the async use cases (``usecases``) through
``run_db``. Every state change that a person asked for (erase, export, consent, retention, KEK rotation)
appends its audit entry in the same transaction as the change, so the trail cannot miss an action or
record one that did not happen.

Writes that create or destroy keys take one process-wide lock: on SQLite it avoids busy retries, and it
orders key creation against KEK rotation (a key is never wrapped under a KEK that is being retired).
Across PostgreSQL replicas, unique constraints and ON CONFLICT DO NOTHING make concurrent creators agree.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from services.gdpr import repository as repo
from services.gdpr.domain.audit import verify_chain
from services.gdpr.domain.consent import (
    ConsentAction,
    ConsentEvent,
    current_state,
    get_purpose,
    new_consent_event,
)
from services.gdpr.domain.directory import (
    DirectoryEntry,
    Placement,
    absentees,
    diff_directory,
    normalise_department,
)
from services.gdpr.domain.errors import KeyUnwrapError, SubjectNotFoundError
from services.gdpr.domain.keys import (
    Keyring,
    PeriodGranularity,
    WrappedKey,
    data_key_aad,
    key_period,
    lookup_key,
    new_data_key,
    new_key_id,
    new_pseudonym,
    write_keyring_file,
)
from services.gdpr.domain.retention import (
    DEFAULT_RETENTION_DAYS,
    PeriodRef,
    RetentionRules,
    expired_periods,
)
from services.gdpr.keysource import KeyMaterial
from services.gdpr.models import (
    ConsentRecordRow,
    DataKey,
    DirectoryEntryRow,
    ErasureRecordRow,
    KekRotationRow,
    RetentionRunRow,
    Subject,
)
from services.gdpr.tombstones import TombstoneJournal
from services.runtime.db import transaction
from services.runtime.errors import FailedPreconditionError, FieldViolation, InvalidArgumentError

log = logging.getLogger("awareness.gdpr")

DEFAULT_RULE = ""  # event_type of the default retention rule
KEEP_UNTIL_ERASED = 0  # retention_days meaning "never shred by retention"
MAX_RETENTION_DAYS = 36525
EVENT_TYPE_PATTERN = re.compile(r"[a-z0-9_]+(\.[a-z0-9_]+)*")
_REWRAP_BATCH = 500
_CREATE_ATTEMPTS = 3
# Namespace of the log event ids of erasures: uuid5(namespace, erasure id) is stable across retries.
ERASURE_EVENT_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://awareness.dev/gdpr/erasure")


def erasure_log_event_id(erasure_id: str) -> str:
    return str(uuid.uuid5(ERASURE_EVENT_NAMESPACE, erasure_id))


@dataclass(frozen=True, slots=True)
class KeyRequest:
    subject: str
    occurred_at: datetime
    event_type: str = ""


@dataclass(frozen=True, slots=True)
class IssuedKey:
    pseudonym: str
    period: str
    key_id: str
    data_key: bytes = field(repr=False)
    department: str = ""  # from the imported directory; "" when the subject is not in it


@dataclass(frozen=True, slots=True)
class IssueResult:
    keys: list[IssuedKey]
    keys_created: int


@dataclass(frozen=True, slots=True)
class UnwrappedKey:
    pseudonym: str
    period: str
    key_id: str | None
    data_key: bytes | None = field(repr=False)


@dataclass(frozen=True, slots=True)
class ErasureOutcome:
    record: ErasureRecordRow
    replayed: bool


@dataclass(frozen=True, slots=True)
class RetentionEntry:
    key_period: str
    event_type: str
    pseudonym_count: int


@dataclass(frozen=True, slots=True)
class RetentionReport:
    dry_run: bool
    run_time: datetime
    entries: list[RetentionEntry]
    keys_shredded: int
    shredded: list[tuple[str, str]]  # (pseudonym, period), for the caller's bookkeeping only
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class RotationResult:
    kek_id: str
    keys_rewrapped: int
    retired_kek_ids: list[str]
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class DirectoryImportResult:
    created: int
    updated: int
    unchanged: int
    removed: int


@dataclass(frozen=True, slots=True)
class RuleView:
    event_type: str
    retention_days: int
    updated_at: datetime | None
    actor: str


def enable_secure_delete(engine: Engine) -> None:
    """SQLite: overwrite deleted rows with zeros, so shredded wrapped keys do not linger in free pages.

    Pooled connections opened before this (migrations, the start-up probe) are discarded, so every
    connection the service uses from now on has the pragma.
    """
    if engine.dialect.name != "sqlite":
        return

    @event.listens_for(engine, "connect")
    def _secure_delete(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA secure_delete=ON")
        cursor.close()

    engine.dispose()


def consent_event(row: ConsentRecordRow) -> ConsentEvent:
    return ConsentEvent(
        pseudonym=row.pseudonym,
        purpose=row.purpose,
        action=ConsentAction(row.action),
        at=row.at,
        actor=row.actor,
        reason=row.reason,
    )


class GdprStore:
    def __init__(
        self,
        *,
        engine: Engine,
        sessions: sessionmaker[Session],
        material: KeyMaterial,
        granularity: PeriodGranularity = "month",
        default_retention_days: int = DEFAULT_RETENTION_DAYS,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        tombstones: TombstoneJournal | None = None,
    ) -> None:
        self._engine = engine
        self._tombstones = tombstones
        self._sessions = sessions
        self._keyring = material.keyring
        self._keyring_file = material.keyring_file
        self._lookup_secret = material.lookup_secret
        self._granularity: PeriodGranularity = granularity
        self._default_retention_days = default_retention_days
        self._clock = clock
        self._write_lock = threading.Lock()

    @property
    def keyring(self) -> Keyring:
        return self._keyring

    def lookup(self, identifier: str) -> bytes:
        return lookup_key(identifier, secret=self._lookup_secret)

    def now(self) -> datetime:
        return self._clock()

    # --- keys ----------------------------------------------------------------------------------------

    def issue_keys(self, requests: Sequence[KeyRequest]) -> IssueResult:
        """Pseudonym and period key for each request, creating subjects and keys on first use."""
        try:
            return self._issue_keys(requests)
        except KeyUnwrapError:
            # A row read just before a KEK rotation re-wrapped it and retired its KEK: read it again.
            return self._issue_keys(requests)

    def _issue_keys(self, requests: Sequence[KeyRequest]) -> IssueResult:
        prepared = [
            (
                self.lookup(item.subject),
                key_period(item.occurred_at, granularity=self._granularity),
                item.event_type,
            )
            for item in requests
        ]
        existing, seen = self._existing(prepared)
        if existing is not None:
            return IssueResult(keys=existing, keys_created=0)
        for attempt in range(_CREATE_ATTEMPTS):
            try:
                with self._write_lock, transaction(self._sessions) as session:
                    issued, created = self._resolve(session, prepared, seen)
                return IssueResult(keys=issued, keys_created=created)
            except IntegrityError:
                # A subject erased between our read and our insert (foreign key): start over.
                if attempt + 1 == _CREATE_ATTEMPTS:
                    raise
        raise AssertionError("unreachable")

    def _existing(
        self, prepared: Sequence[tuple[bytes, str, str]]
    ) -> tuple[list[IssuedKey] | None, frozenset[bytes]]:
        """The keys when every subject and key exists already (the usual case), else None; and the
        lookup hashes of the subjects the read found (with a key of one of the periods asked for).

        One read on a Core connection, no lock. An event type a key does not carry yet is recorded in
        one insert, under the lock; None as well when a key was erased or shredded since the read (the
        insert fails its foreign key), so the caller's full path decides, as for a missing key.
        """
        with self._engine.connect() as connection:
            stored = repo.find_keys_by_lookup(
                connection,
                lookup_hashes=[lookup_hash for lookup_hash, _, _ in prepared],
                periods=[period for _, period, _ in prepared],
            )
        seen = frozenset(lookup_hash for lookup_hash, _ in stored)
        rows = []
        missing_types: set[tuple[str, str]] = set()
        for lookup_hash, period, event_type in prepared:
            row = stored.get((lookup_hash, period))
            if row is None:
                return None, seen
            if event_type and event_type not in row.event_types:
                missing_types.add((row.key_id, event_type))
            rows.append(row)
        # Unwrapped first: a KEK rotation meanwhile (KeyUnwrapError) restarts the call before any write.
        issued = self._issued(rows, {row.pseudonym: row.department for row in rows})
        if missing_types:
            try:
                with self._write_lock, self._engine.begin() as connection:
                    repo.add_event_types_if_absent(connection, pairs=missing_types)
            except IntegrityError:
                return None, seen
        return issued, seen

    def _resolve(
        self, session: Session, prepared: Sequence[tuple[bytes, str, str]], seen: frozenset[bytes]
    ) -> tuple[list[IssuedKey], int]:
        """Create what is missing (subjects, keys, event types) and return every request's key.

        Under the write lock, in one transaction: a read of the subjects ``seen`` (those the read
        before the lock found), one of their keys with their event types and departments, one
        ``INSERT ... RETURNING`` per kind of row missing, and a read of the departments of subjects
        found without a key. A row another replica created between the read and the insert is not
        returned by it, and is read again.
        """
        now = self._clock()
        hashes = list(dict.fromkeys(lookup_hash for lookup_hash, _, _ in prepared))
        pseudonyms, created_subjects = self._pseudonyms(session, hashes, now, seen)
        # A subject this call created has no key yet; one another writer created first may have.
        known = [h for h in hashes if h not in created_subjects]
        stored = repo.find_keys_by_lookup(
            session, lookup_hashes=known, periods=[period for _, period, _ in prepared]
        )
        keys: dict[tuple[str, str], DataKey | repo.StoredKey] = {
            (row.pseudonym, row.period): row for row in stored.values()
        }
        types: dict[str, frozenset[str]] = {row.key_id: row.event_types for row in stored.values()}
        pairs = dict.fromkeys((pseudonyms[h], period) for h, period, _ in prepared)
        created = self._create_keys(session, [pair for pair in pairs if pair not in keys], now, keys, types)
        wanted_types = {
            (keys[(pseudonyms[h], period)].key_id, event_type)
            for h, period, event_type in prepared
            if event_type
        }
        missing_types = [(k, t) for k, t in wanted_types if t not in types.get(k, frozenset())]
        if missing_types:
            repo.add_event_types_if_absent(session, pairs=missing_types)
        # The keys read carry their subject's department; a subject created here has no entry yet.
        departments = {row.pseudonym: row.department for row in stored.values()}
        unplaced = [p for h, p in pseudonyms.items() if p not in departments and h not in created_subjects]
        departments.update(repo.departments_of(session, pseudonyms=unplaced))
        issued = self._issued([keys[(pseudonyms[h], period)] for h, period, _ in prepared], departments)
        return issued, created

    def _pseudonyms(
        self, session: Session, hashes: Sequence[bytes], now: datetime, seen: frozenset[bytes] | None = None
    ) -> tuple[dict[bytes, str], dict[bytes, str]]:
        """Every lookup hash's pseudonym, registering the subjects not seen yet; and those registered here.

        With ``seen`` (what key issuance's read before the lock found), the others are inserted first,
        without a read: they are new, except a known person's first key of a period, or one another
        writer just registered. The insert skips those (ON CONFLICT DO NOTHING), and only they are
        read after it.
        """
        known = list(hashes) if seen is None else [h for h in hashes if h in seen]
        pseudonyms = repo.find_pseudonyms(session, lookup_hashes=known) if known else {}
        created_subjects = self._create_subjects(session, [h for h in hashes if h not in pseudonyms], now)
        pseudonyms.update(created_subjects)
        lost = [h for h in hashes if h not in pseudonyms]
        if lost:  # another writer created these subjects first: theirs are the pseudonyms
            pseudonyms.update(repo.find_pseudonyms(session, lookup_hashes=lost))
        return pseudonyms, created_subjects

    def _create_subjects(self, session: Session, hashes: Sequence[bytes], now: datetime) -> dict[bytes, str]:
        """The pseudonyms of the subjects this call created; those another writer created first are
        left out (the caller reads them with the rest)."""
        if not hashes:
            return {}
        # In one order (by lookup hash) whoever inserts: two writers inserting the same new people
        # in different orders would each wait for the other's row (a deadlock on PostgreSQL).
        chosen = {h: new_pseudonym() for h in sorted(hashes)}
        rows = [
            {"pseudonym": pseudonym, "lookup_hash": h, "created_at": now} for h, pseudonym in chosen.items()
        ]
        landed = repo.create_subjects(session, rows=rows)
        return {h: pseudonym for h, pseudonym in chosen.items() if h in landed}

    def _create_keys(
        self,
        session: Session,
        pairs: Sequence[tuple[str, str]],
        now: datetime,
        keys: dict[tuple[str, str], DataKey | repo.StoredKey],
        types: dict[str, frozenset[str]],
    ) -> int:
        """Create a data key for each (pseudonym, period) into ``keys``; how many this call created."""
        if not pairs:
            return 0
        rows = []
        for pseudonym, period in sorted(pairs):  # one insert order for every writer, as for subjects
            key_id = new_key_id()
            wrapped = self._keyring.wrap(
                new_data_key(), aad=data_key_aad(pseudonym=pseudonym, period=period, key_id=key_id)
            )
            rows.append(
                repo.StoredKey(
                    key_id, pseudonym, period, wrapped.kek_id, wrapped.nonce, wrapped.ciphertext, frozenset()
                )
            )
        landed = repo.create_data_keys(
            session,
            rows=[
                {
                    "key_id": row.key_id,
                    "pseudonym": row.pseudonym,
                    "period": row.period,
                    "kek_id": row.kek_id,
                    "nonce": row.nonce,
                    "wrapped": row.wrapped,
                    "created_at": now,
                    "rewrapped_at": None,
                }
                for row in rows
            ],
        )
        lost = []
        for row in rows:
            if row.key_id in landed:
                keys[(row.pseudonym, row.period)] = row
                types[row.key_id] = frozenset()
            else:
                lost.append((row.pseudonym, row.period))
        if lost:  # another writer created these first: theirs is the key
            found = repo.find_data_keys(session, pairs=lost)
            keys.update(found)
            types.update(
                {
                    k: frozenset(v)
                    for k, v in repo.event_types_of(
                        session, key_ids=[r.key_id for r in found.values()]
                    ).items()
                }
            )
        return len(landed)

    def _issued(
        self, rows: Sequence[DataKey | repo.StoredKey], departments: dict[str, str]
    ) -> list[IssuedKey]:
        """One issued key per row (with its subject's department), each distinct key unwrapped once."""
        unwrapped: dict[str, bytes] = {}
        issued = []
        for row in rows:
            if row.key_id not in unwrapped:
                unwrapped[row.key_id] = self._unwrap(row)
            issued.append(
                IssuedKey(
                    pseudonym=row.pseudonym,
                    period=row.period,
                    key_id=row.key_id,
                    data_key=unwrapped[row.key_id],
                    department=departments.get(row.pseudonym, ""),
                )
            )
        return issued

    def _unwrap(self, row: DataKey | repo.StoredKey) -> bytes:
        return self._keyring.unwrap(
            WrappedKey(kek_id=row.kek_id, nonce=row.nonce, ciphertext=row.wrapped),
            aad=data_key_aad(pseudonym=row.pseudonym, period=row.period, key_id=row.key_id),
        )

    def unwrap_keys(self, refs: Sequence[tuple[str, str]]) -> list[UnwrappedKey]:
        """The raw key of each (pseudonym, period); key_id None when it was erased or shredded."""
        try:
            return self._unwrap_keys(refs)
        except KeyUnwrapError:
            return self._unwrap_keys(refs)  # raced a KEK rotation (see issue_keys)

    def _unwrap_keys(self, refs: Sequence[tuple[str, str]]) -> list[UnwrappedKey]:
        with self._sessions() as session:
            keys = repo.find_data_keys(session, pairs=list(refs))
        results = []
        for pseudonym, period in refs:
            row = keys.get((pseudonym, period))
            if row is None:
                results.append(UnwrappedKey(pseudonym=pseudonym, period=period, key_id=None, data_key=None))
            else:
                results.append(
                    UnwrappedKey(
                        pseudonym=pseudonym, period=period, key_id=row.key_id, data_key=self._unwrap(row)
                    )
                )
        return results

    def find_subject(self, identifier: str) -> Subject:
        with self._sessions() as session:
            subject = repo.find_subject(session, lookup_hash=self.lookup(identifier))
        if subject is None:
            raise SubjectNotFoundError("no data subject with this identifier (unknown or erased)")
        return subject

    # --- erasure -------------------------------------------------------------------------------------

    def erase(self, *, identifier: str, actor: str, reason: str, request_id: str) -> ErasureOutcome:
        """Delete the lookup entry and every data key, and record the erasure, in one transaction.

        Idempotent on ``request_id`` only. Keeping any index from the identifier to its erasure (even an
        HMAC under a separate secret) would let whoever holds the secret link the person to the old
        pseudonym, and through it to the metadata left in the log: exactly what the erasure must end.
        So a new request for an erased identifier finds nobody (SUBJECT_NOT_FOUND), as if it had never
        been seen, and the erasure records hold only the pseudonym.
        """
        lookup_hash = self.lookup(identifier)
        now = self._clock()
        with self._write_lock, transaction(self._sessions) as session:
            if request_id:
                existing = repo.erasure_by_request_id(session, request_id=request_id)
                if existing is not None:
                    return ErasureOutcome(record=existing, replayed=True)
            subject = repo.find_subject(session, lookup_hash=lookup_hash)
            if subject is None:
                raise SubjectNotFoundError("no data subject with this identifier (unknown or already erased)")
            pseudonym = subject.pseudonym
            # The directory entry goes too, and so does the person as anyone's manager (both refer to the
            # pseudonym, which must link to nobody once the subject row is gone).
            shredded = repo.shred_subject(session, pseudonym=pseudonym)
            erasure_id = str(uuid.uuid4())
            record = repo.insert_erasure(
                session,
                row=ErasureRecordRow(
                    erasure_id=erasure_id,
                    pseudonym=pseudonym,
                    erase_time=now,
                    actor=actor,
                    reason=reason,
                    request_id=request_id or erasure_id,
                    keys_shredded=shredded,
                    events_affected=None,
                    log_event_id=None,
                ),
            )
            repo.append_audit(
                session,
                actor=actor,
                action="subject.erase",
                target=pseudonym,
                at=now,
                reason=reason,
                request_id=record.request_id,
            )
            if self._tombstones is not None:
                # Last, inside the transaction: a tombstone that cannot be written rolls the erasure back.
                self._tombstones.write(erasure_id=erasure_id, pseudonym=pseudonym, erase_time=now)
        self.compact()
        return ErasureOutcome(record=record, replayed=False)

    def get_erasure(self, erasure_id: str) -> ErasureRecordRow | None:
        with self._sessions() as session:
            return repo.get_erasure(session, erasure_id=erasure_id)

    def erasure_page(self, *, before: tuple[datetime, str] | None, limit: int) -> list[ErasureRecordRow]:
        with self._sessions() as session:
            return repo.erasure_page(session, before=before, limit=limit)

    def pending_erasures(self, *, limit: int = 100) -> list[ErasureRecordRow]:
        with self._sessions() as session:
            return repo.pending_erasures(session, limit=limit)

    def set_events_affected(self, *, erasure_id: str, events_affected: int) -> ErasureRecordRow:
        return self._update_erasure(repo.set_events_affected, erasure_id, events_affected=events_affected)

    def set_log_event_id(self, *, erasure_id: str, log_event_id: str) -> ErasureRecordRow:
        return self._update_erasure(repo.set_log_event_id, erasure_id, log_event_id=log_event_id)

    def _update_erasure(
        self, update: Callable[..., None], erasure_id: str, **values: Any
    ) -> ErasureRecordRow:
        """Fill a write-once column; returns the record as stored (a value already there stays)."""
        with transaction(self._sessions) as session:
            update(session, erasure_id=erasure_id, **values)
            record = repo.get_erasure(session, erasure_id=erasure_id)
            assert record is not None
            session.refresh(record)
            return record

    def record_log_failure(self, *, erasure_id: str, error: str) -> int:
        with transaction(self._sessions) as session:
            return repo.record_log_attempt(session, erasure_id=erasure_id, error=error, at=self._clock())

    def log_attempts(self, erasure_id: str) -> int:
        with self._sessions() as session:
            row = repo.log_attempts(session, erasure_id=erasure_id)
            return 0 if row is None else row.attempts

    def compact(self) -> None:
        """SQLite: fold the WAL into the database and truncate it, so deleted keys leave no old frames."""
        if self._engine.dialect.name != "sqlite":
            return
        with self._engine.connect() as connection:
            busy = connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").first()
        if busy is not None and busy[0]:
            log.warning("WAL checkpoint incomplete after a shred; it completes at the next checkpoint")

    # --- export --------------------------------------------------------------------------------------

    def record_export(self, *, pseudonym: str, actor: str, reason: str) -> None:
        with self._write_lock, transaction(self._sessions) as session:
            repo.append_audit(
                session,
                actor=actor,
                action="subject.export",
                target=pseudonym,
                at=self._clock(),
                reason=reason,
                request_id="",
            )

    def directory_entry(self, pseudonym: str) -> DirectoryEntryRow | None:
        with self._sessions() as session:
            return repo.directory_entry(session, pseudonym=pseudonym)

    def consent_events(self, pseudonym: str) -> list[ConsentEvent]:
        with self._sessions() as session:
            return [consent_event(row) for row in repo.consent_history(session, pseudonyms=[pseudonym])]

    # --- directory -----------------------------------------------------------------------------------

    def import_directory(
        self, entries: Sequence[DirectoryEntry], *, replace: bool, import_id: str, actor: str
    ) -> DirectoryImportResult:
        """Place each person (department, manager) in one transaction, with its audit entry.

        People and managers not seen yet are registered as GetSubjectKeys registers them (a pseudonym
        from the keyed lookup of the identifier); only pseudonyms are stored. With ``replace``, the
        people no call of this import listed lose their entry (see ``absentees``).
        """
        people = [self.lookup(entry.subject) for entry in entries]
        managers = [self.lookup(e.manager_subject) if e.manager_subject.strip() else None for e in entries]
        departments = [normalise_department(entry.department) for entry in entries]
        for attempt in range(_CREATE_ATTEMPTS):
            try:
                with self._write_lock, transaction(self._sessions) as session:
                    return self._import_directory(
                        session,
                        list(zip(people, departments, managers, strict=True)),
                        replace=replace,
                        import_id=import_id,
                        actor=actor,
                    )
            except IntegrityError:
                # A subject erased between our read and our write (foreign key): start over.
                if attempt + 1 == _CREATE_ATTEMPTS:
                    raise
        raise AssertionError("unreachable")

    def _import_directory(
        self,
        session: Session,
        placements: Sequence[tuple[bytes, str, bytes | None]],
        *,
        replace: bool,
        import_id: str,
        actor: str,
    ) -> DirectoryImportResult:
        now = self._clock()
        hashes = list(dict.fromkeys(h for person, _, manager in placements for h in (person, manager) if h))
        pseudonyms, _ = self._pseudonyms(session, hashes, now)
        incoming = {
            pseudonyms[person]: Placement(department, pseudonyms[manager] if manager else None)
            for person, department, manager in placements
        }
        stored = repo.directory_placements(session, pseudonyms=list(incoming))
        diff = diff_directory({p: Placement(*row) for p, row in stored.items()}, incoming)
        run = import_id or None
        changed = {**diff.created, **diff.updated}
        repo.upsert_directory_entries(
            session,
            rows=[
                {
                    "pseudonym": pseudonym,
                    "department": placement.department,
                    "manager_pseudonym": placement.manager_pseudonym,
                    "updated_at": now,
                    "import_id": run,
                }
                for pseudonym, placement in changed.items()
            ],
        )
        repo.mark_directory_import(session, pseudonyms=diff.unchanged, import_id=run)
        removed = 0
        if replace:
            gone = absentees(repo.directory_imports(session), present=incoming, import_id=import_id)
            removed = repo.delete_directory_entries(session, pseudonyms=gone)
        result = DirectoryImportResult(
            created=len(diff.created),
            updated=len(diff.updated),
            unchanged=len(diff.unchanged),
            removed=removed,
        )
        repo.append_audit(
            session,
            actor=actor,
            action="directory.import",
            target="directory",
            at=now,
            reason=(
                f"{result.created} created, {result.updated} updated, {result.unchanged} unchanged, "
                f"{result.removed} removed" + (" (full sync)" if replace else "")
            ),
            request_id=import_id,
        )
        return result

    # --- consent -------------------------------------------------------------------------------------

    def change_consent(
        self,
        *,
        identifier: str,
        purpose: str,
        action: ConsentAction,
        actor: str,
        reason: str,
        request_id: str,
    ) -> tuple[ConsentRecordRow, bool]:
        """Append a grant or withdrawal; a subject not seen yet gets its pseudonym now."""
        get_purpose(purpose)
        lookup_hash = self.lookup(identifier)
        now = self._clock()
        with self._write_lock, transaction(self._sessions) as session:
            if request_id:
                existing = repo.consent_by_request_id(session, request_id=request_id)
                if existing is not None:
                    return existing, True
            repo.insert_subjects_if_absent(
                session, rows=[{"pseudonym": new_pseudonym(), "lookup_hash": lookup_hash, "created_at": now}]
            )
            subject = repo.find_subject(session, lookup_hash=lookup_hash)
            assert subject is not None
            change = new_consent_event(
                pseudonym=subject.pseudonym,
                purpose=purpose,
                action=action,
                at=now,
                actor=actor,
                reason=reason,
            )
            row = repo.insert_consent(
                session,
                row=ConsentRecordRow(
                    pseudonym=change.pseudonym,
                    purpose=change.purpose,
                    action=change.action.value,
                    at=change.at,
                    actor=change.actor,
                    reason=change.reason,
                    request_id=request_id or None,
                ),
            )
            repo.append_audit(
                session,
                actor=actor,
                action=f"consent.{change.action.value}",
                target=subject.pseudonym,
                at=now,
                reason=f"{purpose}: {reason}" if reason else purpose,
                request_id=request_id,
            )
        return row, False

    def check_consent(self, *, pseudonyms: Sequence[str], purpose: str) -> list[bool]:
        """Whether each pseudonym may be processed for ``purpose``; False when unknown or erased."""
        get_purpose(purpose)
        with self._engine.connect() as connection:
            latest = repo.latest_consents(connection, pseudonyms=pseudonyms, purpose=purpose)
        # The latest record alone decides, as in the whole history: the domain's rule applies to it.
        states = {
            pseudonym: current_state(
                []
                if record is None
                else [ConsentEvent(pseudonym, purpose, ConsentAction(record[1]), record[0], actor="")],
                purpose=purpose,
            )
            for pseudonym, record in latest.items()
        }
        return [states.get(pseudonym, False) for pseudonym in pseudonyms]

    def consent_page(
        self, *, identifier: str, purpose: str, before_id: int | None, limit: int
    ) -> tuple[str, list[ConsentRecordRow]]:
        if purpose:
            get_purpose(purpose)
        subject = self.find_subject(identifier)
        with self._sessions() as session:
            rows = repo.consent_page(
                session,
                pseudonym=subject.pseudonym,
                purpose=purpose or None,
                before_id=before_id,
                limit=limit,
            )
        return subject.pseudonym, rows

    # --- retention -----------------------------------------------------------------------------------

    def set_retention_rule(
        self, *, event_type: str, retention_days: int, actor: str, reason: str
    ) -> RuleView:
        violations = []
        if event_type and (len(event_type) > 128 or not EVENT_TYPE_PATTERN.fullmatch(event_type)):
            violations.append(
                FieldViolation("rule.event_type", "must be an event type such as phishing.clicked")
            )
        if retention_days < 0:
            violations.append(FieldViolation("rule.retention_days", "must not be negative"))
        elif retention_days > MAX_RETENTION_DAYS:
            # Bounded so every retention date stays representable (and 100 years is beyond any law).
            violations.append(
                FieldViolation("rule.retention_days", f"must be at most {MAX_RETENTION_DAYS} (100 years)")
            )
        if violations:
            raise InvalidArgumentError(
                "invalid retention rule", reason="INVALID_RETENTION_RULE", violations=violations
            )
        now = self._clock()
        with self._write_lock, transaction(self._sessions) as session:
            row = repo.upsert_retention_rule(
                session, event_type=event_type, retention_days=retention_days, actor=actor, at=now
            )
            repo.append_audit(
                session,
                actor=actor,
                action="retention.set_rule",
                target=rule_name(event_type),
                at=now,
                reason=f"{retention_days} days: {reason}" if reason else f"{retention_days} days",
                request_id="",
            )
            return RuleView(
                event_type=row.event_type,
                retention_days=row.retention_days,
                updated_at=row.updated_at,
                actor=row.actor,
            )

    def list_retention_rules(self) -> list[RuleView]:
        """The default rule first (built in unless set), then the event-type rules by name."""
        with self._sessions() as session:
            rows = repo.retention_rules(session)
        views = [RuleView(r.event_type, r.retention_days, r.updated_at, r.actor) for r in rows]
        if not any(view.event_type == DEFAULT_RULE for view in views):
            views.insert(0, RuleView(DEFAULT_RULE, self._default_retention_days, None, ""))
        return sorted(views, key=lambda view: (view.event_type != DEFAULT_RULE, view.event_type))

    def apply_retention(self, *, dry_run: bool, actor: str, reason: str, request_id: str) -> RetentionReport:
        """Shred every period key past the retention of all its event types (or, dry, just report)."""
        now = self._clock()
        with self._write_lock, transaction(self._sessions) as session:
            if request_id:
                previous = repo.retention_run_by_request_id(session, request_id=request_id)
                if previous is not None:
                    return _report_from_json(previous.report, replayed=True)
            expired = self._expired(session, now=now)
            entries = _report_entries(expired)
            by_pair = {(ref.pseudonym, ref.period): key_id for key_id, ref in expired}
            shredded = 0 if dry_run else repo.delete_data_keys(session, key_ids=list(by_pair.values()))
            report = RetentionReport(
                dry_run=dry_run,
                run_time=now,
                entries=entries,
                keys_shredded=len(by_pair) if dry_run else shredded,
                shredded=[] if dry_run else sorted(by_pair),
            )
            repo.insert_retention_run(
                session,
                row=RetentionRunRow(
                    request_id=request_id or None,
                    dry_run=dry_run,
                    run_time=now,
                    actor=actor,
                    keys_shredded=report.keys_shredded,
                    report=_report_to_json(report),
                ),
            )
            repo.append_audit(
                session,
                actor=actor,
                action="retention.dry_run" if dry_run else "retention.apply",
                target="retentionRules",
                at=now,
                reason=f"{report.keys_shredded} keys: {reason}" if reason else f"{report.keys_shredded} keys",
                request_id=request_id,
            )
        if report.keys_shredded and not dry_run:
            self.compact()
        return report

    def _expired(self, session: Session, *, now: datetime) -> list[tuple[str, PeriodRef]]:
        days: dict[str, int] = {view.event_type: view.retention_days for view in self._rules_in(session)}
        default_days = days.pop(DEFAULT_RULE)
        forever = {event_type for event_type, value in days.items() if value == KEEP_UNTIL_ERASED}
        finite = {event_type: value for event_type, value in days.items() if value != KEEP_UNTIL_ERASED}
        default_forever = default_days == KEEP_UNTIL_ERASED
        finite_values = [*finite.values(), *([] if default_forever else [default_days])]
        if not finite_values:
            return []
        # A key can only expire once its period ended more than the shortest retention ago.
        periods_before = key_period(now - timedelta(days=min(finite_values)), granularity="month")
        candidates = repo.retention_candidates(session, periods_before=periods_before)
        types = repo.event_types_of(session, key_ids=[key.key_id for key in candidates])

        def kept_until_erased(event_types: set[str]) -> bool:
            if not event_types:  # unknown content: the longest rule applies
                return default_forever or bool(forever)
            return any(t in forever or (t not in finite and default_forever) for t in event_types)

        refs: dict[tuple[str, str], tuple[str, PeriodRef]] = {}
        for key in candidates:
            key_types = types.get(key.key_id, set())
            if kept_until_erased(key_types):
                continue
            ref = PeriodRef(pseudonym=key.pseudonym, period=key.period, event_types=frozenset(key_types))
            refs[(key.pseudonym, key.period)] = (key.key_id, ref)
        rules = RetentionRules(
            default_days=max(finite_values) if default_forever else default_days, days_by_event_type=finite
        )
        expired = expired_periods([ref for _, ref in refs.values()], rules=rules, now=now)
        return [refs[(ref.pseudonym, ref.period)] for ref in expired]

    def _rules_in(self, session: Session) -> list[RuleView]:
        views = [
            RuleView(r.event_type, r.retention_days, r.updated_at, r.actor)
            for r in repo.retention_rules(session)
        ]
        if not any(view.event_type == DEFAULT_RULE for view in views):
            views.append(RuleView(DEFAULT_RULE, self._default_retention_days, None, ""))
        return views

    # --- KEK -----------------------------------------------------------------------------------------

    def rotate_kek(self, *, actor: str, reason: str, request_id: str) -> RotationResult:
        """New active KEK in the dev keyring file, every key re-wrapped, unused old KEKs retired."""
        path = self._keyring_file
        if path is None:
            raise FailedPreconditionError(
                "the KEK comes from a read-only Secret: rotate it there (add the new KEK as active, keep the "
                "old one beside it) and restart; the service re-wraps every key at start-up",
                reason="KEK_READ_ONLY",
            )
        with self._write_lock:
            if request_id:
                with self._sessions() as session:
                    previous = repo.kek_rotation_by_request_id(session, request_id=request_id)
                if previous is not None:
                    return RotationResult(
                        kek_id=previous.kek_id,
                        keys_rewrapped=previous.keys_rewrapped,
                        retired_kek_ids=[k for k in previous.retired_kek_ids.split(",") if k],
                        replayed=True,
                    )
            rotated = self._keyring.with_new_active()
            # The new KEK is durable before any key is wrapped under it.
            write_keyring_file(path, rotated)
            self._keyring = rotated
            rewrapped = self._rewrap_locked()
            now = self._clock()
            with transaction(self._sessions) as session:
                in_use = repo.key_counts_by_kek(session)
                retired = sorted(k for k in rotated if k != rotated.active_id and not in_use.get(k))
                if retired:
                    remaining = rotated
                    for kek_id in retired:
                        remaining = remaining.without(kek_id)
                    write_keyring_file(path, remaining)
                    self._keyring = remaining
                repo.insert_kek_rotation(
                    session,
                    row=KekRotationRow(
                        request_id=request_id or None,
                        kek_id=rotated.active_id,
                        keys_rewrapped=rewrapped,
                        retired_kek_ids=",".join(retired),
                        actor=actor,
                        at=now,
                    ),
                )
                repo.append_audit(
                    session,
                    actor=actor,
                    action="kek.rotate",
                    target=f"keks/{rotated.active_id}",
                    at=now,
                    reason=f"{rewrapped} keys re-wrapped: {reason}"
                    if reason
                    else f"{rewrapped} keys re-wrapped",
                    request_id=request_id,
                )
        self.compact()
        return RotationResult(kek_id=rotated.active_id, keys_rewrapped=rewrapped, retired_kek_ids=retired)

    def kek_usage(self) -> dict[str, int]:
        """How many data keys each KEK id wraps (a KEK that wraps none may be destroyed)."""
        with self._sessions() as session:
            return repo.key_counts_by_kek(session)

    def record_kek_destroyed(self, kek_ids: list[str], *, actor: str, reason: str) -> None:
        """Audit that ``kek_ids`` were deleted from the keyring Secret (no key is wrapped under them)."""
        with self._write_lock, transaction(self._sessions) as session:
            repo.append_audit(
                session,
                actor=actor,
                action="kek.destroy",
                target=",".join(f"keks/{kek_id}" for kek_id in kek_ids),
                at=self._clock(),
                reason=reason,
                request_id="",
            )

    def rewrap_pending(self, *, actor: str) -> int:
        """Re-wrap keys not under the active KEK (after a restart with a rotated Secret)."""
        with self._write_lock:
            rewrapped = self._rewrap_locked()
            if rewrapped:
                with transaction(self._sessions) as session:
                    repo.append_audit(
                        session,
                        actor=actor,
                        action="kek.rewrap",
                        target=f"keks/{self._keyring.active_id}",
                        at=self._clock(),
                        reason=f"{rewrapped} keys re-wrapped under the active KEK at start-up",
                        request_id="",
                    )
        if rewrapped:
            self.compact()
        return rewrapped

    def _rewrap_locked(self) -> int:
        keyring = self._keyring
        rewrapped = 0
        after = ""
        while True:
            with transaction(self._sessions) as session:
                batch = repo.data_keys_not_under(
                    session, kek_id=keyring.active_id, after_key_id=after, limit=_REWRAP_BATCH
                )
                if not batch:
                    return rewrapped
                now = self._clock()
                for key in batch:
                    after = key.key_id
                    aad = data_key_aad(pseudonym=key.pseudonym, period=key.period, key_id=key.key_id)
                    try:
                        fresh = keyring.rewrap(WrappedKey(key.kek_id, key.nonce, key.wrapped), aad=aad)
                    except KeyUnwrapError:
                        # Its KEK is not in the keyring: leave it (readable again once the KEK is back).
                        log.error(
                            "cannot re-wrap a data key", extra={"key_id": key.key_id, "kek_id": key.kek_id}
                        )
                        continue
                    if repo.replace_wrapping(
                        session,
                        key_id=key.key_id,
                        expected_kek_id=key.kek_id,
                        kek_id=fresh.kek_id,
                        nonce=fresh.nonce,
                        wrapped=fresh.ciphertext,
                        at=now,
                    ):
                        rewrapped += 1

    def key_counts_by_kek(self) -> dict[str, int]:
        with self._sessions() as session:
            return repo.key_counts_by_kek(session)

    # --- audit ---------------------------------------------------------------------------------------

    def audit_page(self, **filters: Any) -> list[Any]:
        with self._sessions() as session:
            return repo.audit_page(session, **filters)

    def verify_audit(self) -> int | None:
        """Index of the first broken audit entry, or None when the whole chain verifies."""
        with self._sessions() as session:
            return verify_chain(repo.audit_entries(session))


def rule_name(event_type: str) -> str:
    return f"retentionRules/{event_type or 'default'}"


def _report_entries(expired: Sequence[tuple[str, PeriodRef]]) -> list[RetentionEntry]:
    pseudonyms: dict[tuple[str, str], set[str]] = defaultdict(set)
    for _, ref in expired:
        for event_type in ref.event_types or {""}:
            pseudonyms[(ref.period, event_type)].add(ref.pseudonym)
    return [
        RetentionEntry(key_period=period, event_type=event_type, pseudonym_count=len(members))
        for (period, event_type), members in sorted(pseudonyms.items())
    ]


def _report_to_json(report: RetentionReport) -> str:
    return json.dumps(
        {
            "dry_run": report.dry_run,
            "run_time": report.run_time.isoformat(),
            "keys_shredded": report.keys_shredded,
            "entries": [
                {"key_period": e.key_period, "event_type": e.event_type, "pseudonym_count": e.pseudonym_count}
                for e in report.entries
            ],
        },
        sort_keys=True,
    )


def _report_from_json(text: str, *, replayed: bool) -> RetentionReport:
    document = json.loads(text)
    return RetentionReport(
        dry_run=bool(document["dry_run"]),
        run_time=datetime.fromisoformat(document["run_time"]),
        entries=[RetentionEntry(**entry) for entry in document["entries"]],
        keys_shredded=int(document["keys_shredded"]),
        shredded=[],
        replayed=replayed,
    )
