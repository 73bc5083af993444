"""Access records: the index of the ``audit.action`` system events, append-only like the log.

Revision ID: 0005_access_records
Revises: 0004_forgotten_subjects
Create Date: 2026-12-06 00:00:00

Every audited call becomes an ``audit.action`` event in the log; ListAccessRecords finds them
through this table, written in the transaction that stores the event: one row per (event,
pseudonym), pseudonym '' when no subject is concerned, and ``ordinal`` the pseudonym's place in the
record (a list without a pseudonym filter reads ordinal 0: each record once). Each filter has an
index ending in (time_us, event_id), the newest-first order the list pages in. Ordinary events add
no row. Before this revision no ``audit.action`` event could be stored (the type was unknown), so
there is nothing to backfill.

The rows are evidence too: the triggers of revision 0001 refuse UPDATE, DELETE (and TRUNCATE on
PostgreSQL) here as on the log's tables.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_access_records"
down_revision: str | Sequence[str] | None = "0004_forgotten_subjects"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TABLE = "access_records"
_PG_FUNCTION = "ingest_refuse_change"  # created by 0001_event_log
_INDEXES = {
    "ix_access_records_time": ["ordinal", "time_us", "event_id"],
    "ix_access_records_principal": ["principal", "ordinal", "time_us", "event_id"],
    "ix_access_records_action": ["action", "ordinal", "time_us", "event_id"],
    "ix_access_records_resource": ["resource", "ordinal", "time_us", "event_id"],
    "ix_access_records_pseudonym": ["pseudonym", "time_us", "event_id"],
}


def upgrade() -> None:
    op.create_table(
        _TABLE,
        sa.Column("event_id", sa.String(36), nullable=False),
        sa.Column("pseudonym", sa.String(128), nullable=False),
        sa.Column("ordinal", sa.Integer(), nullable=False),
        sa.Column("principal", sa.String(256), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("resource", sa.String(256), nullable=False),
        sa.Column("outcome", sa.String(64), nullable=False),
        sa.Column("service", sa.String(256), nullable=False),
        sa.Column("time_us", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("event_id", "pseudonym", name="pk_access_records"),
    )
    for name, columns in _INDEXES.items():
        op.create_index(name, _TABLE, columns)
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        for action in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER {_TABLE}_refuse_{action.lower()} BEFORE {action} ON {_TABLE} "
                f"BEGIN SELECT RAISE(ABORT, '{_TABLE} is append-only: {action} refused'); END"
            )
    elif dialect == "postgresql":
        op.execute(
            f"CREATE TRIGGER {_TABLE}_refuse_change BEFORE UPDATE OR DELETE ON {_TABLE} "
            f"FOR EACH ROW EXECUTE FUNCTION {_PG_FUNCTION}()"
        )
        op.execute(
            f"CREATE TRIGGER {_TABLE}_refuse_truncate BEFORE TRUNCATE ON {_TABLE} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {_PG_FUNCTION}()"
        )
    else:
        raise RuntimeError(f"no append-only triggers for dialect {dialect}: SQLite and PostgreSQL only")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP TRIGGER IF EXISTS {_TABLE}_refuse_change ON {_TABLE}")
        op.execute(f"DROP TRIGGER IF EXISTS {_TABLE}_refuse_truncate ON {_TABLE}")
    for name in _INDEXES:
        op.drop_index(name, table_name=_TABLE)
    op.drop_table(_TABLE)
