"""SQLAlchemy 2.0 engines and sessions: SQLite by default, PostgreSQL through DATABASE_URL.

Each service owns its own store: its own SQLite file, or its own PostgreSQL schema
(``awareness_<service>``) when several services share one database URL.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import DateTime, Dialect, Engine, TypeDecorator, create_engine, event, text
from sqlalchemy import exc as sqlalchemy_exc
from sqlalchemy.engine import make_url
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from services.runtime.errors import UnavailableError

T = TypeVar("T")

STORE_UNAVAILABLE = "STORE_UNAVAILABLE"


# psycopg2 is the PostgreSQL driver, except where a service needs what only psycopg 3 has: ingest's
# append path writes with COPY FROM STDIN through psycopg 3's C row writer (see the README).
POSTGRES_DRIVERS = {"ingest": "psycopg"}


def schema_name(service: str) -> str:
    return f"awareness_{service}"


# A PostgreSQL connection back in the pool for less than this is handed out without a ping. A ping
# on every checkout (pool_pre_ping) is a round trip per transaction: under load, for a connection
# that answered a moment ago. One idle longer (a restarted server, a dropped backend) is pinged and,
# when dead, replaced before anyone uses it.
PING_AFTER_IDLE_SECONDS = 1.0


def create_db_engine(
    url: str,
    *,
    service: str,
    pool_size: int = 10,
    echo: bool = False,
    ping_after_idle_seconds: float = PING_AFTER_IDLE_SECONDS,
) -> Engine:
    """An engine bound to the service's own store; no connection is opened here."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, echo=echo, connect_args={"check_same_thread": False, "timeout": 30}, pool_pre_ping=True
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            # WAL lets readers run beside the writer; synchronous=FULL keeps every
            # acknowledged commit durable across a power cut, not only a process crash.
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    schema = schema_name(service)
    driver = POSTGRES_DRIVERS.get(service)
    if driver is not None:
        url = parsed.set(drivername=f"postgresql+{driver}").render_as_string(hide_password=False)
    engine = create_engine(
        url,
        echo=echo,
        pool_size=pool_size,
        max_overflow=pool_size,
        connect_args={"options": f"-csearch_path={schema}", "connect_timeout": 5},
    )
    _ping_when_idle(engine, idle_seconds=ping_after_idle_seconds)
    return engine


def _ping_when_idle(engine: Engine, *, idle_seconds: float) -> None:
    """pool_pre_ping, for connections idle at least ``idle_seconds`` only."""

    @event.listens_for(engine, "checkin")
    def _returned(dbapi_connection: Any, record: Any) -> None:
        record.info["returned_at"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        returned = record.info.get("returned_at")
        if returned is None or time.monotonic() - returned < idle_seconds:
            return  # just connected, or used a moment ago
        try:
            engine.dialect.do_ping(dbapi_connection)
        except engine.dialect.loaded_dbapi.Error as error:
            # Dead, so the server restarted or dropped us: the pool replaces this connection now (up to
            # three attempts) and every other one made before it on its next checkout.
            raise sqlalchemy_exc.InvalidatePoolError() from error


def ensure_schema(engine: Engine, *, service: str) -> None:
    if engine.dialect.name == "postgresql":
        schema = schema_name(service)
        with engine.begin() as connection:
            # A per-service role owns its schema but may not create schemas, and PostgreSQL checks
            # that privilege even for CREATE SCHEMA IF NOT EXISTS: look first.
            found = connection.execute(
                text("SELECT 1 FROM pg_namespace WHERE nspname = :name"), {"name": schema}
            )
            if found.first() is None:
                connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session whose work is committed on success and rolled back on any error."""
    with factory() as session, session.begin():
        yield session


def ping(engine: Engine) -> bool:
    """True when the store answers a trivial query (used by the health probe)."""
    database = engine.url.database
    if (
        engine.dialect.name == "sqlite"
        and database
        and database != ":memory:"
        and not Path(database).exists()
    ):
        # A pooled connection keeps an unlinked file readable; the store is still gone.
        return False
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        return True
    except Exception:
        return False


def is_store_outage(exc: BaseException) -> bool:
    """A database error that means "cannot reach the store", not "this statement is wrong"."""
    if isinstance(exc, sqlalchemy_exc.DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, sqlalchemy_exc.OperationalError | sqlalchemy_exc.TimeoutError)


def store_unavailable() -> UnavailableError:
    """The one error every service answers while its own store is down (retryable)."""
    return UnavailableError("the service's store is unavailable; retry later", reason=STORE_UNAVAILABLE)


async def run_db(func: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Run blocking database work off the event loop; a store outage becomes ``store_unavailable()``."""
    try:
        return await asyncio.to_thread(func, *args, **kwargs)
    except Exception as exc:
        if is_store_outage(exc):
            raise store_unavailable() from exc
        raise


class Base(DeclarativeBase):
    """Not used for tables directly: each service declares its own base for its own metadata."""


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on both backends (SQLite stores naive UTC text, to the microsecond)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("timestamps must be timezone-aware")
        utc = value.astimezone(UTC)
        return utc.replace(tzinfo=None) if dialect.name == "sqlite" else utc

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        moment: datetime = value
        if moment.tzinfo is None:
            return moment.replace(tzinfo=UTC)
        return moment.astimezone(UTC)
