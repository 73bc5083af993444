"""Signing audit trail: time-stamp tokens, signed checkpoints, key rotations; append-only.

Revision ID: 0001_signing_audit
Revises:
Create Date: 2026-01-01 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001_signing_audit"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TABLES = ("timestamp_tokens", "signed_checkpoints", "key_rotations")
_KEY = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "timestamp_tokens",
        sa.Column("id", _KEY, primary_key=True, autoincrement=True),
        sa.Column("serial_hex", sa.String(64), nullable=False),
        sa.Column("gen_time", _TIME, nullable=False),
        sa.Column("hash_algorithm", sa.String(16), nullable=False),
        sa.Column("message_imprint", sa.LargeBinary(), nullable=False),
        sa.Column("policy_oid", sa.String(255), nullable=False),
        sa.Column("tsa", sa.String(512), nullable=False),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("purpose", sa.String(16), nullable=False),
        sa.Column("recorded_at", _TIME, nullable=False),
    )
    op.create_index("uq_timestamp_tokens_tsa_serial", "timestamp_tokens", ["tsa", "serial_hex"], unique=True)
    op.create_table(
        "signed_checkpoints",
        sa.Column("id", _KEY, primary_key=True, autoincrement=True),
        sa.Column("origin", sa.String(255), nullable=False),
        sa.Column("tree_size", sa.BigInteger(), nullable=False),
        sa.Column("root_hash", sa.LargeBinary(), nullable=False),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("signed_at", _TIME, nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("tsa", sa.String(512), nullable=False),
        sa.Column("timestamp_serial_hex", sa.String(64), nullable=False),
        sa.Column("timestamp_token", sa.LargeBinary(), nullable=False),
    )
    op.create_index("ix_signed_checkpoints_origin_size", "signed_checkpoints", ["origin", "tree_size"])
    op.create_table(
        "key_rotations",
        sa.Column("id", _KEY, primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(64), nullable=True, unique=True),
        sa.Column("purpose", sa.String(16), nullable=False),
        sa.Column("new_key_id", sa.String(64), nullable=False),
        sa.Column("previous_key_id", sa.String(64), nullable=False),
        sa.Column("rotated_by", sa.String(255), nullable=False),
        sa.Column("rotated_at", _TIME, nullable=False),
    )
    _create_append_only_triggers()


def downgrade() -> None:
    _drop_append_only_triggers()
    for table in reversed(_TABLES):
        op.drop_table(table)


def _create_append_only_triggers() -> None:
    # An audit trail that an UPDATE or DELETE could rewrite would prove nothing.
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            """
            CREATE FUNCTION signing_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                RAISE EXCEPTION 'the signing audit table % is append-only', TG_TABLE_NAME
                    USING ERRCODE = 'insufficient_privilege';
            END
            $$
            """
        )
        for table in _TABLES:
            op.execute(
                f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION signing_refuse_change()"
            )
            op.execute(
                f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
                "FOR EACH STATEMENT EXECUTE FUNCTION signing_refuse_change()"
            )
        return
    for table in _TABLES:
        for operation in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER {table}_no_{operation.lower()} BEFORE {operation} ON {table} "
                f"BEGIN SELECT RAISE(ABORT, 'the signing audit table {table} is append-only'); END"
            )


def _drop_append_only_triggers() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in _TABLES:
            op.execute(f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}")
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_truncate ON {table}")
        op.execute("DROP FUNCTION IF EXISTS signing_refuse_change()")
        return
    for table in _TABLES:
        for operation in ("update", "delete"):
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_{operation}")
