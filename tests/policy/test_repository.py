"""Persistence of the policy service on SQLite and PostgreSQL: migrations, conditional writes, generations."""

from __future__ import annotations

import datetime
from collections.abc import Iterator

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from services.policy import api, repository
from services.policy.domain.errors import EtagMismatchError
from services.policy.domain.lifecycle import (
    Permission,
    PolicyState,
    Principal,
    approve_policy,
    create_policy,
    new_version,
    retire_policy,
    submit_policy,
    update_draft,
)
from services.policy.models import Base, PolicyHistoryRow
from services.runtime import auth, db
from services.runtime.errors import UnauthenticatedError
from services.runtime.paging import page_size
from tests.support.resources import migrated_engine

T0 = datetime.datetime(2024, 6, 1, 9, 0, tzinfo=datetime.UTC)
AUTHOR = Principal(id="alice", permissions=frozenset({Permission.AUTHOR, Permission.SUBMIT}))
OTHER_AUTHOR = Principal(id="bob", permissions=frozenset({Permission.AUTHOR, Permission.SUBMIT}))
APPROVER = Principal(id="carol", permissions=frozenset({Permission.APPROVE, Permission.RETIRE}))


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    with migrated_engine(database_url, "policy") as created:
        yield created


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    return db.session_factory(engine)


def _new_draft(sessions: sessionmaker[Session], policy_id: str = "p") -> None:
    change = create_policy(principal=AUTHOR, name=policy_id, title="t", rule="true", severity="LOW", now=T0)
    with db.transaction(sessions) as session:
        repository.apply_changes(session, changes=[change])


def _history_count(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        return int(session.scalar(select(func.count()).select_from(PolicyHistoryRow)) or 0)


def test_migrations_match_the_models(engine: Engine) -> None:
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
        if engine.dialect.name == "postgresql":  # ids sort bytewise whatever the server's locale
            collations = connection.exec_driver_sql(
                "SELECT DISTINCT collation_name FROM information_schema.columns "
                "WHERE column_name = 'policy_id' AND table_schema = 'awareness_policy'"
            ).scalars()
            assert list(collations) == ["C"]
    assert differences == []


def test_of_two_writers_of_the_same_revision_exactly_one_wins(sessions: sessionmaker[Session]) -> None:
    _new_draft(sessions)
    with sessions() as session:
        snapshot = repository.get_version(session, policy_id="p", version=1)
    assert snapshot is not None
    # Both read revision 1; each change is legal on its own.
    edit = update_draft(snapshot.version, principal=OTHER_AUTHOR, now=T0, title="edited")
    submit = submit_policy(snapshot.version, principal=AUTHOR, now=T0)
    with db.transaction(sessions) as session:
        repository.apply_changes(session, changes=[edit])
    with pytest.raises(EtagMismatchError), db.transaction(sessions) as session:
        repository.apply_changes(session, changes=[submit])
    with sessions() as session:
        stored = repository.get_version(session, policy_id="p", version=1)
    assert stored is not None
    assert (stored.version.state, stored.version.title, stored.version.revision) == (
        PolicyState.DRAFT,
        "edited",
        2,
    )
    assert _history_count(sessions) == 2, "the losing write left no history behind"


def test_approval_and_supersession_commit_together_or_not_at_all(sessions: sessionmaker[Session]) -> None:
    _new_draft(sessions)
    with sessions() as session:
        draft = repository.get_version(session, policy_id="p", version=1)
    assert draft is not None
    submitted = submit_policy(draft.version, principal=AUTHOR, now=T0)
    [approved] = approve_policy(submitted.after, principal=APPROVER, now=T0)
    with db.transaction(sessions) as session:
        repository.apply_changes(session, changes=[submitted, approved])
        generation = repository.active_set_generation(session)
    assert generation == 1
    # A retirement racing the approval of version 2: the approval's supersession must fail as a whole.
    revision = new_version(approved.after, principal=OTHER_AUTHOR, now=T0)
    review = submit_policy(revision.after, principal=OTHER_AUTHOR, now=T0)
    with db.transaction(sessions) as session:
        repository.apply_changes(session, changes=[revision, review])
    changes = approve_policy(review.after, principal=APPROVER, now=T0, currently_active=approved.after)
    retire = retire_policy(approved.after, principal=APPROVER, now=T0)
    with db.transaction(sessions) as session:
        repository.apply_changes(session, changes=[retire])
    with pytest.raises(EtagMismatchError), db.transaction(sessions) as session:
        repository.apply_changes(session, changes=changes)
    with sessions() as session:
        versions = repository.list_versions(session, policy_id="p")
        assert [stored.version.state for stored in versions] == [PolicyState.RETIRED, PolicyState.REVIEW]
        assert repository.list_active_policies(session) == []
        assert repository.active_set_generation(session) == 2, "approve +1, retire +1, failed approve +0"


def test_generation_moves_only_when_the_active_set_changes(sessions: sessionmaker[Session]) -> None:
    _new_draft(sessions)
    with sessions() as session:
        assert repository.active_set_generation(session) == 0
        draft = repository.get_version(session, policy_id="p", version=1)
    assert draft is not None
    submitted = submit_policy(draft.version, principal=AUTHOR, now=T0)
    with db.transaction(sessions) as session:
        repository.apply_changes(session, changes=[submitted])
        assert repository.active_set_generation(session) == 0


def test_domain_principal_maps_runtime_permissions() -> None:
    author = api.domain_principal(auth.Principal("a", frozenset({"policy_author"})))
    assert author.permissions == {Permission.AUTHOR, Permission.SUBMIT}
    approver = api.domain_principal(auth.Principal("c", frozenset({"policy_approver"})))
    assert approver.permissions == {Permission.APPROVE, Permission.REJECT, Permission.RETIRE}
    assert api.domain_principal(auth.Principal("r", frozenset({"admin"}))).permissions == set(Permission)
    assert api.domain_principal(auth.Principal("x", frozenset({"analyst"}))).permissions == frozenset()
    with pytest.raises(UnauthenticatedError):
        api.domain_principal(None)


def test_policy_lists_default_to_pages_of_50() -> None:
    sizes = [page_size(n, default=api.DEFAULT_PAGE_SIZE) for n in (0, 5, 50_000)]
    assert sizes == [50, 5, 1000]
