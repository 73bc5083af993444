"""Portal sessions in the gateway's real store (SQLite and PostgreSQL): what the cookie is worth, and
when it stops being worth anything."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import inspect, select
from sqlalchemy.orm import Session, sessionmaker

from services.gateway import repository as keys_repository
from services.gateway.authn import Authenticator
from services.gateway.config import load_gateway_config
from services.gateway.domain import keys
from services.gateway.models import PortalSession
from services.portal import repository as portal_repository
from services.portal.config import PortalConfig
from services.portal.domain.sessions import Expiry, token_hash
from services.portal.service import Ended, Person, Sessions
from services.runtime import auth, db, migrations
from services.runtime.config import load_settings
from services.runtime.errors import PermissionDeniedError, UnauthenticatedError
from tests.gateway.conftest import gateway_env

START = datetime(2026, 12, 6, 9, 0, tzinfo=UTC)


@dataclass
class Clock:
    now: datetime = START

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Store:
    factory: sessionmaker[Session]
    authenticator: Authenticator
    clock: Clock

    def sessions(self, **config: int) -> Sessions:
        return Sessions(
            store=self.factory,
            authenticator=self.authenticator,
            config=PortalConfig(**config),  # type: ignore[arg-type]
            clock=self.clock,
        )

    def add_key(self, *roles: str, expires_at: datetime | None = None) -> str:
        new = keys.generate_key()
        with db.transaction(self.factory) as session:
            keys_repository.add_key(
                session,
                key_id=new.key_id,
                name="portal",
                secret_hash=keys.hash_secret(new.secret),
                roles=roles,
                created_at=START,
                expires_at=expires_at,
            )
        return new.token

    def last_seen(self, token: str) -> datetime:
        with self.factory() as session:
            record = portal_repository.find_session(session, token_hash=token_hash(token))
        assert record is not None
        return record.last_seen_at

    def rows(self) -> list[PortalSession]:
        with self.factory() as session:
            return list(session.scalars(select(PortalSession)))


@pytest.fixture
def store(database_url: str, tmp_path: Path) -> Iterator[Store]:
    engine = db.create_db_engine(database_url or f"sqlite:///{tmp_path / 'gateway.db'}", service="gateway")
    migrations.upgrade("gateway", engine)
    # No key cache: a revocation is seen at the next request.
    env = gateway_env(tmp_path, "127.0.0.1:1", AWARENESS_GATEWAY_KEY_CACHE_SECONDS="0")
    config = load_gateway_config(load_settings("gateway", env))
    clock = Clock()
    factory = db.session_factory(engine)
    try:
        yield Store(factory, Authenticator(sessions=factory, config=config, clock=clock), clock)
    finally:
        engine.dispose()


async def test_the_cookie_token_is_stored_only_as_its_hash(store: Store) -> None:
    token, person = await store.sessions().sign_in_with_api_key(store.add_key("analyst"))
    [row] = store.rows()
    assert row.token_hash == token_hash(token) != token
    assert token not in (row.subject, row.roles, row.csrf_token)
    assert person.roles == {"analyst"} and person.csrf_token == row.csrf_token
    resolved = await store.sessions().resolve(token)
    assert isinstance(resolved, Person) and resolved.principal.subject == person.principal.subject
    assert await store.sessions().resolve(token + "x") is None
    assert await store.sessions().resolve(None) is None


async def test_a_session_ends_after_its_idle_timeout_and_activity_extends_it(store: Store) -> None:
    sessions = store.sessions(idle_seconds=600)
    token, _ = await sessions.sign_in_with_api_key(store.add_key("analyst"))
    for _ in range(5):  # 5 x 9 minutes: past the idle timeout in total, never between requests
        store.clock.now += timedelta(minutes=9)
        assert isinstance(await sessions.resolve(token), Person)
    store.clock.now += timedelta(minutes=10)
    assert await sessions.resolve(token) == Ended(Expiry.IDLE)
    assert store.rows() == []  # gone from the store, not only refused
    assert await sessions.resolve(token) is None


async def test_a_session_ends_at_its_absolute_timeout_however_busy(store: Store) -> None:
    sessions = store.sessions(idle_seconds=600, max_seconds=3600)
    token, _ = await sessions.sign_in_with_api_key(store.add_key("analyst"))
    for _ in range(6):  # a request every 9 minutes: never idle
        store.clock.now += timedelta(minutes=9)
        assert isinstance(await sessions.resolve(token), Person)
    store.clock.now += timedelta(minutes=6)
    assert await sessions.resolve(token) == Ended(Expiry.ABSOLUTE)


async def test_revoking_the_key_ends_its_sessions(store: Store) -> None:
    sessions = store.sessions()
    key = store.add_key("dpo")
    token, _ = await sessions.sign_in_with_api_key(key)
    key_id = keys.parse_token(key)
    assert key_id is not None
    with db.transaction(store.factory) as session:
        keys_repository.revoke_key(session, key_id=key_id[0], now=store.clock.now)
    assert await sessions.resolve(token) == Ended("KEY_REVOKED")


async def test_an_expired_key_cannot_sign_in_and_ends_its_sessions(store: Store) -> None:
    sessions = store.sessions(idle_seconds=86_400)
    key = store.add_key("analyst", expires_at=START + timedelta(hours=1))
    token, _ = await sessions.sign_in_with_api_key(key)
    store.clock.now += timedelta(hours=2)
    assert await sessions.resolve(token) == Ended("KEY_EXPIRED")
    with pytest.raises(UnauthenticatedError):
        await sessions.sign_in_with_api_key(key)


async def test_wrong_keys_and_roleless_principals_get_no_session(store: Store) -> None:
    sessions = store.sessions()
    with pytest.raises(UnauthenticatedError):
        await sessions.sign_in_with_api_key("awk_0123456789abcdef_" + "x" * 43)
    with pytest.raises(PermissionDeniedError):
        await sessions.start(auth.Principal(subject="jwt:nobody", roles=frozenset()))
    assert store.rows() == []


async def test_last_seen_is_written_at_most_once_a_minute(store: Store) -> None:
    sessions = store.sessions()
    token, _ = await sessions.sign_in_with_api_key(store.add_key("analyst"))
    store.clock.now += timedelta(seconds=30)
    await sessions.resolve(token)
    assert store.last_seen(token) == START
    store.clock.now += timedelta(seconds=31)
    await sessions.resolve(token)
    assert store.last_seen(token) == store.clock.now


async def test_signing_in_sweeps_only_ended_sessions(store: Store) -> None:
    sessions = store.sessions(idle_seconds=600)
    old, _ = await sessions.sign_in_with_api_key(store.add_key("analyst"))
    store.clock.now += timedelta(minutes=5)
    recent, _ = await sessions.sign_in_with_api_key(store.add_key("analyst"))
    store.clock.now += timedelta(minutes=6)  # the first is idle now, the second is not
    fresh, _ = await sessions.sign_in_with_api_key(store.add_key("analyst"))
    assert sorted(row.token_hash for row in store.rows()) == sorted([token_hash(recent), token_hash(fresh)])
    assert await sessions.resolve(old) is None
    assert "portal_sessions" in _tables(store)


def _tables(store: Store) -> list[str]:
    bind = store.factory.kw["bind"]
    schema = "awareness_gateway" if bind.dialect.name == "postgresql" else None
    return list(inspect(bind).get_table_names(schema=schema))
