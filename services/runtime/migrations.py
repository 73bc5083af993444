"""Alembic migrations per service, run programmatically (no alembic.ini needed).

Each service keeps ``services/<service>/migrations/`` with an ``env.py`` that calls
:func:`run_env`. ``awareness migrate <service>`` and each service's start-up call
:func:`upgrade`.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, MetaData, text

from services.runtime.db import ensure_schema, schema_name


def migrations_dir(service: str) -> Path:
    module = importlib.import_module(f"services.{service}")
    assert module.__file__ is not None
    return Path(module.__file__).parent / "migrations"


def alembic_config(service: str, engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir(service)))
    config.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False))
    config.attributes["engine"] = engine
    config.attributes["service"] = service
    return config


def upgrade(service: str, engine: Engine, revision: str = "head") -> None:
    if not migrations_dir(service).exists():
        return
    with _one_at_a_time(engine, service):
        ensure_schema(engine, service=service)
        command.upgrade(alembic_config(service, engine), revision)


def migration_lock_key(service: str) -> int:
    """The PostgreSQL advisory lock of ``service``'s migrations (64-bit, derived from the name)."""
    return int.from_bytes(
        hashlib.sha256(f"awareness.{service}.migrate".encode()).digest()[:8], "big", signed=True
    )


@contextlib.contextmanager
def _one_at_a_time(engine: Engine, service: str) -> Iterator[None]:
    """On PostgreSQL, processes of one service that start together (its workers on one machine)
    migrate one after the other; the later ones then find the schema at head. SQLite has one process."""
    if engine.dialect.name != "postgresql":
        yield
        return
    key = {"key": migration_lock_key(service)}
    # Autocommit: the lock is the session's, and no transaction stays open beside the migrations.
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("SELECT pg_advisory_lock(:key)"), key)
        try:
            yield
        finally:
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), key)


def run_env(target_metadata: MetaData) -> None:
    """Body of every service's ``migrations/env.py``."""
    from alembic import context

    config = context.config
    engine: Engine | None = config.attributes.get("engine")
    service: str = config.attributes.get("service", "")
    options: dict[str, Any] = {"target_metadata": target_metadata, "render_as_batch": True}
    if engine is None:
        context.configure(url=config.get_main_option("sqlalchemy.url"), literal_binds=True, **options)
        with context.begin_transaction():
            context.run_migrations()
        return
    with engine.connect() as connection:
        if connection.dialect.name == "postgresql" and service:
            options["version_table_schema"] = schema_name(service)
        context.configure(connection=connection, **options)
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()
