"""Alembic migrations per service, run programmatically (no alembic.ini needed).

Each service keeps ``services/<service>/migrations/`` with an ``env.py`` that calls
:func:`run_env`. ``awareness migrate <service>`` and each service's start-up call
:func:`upgrade`.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, MetaData

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
    ensure_schema(engine, service=service)
    command.upgrade(alembic_config(service, engine), revision)


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
