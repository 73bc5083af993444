"""The PostgreSQL pool pings a connection only after it sat idle (services/runtime/db.py)."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError

from services.runtime import db


def _backend_pid(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(text("SELECT pg_backend_pid()")).scalar_one())


def _terminate(url: str, pid: int) -> None:
    other = db.create_db_engine(url, service="test", pool_size=1)
    try:
        with other.connect() as connection:
            assert connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar_one()
    finally:
        other.dispose()


def test_a_connection_idle_past_the_threshold_is_pinged_and_replaced_unseen(fresh_postgres_db: str) -> None:
    engine = db.create_db_engine(fresh_postgres_db, service="test", pool_size=1, ping_after_idle_seconds=0.2)
    try:
        first = _backend_pid(engine)
        _terminate(fresh_postgres_db, first)  # as a server restart would
        time.sleep(0.3)
        assert _backend_pid(engine) != first  # the ping found it dead: a new one served the query
    finally:
        engine.dispose()


def test_a_connection_used_a_moment_ago_is_trusted_without_a_round_trip(fresh_postgres_db: str) -> None:
    # The other side of the trade: no ping, so a connection killed within the threshold fails its
    # next use once (the service answers STORE_UNAVAILABLE); the pool then replaces it.
    engine = db.create_db_engine(fresh_postgres_db, service="test", pool_size=1, ping_after_idle_seconds=60)
    try:
        first = _backend_pid(engine)
        _terminate(fresh_postgres_db, first)
        with pytest.raises(OperationalError) as caught:
            _backend_pid(engine)
        assert db.is_store_outage(caught.value)
        assert _backend_pid(engine) != first
    finally:
        engine.dispose()
