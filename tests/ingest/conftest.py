"""Fixtures of the ingest tests: ingest's engine on each backend (``database_url``, tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from tests.support.resources import migrated_engine


@pytest.fixture
def engine(database_url: str | None, tmp_path: Path) -> Iterator[Engine]:
    """Ingest's engine on that backend, migrated to the newest schema (no service running)."""
    with migrated_engine(database_url or f"sqlite:///{tmp_path / 'ingest.db'}", "ingest") as engine:
        yield engine
