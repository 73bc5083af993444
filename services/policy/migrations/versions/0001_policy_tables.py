"""Policy versions, append-only history (enforced by triggers) and the active-set generation counter.

Revision ID: 0001_policy_tables
Revises:
Create Date: 2024-06-01 00:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001_policy_tables"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TIME = sa.DateTime(timezone=True)
# Bytewise order of policy ids on PostgreSQL too, whatever the server's locale.
_POLICY_ID = sa.String(63).with_variant(sa.String(63, collation="C"), "postgresql")

_SQLITE_TRIGGERS = (
    """
    CREATE TRIGGER policy_history_no_update BEFORE UPDATE ON policy_history
    BEGIN SELECT RAISE(ABORT, 'policy_history is append-only'); END
    """,
    """
    CREATE TRIGGER policy_history_no_delete BEFORE DELETE ON policy_history
    BEGIN SELECT RAISE(ABORT, 'policy_history is append-only'); END
    """,
)

_POSTGRES_TRIGGERS = (
    """
    CREATE FUNCTION policy_history_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'policy_history is append-only (% refused)', TG_OP;
    END
    $$
    """,
    """
    CREATE TRIGGER policy_history_no_update_delete BEFORE UPDATE OR DELETE ON policy_history
    FOR EACH ROW EXECUTE FUNCTION policy_history_append_only()
    """,
    """
    CREATE TRIGGER policy_history_no_truncate BEFORE TRUNCATE ON policy_history
    FOR EACH STATEMENT EXECUTE FUNCTION policy_history_append_only()
    """,
)


def upgrade() -> None:
    op.create_table(
        "policy_versions",
        sa.Column("policy_id", _POLICY_ID, nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("rule", sa.Text(), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("author", sa.String(255), nullable=False),
        sa.Column("contributors", sa.JSON(), nullable=False),
        sa.Column("submitter", sa.String(255), nullable=True),
        sa.Column("approver", sa.String(255), nullable=True),
        sa.Column("reject_reason", sa.Text(), nullable=True),
        sa.Column("retire_reason", sa.Text(), nullable=True),
        sa.Column("request_id", sa.String(64), nullable=True),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("create_time", _TIME, nullable=False),
        sa.Column("update_time", _TIME, nullable=False),
        sa.PrimaryKeyConstraint("policy_id", "version", name="pk_policy_versions"),
        sa.UniqueConstraint("request_id", name="uq_policy_versions_request_id"),
    )
    op.create_index("ix_policy_versions_state", "policy_versions", ["state", "policy_id"])
    op.create_index("ix_policy_versions_severity", "policy_versions", ["severity", "policy_id"])

    op.create_table(
        "policy_history",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("policy_id", _POLICY_ID, nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("actor", sa.String(255), nullable=False),
        sa.Column("time", _TIME, nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("from_state", sa.String(16), nullable=True),
        sa.Column("to_state", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("changed_fields", sa.JSON(), nullable=False),
    )
    op.create_index("ix_policy_history_policy", "policy_history", ["policy_id", "id"])

    active_set = op.create_table(
        "policy_active_set",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("generation", sa.BigInteger(), nullable=False),
    )
    op.bulk_insert(active_set, [{"id": 1, "generation": 0}])

    dialect = op.get_bind().dialect.name
    triggers = {"sqlite": _SQLITE_TRIGGERS, "postgresql": _POSTGRES_TRIGGERS}.get(dialect)
    if triggers is None:
        raise RuntimeError(f"no append-only triggers for {dialect}: SQLite and PostgreSQL only")
    for statement in triggers:
        op.execute(statement)


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS policy_history_no_truncate ON policy_history")
        op.execute("DROP TRIGGER IF EXISTS policy_history_no_update_delete ON policy_history")
        op.execute("DROP FUNCTION IF EXISTS policy_history_append_only()")
    else:
        op.execute("DROP TRIGGER IF EXISTS policy_history_no_update")
        op.execute("DROP TRIGGER IF EXISTS policy_history_no_delete")
    op.drop_table("policy_active_set")
    op.drop_index("ix_policy_history_policy", table_name="policy_history")
    op.drop_table("policy_history")
    op.drop_index("ix_policy_versions_severity", table_name="policy_versions")
    op.drop_index("ix_policy_versions_state", table_name="policy_versions")
    op.drop_table("policy_versions")
