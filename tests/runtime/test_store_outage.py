"""One rule for a store outage: every service's ``run_db`` answers STORE_UNAVAILABLE."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from services.runtime import db
from services.runtime.errors import UnavailableError


async def test_unreachable_store_raises_store_unavailable(tmp_path: Path) -> None:
    engine = db.create_db_engine(f"sqlite:///{tmp_path / 'gone' / 'x.db'}", service="test")
    (tmp_path / "gone").rmdir()  # create_db_engine made the directory; take it away

    def read() -> None:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    with pytest.raises(UnavailableError) as caught:
        await db.run_db(read)
    assert caught.value.reason == "STORE_UNAVAILABLE"
    assert db.is_store_outage(caught.value.__cause__)  # type: ignore[arg-type]
    engine.dispose()


async def test_a_wrong_statement_is_not_an_outage(tmp_path: Path) -> None:
    engine = db.create_db_engine(f"sqlite:///{tmp_path / 'x.db'}", service="test")

    def write() -> None:
        with engine.begin() as connection:
            connection.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY)"))
            connection.execute(text("INSERT INTO t VALUES (1)"))
            connection.execute(text("INSERT INTO t VALUES (1)"))

    with pytest.raises(IntegrityError):
        await db.run_db(write)
    engine.dispose()
