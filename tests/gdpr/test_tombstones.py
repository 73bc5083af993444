"""Erasure tombstones: written before an erasure commits, and replayed into a restored store.

On SQLite and PostgreSQL (the harness's database), with the gdpr store in process.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from services.gdpr import repository as repo
from services.gdpr.keysource import load_key_material
from services.gdpr.recovery import REPLAY_ACTOR, replay_erasures
from services.gdpr.service.transactions import GdprStore, KeyRequest
from services.gdpr.tombstones import TOMBSTONE_UNAVAILABLE, TombstoneJournal
from services.runtime import db
from services.runtime.errors import UnavailableError
from tests.gdpr.conftest import Harness

MARCH = datetime(2025, 3, 14, 9, 0, tzinfo=UTC)


@pytest.fixture
def store(harness: Harness, tmp_path: Path) -> Iterator[tuple[GdprStore, TombstoneJournal]]:
    engine = db.create_db_engine(harness.database_url, service="gdpr")
    journal = TombstoneJournal(tmp_path / "archive")
    material = load_key_material(env={}, data_dir=harness.data_dir)
    try:
        yield (
            GdprStore(
                engine=engine, sessions=db.session_factory(engine), material=material, tombstones=journal
            ),
            journal,
        )
    finally:
        engine.dispose()


def _person(store: GdprStore) -> str:
    subject = f"person-{uuid.uuid4().hex}@example.org"
    store.issue_keys([KeyRequest(subject=subject, occurred_at=MARCH, event_type="phishing.clicked")])
    return subject


def test_an_erasure_leaves_a_tombstone_with_its_id_pseudonym_and_time_only(
    store: tuple[GdprStore, TombstoneJournal],
) -> None:
    gdpr, journal = store
    subject = _person(gdpr)
    outcome = gdpr.erase(identifier=subject, actor="dpo:dana", reason="asked by Jane Doe", request_id="")
    (tombstone,) = journal.read()
    assert tombstone.erasure_id == outcome.record.erasure_id
    assert tombstone.pseudonym == outcome.record.pseudonym
    text = (journal.directory / f"{tombstone.erasure_id}.json").read_text()
    assert "Jane" not in text and "dpo:dana" not in text and subject not in text


def test_an_erasure_whose_tombstone_cannot_be_written_erases_nothing(
    store: tuple[GdprStore, TombstoneJournal],
) -> None:
    gdpr, journal = store
    subject = _person(gdpr)
    journal.directory.parent.mkdir(parents=True)
    journal.directory.write_text("a file where the directory should be")
    with pytest.raises(UnavailableError) as refused:
        gdpr.erase(identifier=subject, actor="dpo:dana", reason="r", request_id="")
    assert refused.value.reason == TOMBSTONE_UNAVAILABLE
    assert gdpr.find_subject(subject).pseudonym  # still there, keys and all


def test_replay_shreds_the_keys_a_restore_brought_back_once(
    store: tuple[GdprStore, TombstoneJournal], harness: Harness
) -> None:
    gdpr, journal = store
    subject = _person(gdpr)
    pseudonym = gdpr.find_subject(subject).pseudonym
    # As if restored from before the erasure: the keys exist, only the tombstone knows.
    erasure_id = str(uuid.uuid4())
    journal.write(erasure_id=erasure_id, pseudonym=pseudonym, erase_time=datetime.now(UTC))
    engine = db.create_db_engine(harness.database_url, service="gdpr")
    sessions = db.session_factory(engine)
    try:
        first = replay_erasures(sessions, journal)
        again = replay_erasures(sessions, journal)
        with sessions() as session:
            assert repo.key_ids_of(session, pseudonym=pseudonym) == []
            record = repo.get_erasure(session, erasure_id=erasure_id)
            assert record is not None and record.actor == REPLAY_ACTOR and record.log_event_id is None
    finally:
        engine.dispose()
    assert first.replayed == [erasure_id] and first.keys_shredded >= 1
    assert again.replayed == [] and again.already_erased == 1
    with pytest.raises(Exception, match="erased"):
        gdpr.find_subject(subject)
