"""Fixtures of the ingest tests: a database URL per backend (SQLite file, or a fresh PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from services.runtime import migrations
from services.runtime.db import create_db_engine


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str | None:
    """None: every service uses its own SQLite file under the data directory (the embedded default).
    Otherwise a brand-new PostgreSQL database, where each service gets its own schema."""
    if request.param == "sqlite":
        return None
    url: str = request.getfixturevalue("fresh_postgres_db")
    return url


@pytest.fixture
def engine(database_url: str | None, tmp_path: Path) -> Iterator[Engine]:
    """Ingest's engine on that backend, migrated to the newest schema (no service running)."""
    engine = create_db_engine(database_url or f"sqlite:///{tmp_path / 'ingest.db'}", service="ingest")
    migrations.upgrade("ingest", engine)
    try:
        yield engine
    finally:
        engine.dispose()
