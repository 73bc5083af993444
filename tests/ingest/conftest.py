"""Fixtures of the ingest tests: a database URL per backend (SQLite file, or a fresh PostgreSQL)."""

from __future__ import annotations

import pytest


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str | None:
    """None: every service uses its own SQLite file under the data directory (the embedded default).
    Otherwise a brand-new PostgreSQL database, where each service gets its own schema."""
    if request.param == "sqlite":
        return None
    url: str = request.getfixturevalue("fresh_postgres_db")
    return url
