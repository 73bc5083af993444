"""After a restore: replay the erasures made since the backup, so that nobody erased comes back.

Each tombstone (services.gdpr.tombstones) whose erasure the restored database does not hold is done
again as ``GdprStore.erase`` did it: the person's data keys, subject entry and directory entry are
deleted, and the erasure record is written back under its own id with an audit entry. The record's
log append stays to do (``log_event_id`` unset), so gdpr's retrier finishes it when the suite runs:
it tells ingest to forget the person, and finds the erasure's log event already there when the
archive brought it back (the event id is derived from the erasure id).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy.orm import Session, sessionmaker

from services.gdpr import repository as repo
from services.gdpr.models import ErasureRecordRow
from services.gdpr.tombstones import TombstoneJournal
from services.runtime.db import transaction

REPLAY_ACTOR = "system:restore"
REPLAY_REASON = "replayed from the erasure tombstones after a restore"


@dataclass(slots=True)
class ErasureReplay:
    tombstones: int = 0
    already_erased: int = 0
    replayed: list[str] = field(default_factory=list)  # erasure ids
    keys_shredded: int = 0


def replay_erasures(sessions: sessionmaker[Session], journal: TombstoneJournal) -> ErasureReplay:
    result = ErasureReplay()
    for tombstone in journal.read():
        result.tombstones += 1
        with transaction(sessions) as session:
            if repo.get_erasure(session, erasure_id=tombstone.erasure_id) is not None:
                result.already_erased += 1
                continue
            pseudonym = tombstone.pseudonym
            shredded = repo.shred_subject(session, pseudonym=pseudonym)
            repo.insert_erasure(
                session,
                row=ErasureRecordRow(
                    erasure_id=tombstone.erasure_id,
                    pseudonym=pseudonym,
                    erase_time=tombstone.erase_time,
                    actor=REPLAY_ACTOR,
                    reason=REPLAY_REASON,
                    request_id=tombstone.erasure_id,
                    keys_shredded=shredded,
                    events_affected=None,
                    log_event_id=None,
                ),
            )
            repo.append_audit(
                session,
                actor=REPLAY_ACTOR,
                action="subject.erase",
                target=pseudonym,
                at=datetime.now(UTC),
                reason=REPLAY_REASON,
                request_id=tombstone.erasure_id,
            )
        result.replayed.append(tombstone.erasure_id)
        result.keys_shredded += shredded
    return result
