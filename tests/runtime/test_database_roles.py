"""Per-service database roles on real PostgreSQL: the SQL of docs/helm.md, then each service's migrations.

Each role owns its schema ``awareness_<service>`` and nothing else: it migrates and writes there, and
cannot read another service's schema or create a schema of its own.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ProgrammingError

from services.runtime import db, migrations
from services.runtime.config import ALL_PROCESSES


def role_sql(*, role: str, service: str, database: str) -> list[str]:
    """The statements docs/helm.md gives for one service (role names made unique per test run)."""
    schema = db.schema_name(service)
    return [
        f"CREATE ROLE {role} LOGIN PASSWORD 'change-me'",
        f"CREATE SCHEMA {schema} AUTHORIZATION {role}",
        f'REVOKE ALL ON DATABASE "{database}" FROM PUBLIC',
        f'GRANT CONNECT ON DATABASE "{database}" TO {role}',
    ]


@pytest.fixture
def roles(fresh_postgres_db: str, postgres_url: str) -> Iterator[dict[str, str]]:
    """service -> database URL of its own role, created with the documented SQL."""
    suffix = uuid.uuid4().hex[:8]
    database = make_url(fresh_postgres_db).database or ""
    names = {service: f"awareness_{service}_{suffix}" for service in ALL_PROCESSES}
    admin = create_engine(fresh_postgres_db, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        for service, role in names.items():
            for statement in role_sql(role=role, service=service, database=database):
                connection.execute(text(statement))
    admin.dispose()
    base = make_url(fresh_postgres_db)
    try:
        yield {
            service: base.set(username=role, password="change-me").render_as_string(hide_password=False)
            for service, role in names.items()
        }
    finally:
        # Roles are cluster-wide: drop them once the test database (and all they own) is gone.
        # fresh_postgres_db drops the database after this fixture; take the objects first.
        cleanup = create_engine(fresh_postgres_db, isolation_level="AUTOCOMMIT")
        with cleanup.connect() as connection:
            for role in names.values():
                connection.execute(text(f"DROP OWNED BY {role} CASCADE"))
        cleanup.dispose()
        server = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
        with server.connect() as connection:
            for role in names.values():
                connection.execute(text(f"DROP ROLE IF EXISTS {role}"))
        server.dispose()


def test_each_service_migrates_under_its_own_role_and_reaches_only_its_schema(roles: dict[str, str]) -> None:
    engines = {service: db.create_db_engine(url, service=service) for service, url in roles.items()}
    try:
        for service, engine in engines.items():
            migrations.upgrade(service, engine)
            tables = inspect(engine).get_table_names(schema=db.schema_name(service))
            assert "alembic_version" in tables, service
        gdpr_tables = inspect(engines["gdpr"]).get_table_names(schema="awareness_gdpr")
        table = sorted(t for t in gdpr_tables if t != "alembic_version")[0]
        with (
            engines["ingest"].connect() as connection,
            pytest.raises(ProgrammingError, match="permission denied"),
        ):
            connection.execute(text(f'SELECT * FROM awareness_gdpr."{table}"'))
        with (
            engines["gateway"].connect() as connection,
            pytest.raises(ProgrammingError, match="permission denied"),
        ):
            connection.execute(text("CREATE SCHEMA rogue"))
    finally:
        for engine in engines.values():
            engine.dispose()
