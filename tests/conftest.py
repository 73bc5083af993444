"""Shared fixtures: real PostgreSQL and Redis when configured, and a rule that
``AWARENESS_REQUIRE_SERVICES=1`` (set by CI) turns their absence into a failure.

The helpers themselves live in tests/support/; ``IDENTITY_ENV`` and ``free_port`` are
re-exported here for the modules that import them from this file."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator

import pytest

from tests.support.idp import IdentityProvider
from tests.support.resources import free_port as free_port
from tests.support.resources import temporary_database
from tests.support.servers import IDENTITY_ENV as IDENTITY_ENV
from tests.support.servers import MTLS_DIR, issue_test_identities
from tests.support.suite import SQLITE, Backend, postgres_backend

REQUIRE_SERVICES = os.environ.get("AWARENESS_REQUIRE_SERVICES", "") == "1"


def _missing(what: str) -> None:
    if REQUIRE_SERVICES:
        pytest.fail(f"{what} is required (AWARENESS_REQUIRE_SERVICES=1) but not configured or not reachable")
    pytest.skip(f"{what} not configured")


def _reachable(what: str, url: str, check: Callable[[str], None]) -> str:
    """``url`` once ``check`` has reached it; otherwise a failure (CI) or a skip."""
    try:
        check(url)
    except Exception as exc:
        if REQUIRE_SERVICES:
            pytest.fail(f"{what} is not reachable: {exc}")
        pytest.skip(f"{what} not reachable: {exc}")
    return url


def _select_one(url: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    finally:
        engine.dispose()


def _ping(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=2)
    try:
        client.ping()
    finally:
        client.close()


@pytest.fixture(scope="session")
def postgres_url() -> str:
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith("postgresql"):
        _missing("PostgreSQL (DATABASE_URL)")
    return _reachable("PostgreSQL at DATABASE_URL", url, _select_one)


@pytest.fixture
def fresh_postgres_db(postgres_url: str) -> Iterator[str]:
    """A brand-new PostgreSQL database for one test, dropped afterwards."""
    with temporary_database(postgres_url, prefix="awareness_t") as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str:
    """Each test on both stores: "" (every service on its own SQLite file under the data
    directory, the embedded default), then a brand-new PostgreSQL database."""
    if request.param == "sqlite":
        return ""
    url: str = request.getfixturevalue("fresh_postgres_db")
    return url


@pytest.fixture(scope="session")
def redis_url() -> str:
    url = os.environ.get("REDIS_URL", "")
    if not url:
        _missing("Redis (REDIS_URL)")
    return _reachable("Redis at REDIS_URL", url, _ping)


@pytest.fixture(scope="session", autouse=True)
def _test_identities() -> Iterator[None]:
    """One development CA and a certificate per service for the whole run (tests/support/servers.py)."""
    issue_test_identities()
    yield
    shutil.rmtree(MTLS_DIR, ignore_errors=True)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def suite_backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    """Each module's suite twice: on SQLite files, then on a fresh PostgreSQL database and
    Redis under a key prefix of its own (see tests/support/suite.py)."""
    if request.param == "sqlite":
        yield SQLITE
        return
    server = str(request.getfixturevalue("postgres_url"))
    with postgres_backend(server, str(request.getfixturevalue("redis_url"))) as backend:
        yield backend


@pytest.fixture(scope="module")
def idp() -> IdentityProvider:
    """An identity provider whose tokens a suite's gateway trusts once given ``idp.gateway_env``."""
    return IdentityProvider(issuer="https://idp.e2e.test", audience="awareness-e2e")


@pytest.fixture(scope="session")
def promtool() -> str:
    """Prometheus's promtool (Debian's `prometheus` package), for the alert and dashboard tests."""
    path = shutil.which("promtool")
    if path is None:
        _missing("promtool (apt-get install prometheus; .ci/run does)")
    assert path is not None
    return path
