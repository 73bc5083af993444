"""Shared fixtures: real PostgreSQL and Redis when configured, and a rule that
``AWARENESS_REQUIRE_SERVICES=1`` (set by CI) turns their absence into a failure."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from tests.awareness_up import SQLITE, Backend
from tests.resilience.harness import free_port as free_port  # one implementation, re-exported
from tests.resilience.harness import temporary_database

REQUIRE_SERVICES = os.environ.get("AWARENESS_REQUIRE_SERVICES", "") == "1"
INTERNAL_SECRET = b"test-internal-secret-0123456789abcdef"


def _missing(what: str) -> None:
    if REQUIRE_SERVICES:
        pytest.fail(f"{what} is required (AWARENESS_REQUIRE_SERVICES=1) but not configured or not reachable")
    pytest.skip(f"{what} not configured")


@pytest.fixture(scope="session")
def postgres_url() -> str:
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith("postgresql"):
        _missing("PostgreSQL (DATABASE_URL)")
    try:
        engine = create_engine(url)
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        engine.dispose()
    except Exception as exc:
        if REQUIRE_SERVICES:
            pytest.fail(f"PostgreSQL at DATABASE_URL is not reachable: {exc}")
        pytest.skip(f"PostgreSQL not reachable: {exc}")
    return url


@pytest.fixture
def fresh_postgres_db(postgres_url: str) -> Iterator[str]:
    """A brand-new PostgreSQL database for one test, dropped afterwards."""
    name = f"awareness_t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def redis_url() -> str:
    url = os.environ.get("REDIS_URL", "")
    if not url:
        _missing("Redis (REDIS_URL)")
    import redis

    try:
        client = redis.Redis.from_url(url, socket_timeout=2)
        client.ping()
        client.close()
    except Exception as exc:
        if REQUIRE_SERVICES:
            pytest.fail(f"Redis at REDIS_URL is not reachable: {exc}")
        pytest.skip(f"Redis not reachable: {exc}")
    return url


@pytest.fixture
def internal_secret() -> bytes:
    return INTERNAL_SECRET


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def suite_backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    """Each module's suite twice: on SQLite files, then on a fresh PostgreSQL database and
    Redis under a key prefix of its own (so suites running side by side share nothing)."""
    if request.param == "sqlite":
        yield SQLITE
        return
    server = str(request.getfixturevalue("postgres_url"))
    redis_url = str(request.getfixturevalue("redis_url"))
    prefix = f"awareness-test-{uuid.uuid4().hex[:12]}:ratelimit"
    with temporary_database(server, prefix="awareness_e2e") as database_url:
        yield Backend("postgres", database_url=database_url, redis_url=redis_url, redis_key_prefix=prefix)
    import redis

    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    try:
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            client.delete(key)
    finally:
        client.close()
