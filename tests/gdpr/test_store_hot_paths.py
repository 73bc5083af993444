"""GdprStore's paths for people it knows, on SQLite and PostgreSQL: key issuance when every key exists
(one statement; one more when a key gains an event type) and CheckConsent (one statement), with the
semantics of the full paths: erasure racing issuance, departments, the latest consent record deciding.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, text

from services.gdpr import repository as repo
from services.gdpr.domain.consent import ConsentAction, current_state
from services.gdpr.domain.directory import DirectoryEntry
from services.gdpr.keysource import load_key_material
from services.gdpr.service.transactions import GdprStore, IssuedKey, KeyRequest
from services.runtime import db
from tests.support.resources import migrated_engine

MARCH = datetime(2025, 3, 14, 9, 30, tzinfo=UTC)
APRIL = datetime(2025, 4, 2, 17, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2025, 5, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def engine(database_url: str, tmp_path: Path) -> Iterator[Engine]:
    url = database_url or f"sqlite:///{tmp_path / 'gdpr.db'}"
    with migrated_engine(url, "gdpr") as migrated:
        yield migrated


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(engine: Engine, tmp_path: Path, clock: Clock) -> GdprStore:
    material = load_key_material(env={}, data_dir=tmp_path / "keys")
    return GdprStore(engine=engine, sessions=db.session_factory(engine), material=material, clock=clock)


class Statements:
    """The SQL statements the engine runs while recording (what the database is asked, in order)."""

    def __init__(self, engine: Engine) -> None:
        self.seen: list[str] = []
        self.compiled_before: list[bool] = []  # taken from SQLAlchemy's compiled-statement cache
        self._engine = engine

    def _record(
        self, _conn: Any, _cursor: Any, statement: str, _parameters: Any, context: Any, _executemany: bool
    ) -> None:
        self.seen.append(" ".join(statement.split()))
        self.compiled_before.append(context.cache_hit == context.dialect.CACHE_HIT)

    def __enter__(self) -> Statements:
        event.listen(self._engine, "before_cursor_execute", self._record)
        return self

    def __exit__(self, *_exc: object) -> None:
        event.remove(self._engine, "before_cursor_execute", self._record)

    @property
    def verbs(self) -> list[str]:
        return [statement.split()[0] for statement in self.seen]


def event_types(engine: Engine, key_id: str) -> set[str]:
    with engine.connect() as connection:
        rows = connection.execute(
            text("SELECT event_type FROM data_key_event_types WHERE key_id = :key_id"), {"key_id": key_id}
        )
        return {row.event_type for row in rows}


def key_exists(engine: Engine, key_id: str) -> bool:
    with engine.connect() as connection:
        found = connection.execute(text("SELECT 1 FROM data_keys WHERE key_id = :k"), {"k": key_id}).first()
        return found is not None


def same(first: list[IssuedKey], second: list[IssuedKey]) -> None:
    def view(keys: list[IssuedKey]) -> list[tuple[str, str, str, bytes, str]]:
        return [(k.pseudonym, k.period, k.key_id, k.data_key, k.department) for k in keys]

    assert view(first) == view(second)


def test_a_batch_of_known_keys_is_one_read_and_a_new_event_type_one_insert_more(
    store: GdprStore, engine: Engine
) -> None:
    people = ["ada@example.org", "grace@example.org", "alan@example.org"]
    store.import_directory(
        [DirectoryEntry("ada@example.org", "Finance"), DirectoryEntry("grace@example.org", "Research")],
        replace=False,
        import_id="",
        actor="admin:ada",
    )
    first = store.issue_keys([KeyRequest(p, MARCH, "phishing.clicked") for p in people])
    assert first.keys_created == 3
    assert [key.department for key in first.keys] == ["Finance", "Research", ""]

    with Statements(engine) as warm:
        again = store.issue_keys([KeyRequest(p, MARCH, "phishing.clicked") for p in people])
    assert warm.verbs == ["SELECT"]  # keys, event types and departments in one statement
    assert again.keys_created == 0
    same(again.keys, first.keys)

    # Two people's keys gain an event type (one asked twice, one under the type it has): one insert.
    requests = [
        KeyRequest("ada@example.org", MARCH, "phishing.reported"),
        KeyRequest("grace@example.org", MARCH.replace(day=28), "phishing.reported"),
        KeyRequest("ada@example.org", MARCH, "phishing.reported"),
        KeyRequest("alan@example.org", MARCH, "phishing.clicked"),
        KeyRequest("alan@example.org", MARCH, ""),  # no event type: nothing to record
    ]
    with Statements(engine) as typed:
        reported = store.issue_keys(requests)
    assert typed.verbs == ["SELECT", "INSERT"]
    assert "data_key_event_types" in typed.seen[1]
    assert typed.seen[1].count("), (") == 1  # both pairs in one statement, one round trip
    assert reported.keys_created == 0
    same(reported.keys, [first.keys[0], first.keys[1], first.keys[0], first.keys[2], first.keys[2]])
    assert event_types(engine, first.keys[0].key_id) == {"phishing.clicked", "phishing.reported"}
    assert event_types(engine, first.keys[1].key_id) == {"phishing.clicked", "phishing.reported"}
    assert event_types(engine, first.keys[2].key_id) == {"phishing.clicked"}

    # Recorded: the next such batch is the single read again.
    with Statements(engine) as after:
        store.issue_keys(requests)
    assert after.verbs == ["SELECT"]


def test_first_sight_inserts_are_compiled_once_and_then_taken_from_the_statement_cache(
    store: GdprStore, engine: Engine
) -> None:
    # SQLAlchemy 2.0 does not cache its dialects' ON CONFLICT inserts; gdpr's own do (repository.py).
    def first_sight(*people: str) -> list[bool]:
        with Statements(engine) as seen:
            result = store.issue_keys([KeyRequest(person, MARCH, "phishing.clicked") for person in people])
        assert result.keys_created == len(people)
        pairs = zip(seen.verbs, seen.compiled_before, strict=True)
        inserts = [cached for verb, cached in pairs if verb == "INSERT"]
        assert len(inserts) == 3  # subjects, keys, event types
        return inserts

    # One row and several are two shapes of statement (execute and executemany), each compiled once.
    assert first_sight("ada@example.org") == [False, False, False]
    assert first_sight("grace@example.org", "alan@example.org") == [False, False, False]
    assert first_sight("erin@example.org") == [True, True, True]
    assert first_sight("newton@example.org", "lovelace@example.org", "hopper@example.org") == [True] * 3


def test_new_people_are_inserted_without_a_read_and_a_known_persons_new_period_keeps_their_pseudonym(
    store: GdprStore, engine: Engine
) -> None:
    march = store.issue_keys([KeyRequest("ada@example.org", MARCH, "phishing.clicked")]).keys[0]
    with Statements(engine) as first_sight:
        new = store.issue_keys(
            [KeyRequest(p, MARCH, "phishing.clicked") for p in ("grace@example.org", "alan@example.org")]
        )
    # The read before the lock, then subjects, keys and event types inserted: no read of the
    # subjects ahead of their insert.
    assert [" ".join(s.split()[:3]) for s in first_sight.seen] == [
        "SELECT subjects.lookup_hash, data_keys.key_id,",
        "INSERT INTO subjects",
        "INSERT INTO data_keys",
        "INSERT INTO data_key_event_types",
    ]
    assert new.keys_created == 2
    assert len({key.pseudonym for key in new.keys} | {march.pseudonym}) == 3

    # Ada has no April key: the read before the lock does not find her, the subjects insert skips
    # her, and her pseudonym is read back after it.
    with Statements(engine) as new_period:
        april = store.issue_keys([KeyRequest("ada@example.org", APRIL, "phishing.clicked")])
    assert new_period.verbs[:3] == ["SELECT", "INSERT", "SELECT"]
    assert april.keys_created == 1
    assert april.keys[0].pseudonym == march.pseudonym and april.keys[0].key_id != march.key_id


def test_a_key_erased_between_the_read_and_the_event_type_insert_is_not_issued(
    store: GdprStore, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    subject = "erin@example.org"
    old = store.issue_keys([KeyRequest(subject, MARCH, "phishing.clicked")]).keys[0]
    read = repo.find_keys_by_lookup
    erased: list[str] = []

    def read_then_erase(*args: Any, **kwargs: Any) -> Any:
        found = read(*args, **kwargs)
        if not erased:  # the first read found the key; the person is erased before the insert
            outcome = store.erase(identifier=subject, actor="dpo:dana", reason="Art. 17", request_id="")
            erased.append(outcome.record.pseudonym)
        return found

    monkeypatch.setattr(repo, "find_keys_by_lookup", read_then_erase)
    result = store.issue_keys([KeyRequest(subject, MARCH, "phishing.reported")])
    assert erased == [old.pseudonym]
    new = result.keys[0]
    # As if never seen: a new person and key (the full path's answer), the erased key stays gone.
    assert result.keys_created == 1
    assert new.pseudonym != old.pseudonym and new.key_id != old.key_id and new.data_key != old.data_key
    assert not key_exists(engine, old.key_id) and event_types(engine, old.key_id) == set()
    assert event_types(engine, new.key_id) == {"phishing.reported"}


def test_a_batch_with_missing_keys_takes_departments_from_the_keys_read_and_the_directory(
    store: GdprStore, engine: Engine
) -> None:
    store.import_directory(
        [DirectoryEntry("ada@example.org", "Finance"), DirectoryEntry("grace@example.org", "Research")],
        replace=False,
        import_id="",
        actor="admin:ada",
    )
    store.issue_keys([KeyRequest("ada@example.org", MARCH, "phishing.clicked")])
    departments_read = "FROM directory_entries WHERE"
    # Ada's March key exists (its row carries her department); Grace is placed but has no key yet;
    # Newton is new. Missing keys: the full path.
    with Statements(engine) as full:
        result = store.issue_keys(
            [
                KeyRequest("ada@example.org", MARCH, "phishing.clicked"),
                KeyRequest("grace@example.org", MARCH, "phishing.clicked"),
                KeyRequest("newton@example.org", MARCH, "phishing.clicked"),
            ]
        )
    assert result.keys_created == 2
    assert [key.department for key in result.keys] == ["Finance", "Research", ""]
    assert sum(departments_read in statement for statement in full.seen) == 1  # for Grace only

    # Every subject's department comes with a key read: no read of the directory on its own.
    with Statements(engine) as keyed:
        april = store.issue_keys(
            [
                KeyRequest("ada@example.org", APRIL, "phishing.clicked"),
                KeyRequest("ada@example.org", MARCH, "phishing.clicked"),
                KeyRequest("lovelace@example.org", MARCH, "phishing.clicked"),
            ]
        )
    assert april.keys_created == 2
    assert [key.department for key in april.keys] == ["Finance", "Finance", ""]
    assert not any(departments_read in statement for statement in keyed.seen)


def test_check_consent_is_one_statement_and_the_latest_record_decides(
    store: GdprStore, engine: Engine, clock: Clock
) -> None:
    def pseudonym_of(subject: str) -> str:
        return store.issue_keys([KeyRequest(subject, MARCH)]).keys[0].pseudonym

    def change(subject: str, action: ConsentAction, purpose: str = "profiling") -> None:
        store.change_consent(
            identifier=subject, purpose=purpose, action=action, actor="dpo:dana", reason="", request_id=""
        )

    silent = pseudonym_of("silent@example.org")
    withdrew = pseudonym_of("withdrew@example.org")
    change("withdrew@example.org", ConsentAction.WITHDRAW)
    regranted = pseudonym_of("regranted@example.org")
    change("regranted@example.org", ConsentAction.WITHDRAW)
    clock.now += timedelta(hours=1)
    change("regranted@example.org", ConsentAction.GRANT)
    tied = pseudonym_of("tied@example.org")  # withdrawn and granted at one instant: recorded last wins
    change("tied@example.org", ConsentAction.WITHDRAW)
    change("tied@example.org", ConsentAction.GRANT)
    backdated = pseudonym_of("backdated@example.org")  # recorded last, but earlier in time: loses
    change("backdated@example.org", ConsentAction.WITHDRAW)
    clock.now -= timedelta(days=1)
    change("backdated@example.org", ConsentAction.GRANT)
    elsewhere = pseudonym_of("elsewhere@example.org")  # only another purpose's records
    change("elsewhere@example.org", ConsentAction.WITHDRAW, purpose="analytics")
    change("elsewhere@example.org", ConsentAction.GRANT, purpose="training_data")
    erased = pseudonym_of("erased@example.org")
    change("erased@example.org", ConsentAction.GRANT)
    store.erase(identifier="erased@example.org", actor="dpo:dana", reason="Art. 17", request_id="")

    known = [silent, withdrew, regranted, tied, backdated, elsewhere]
    asked = [*known, "psn_unknown", erased, withdrew, silent]
    with Statements(engine) as profiling:
        granted = store.check_consent(pseudonyms=asked, purpose="profiling")
    assert profiling.verbs == ["SELECT"]
    assert granted == [True, False, True, True, False, True, False, False, False, True]
    # The same answers as the domain's rule over each person's whole history, for every purpose.
    for purpose in ("profiling", "analytics", "training_data"):
        expected = [
            current_state([e for e in store.consent_events(p) if e.purpose == purpose], purpose=purpose)
            for p in known
        ]
        assert store.check_consent(pseudonyms=known, purpose=purpose) == expected
    assert store.check_consent(pseudonyms=[elsewhere], purpose="training_data") == [True]

    # Past 500 pseudonyms, one statement per 500: each answer still lands on its pseudonym.
    many = [f"psn_unknown_{index}" for index in range(600)]
    with Statements(engine) as chunked:
        answers = store.check_consent(pseudonyms=[*many, withdrew, regranted], purpose="profiling")
    assert chunked.verbs == ["SELECT", "SELECT"]
    assert answers == [False] * 600 + [False, True]


def test_a_key_read_reads_only_the_keys_asked_for_before_any_statistics(
    fresh_postgres_db: str, tmp_path: Path
) -> None:
    """On a database PostgreSQL has not analysed yet (a new deployment; a new month's keys), the read
    of five people's keys must not walk every key of the period: it once did, through an index on
    the period alone, at 60 times the cost."""
    with migrated_engine(fresh_postgres_db, "gdpr") as engine:
        material = load_key_material(env={}, data_dir=tmp_path / "keys")
        store = GdprStore(engine=engine, sessions=db.session_factory(engine), material=material)
        with engine.begin() as connection:  # no ANALYZE behind the test's back on any machine
            for table in ("subjects", "data_keys", "data_key_event_types"):
                connection.execute(text(f"ALTER TABLE {table} SET (autovacuum_enabled = false)"))
        people = [f"person{i}@example.org" for i in range(2000)]
        for start in range(0, len(people), 500):
            store.issue_keys(
                [KeyRequest(person, MARCH, "phishing.clicked") for person in people[start : start + 500]]
            )
        unanalysed = "SELECT last_analyze IS NULL AND last_autoanalyze IS NULL FROM pg_stat_user_tables"
        with engine.connect() as connection:
            assert connection.execute(text(unanalysed + " WHERE relname = 'data_keys'")).scalar_one()
        captured: list[tuple[str, Any]] = []

        def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_args: Any) -> None:
            captured.append((statement, parameters))

        event.listen(engine, "before_cursor_execute", capture)
        try:
            store.issue_keys([KeyRequest(person, MARCH, "phishing.clicked") for person in people[:5]])
        finally:
            event.remove(engine, "before_cursor_execute", capture)
        [(statement, parameters)] = captured
        raw = engine.raw_connection()
        try:
            cursor = raw.cursor()
            cursor.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + statement, parameters)
            [[[plan]]] = cursor.fetchall()
        finally:
            raw.close()

        def rows_of(node: dict[str, Any], relation: str) -> float:
            own = node["Actual Rows"] * node["Actual Loops"] if node.get("Relation Name") == relation else 0
            removed = node.get("Rows Removed by Filter", 0) * node["Actual Loops"]
            own += removed if node.get("Relation Name") == relation else 0
            return own + sum(rows_of(child, relation) for child in node.get("Plans", []))

        assert rows_of(plan["Plan"], "data_keys") <= 5
