"""Event log: append-only records, leaves, Merkle nodes and checkpoints; mutable metadata.

Revision ID: 0001_event_log
Revises:
Create Date: 2026-01-01 00:00:00

Triggers refuse UPDATE and DELETE (and, on PostgreSQL, TRUNCATE) on the four log tables, on
SQLite and PostgreSQL alike. Only someone able to drop or disable a trigger (a database superuser
or the schema owner) can rewrite the log, and ``awareness verify`` then names the changed record.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001_event_log"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_KEY = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
APPEND_ONLY_TABLES = ("event_records", "leaves", "tree_nodes", "checkpoints")
_PG_FUNCTION = "ingest_refuse_change"


def upgrade() -> None:
    _create_event_records()
    _create_leaves()
    _create_tree_nodes()
    _create_checkpoints()
    _create_event_metadata()
    _create_append_only_triggers()


def _create_event_records() -> None:
    """The log's records, append-only: what each leaf hash covers, personal fields sealed."""
    op.create_table(
        "event_records",
        sa.Column("seq", _KEY, primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(36), nullable=False),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("source", sa.String(256), nullable=False),
        sa.Column("occurred_at_us", sa.BigInteger(), nullable=False),
        sa.Column("severity", sa.SmallInteger(), nullable=False),
        sa.Column("subject_pseudonym", sa.String(128), nullable=False),
        sa.Column("key_period", sa.String(32), nullable=False),
        sa.Column("key_id", sa.String(128), nullable=False),
        sa.Column("nonce", sa.LargeBinary(), nullable=False),
        sa.Column("ciphertext", sa.LargeBinary(), nullable=False),
        sa.Column("receive_time_us", sa.BigInteger(), nullable=False),
        sa.Column("content_fingerprint", sa.String(64), nullable=False),
        sa.Column("leaf_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("record_version", sa.SmallInteger(), nullable=False),
        sa.Column("system_payload", sa.Text(), nullable=True),
        sa.UniqueConstraint("event_id", name="uq_event_records_event_id"),
    )


def _create_leaves() -> None:
    """The integrated leaves, append-only: a record's place in the Merkle tree."""
    op.create_table(
        "leaves",
        sa.Column("leaf_index", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("event_id", sa.String(36), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("leaf_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("integrate_time_us", sa.BigInteger(), nullable=False),
        sa.UniqueConstraint("event_id", name="uq_leaves_event_id"),
    )


def _create_tree_nodes() -> None:
    """The stored Merkle tree nodes, append-only."""
    op.create_table(
        "tree_nodes",
        sa.Column("level", sa.SmallInteger(), primary_key=True, autoincrement=False),
        sa.Column("idx", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("hash", sa.LargeBinary(32), nullable=False),
    )


def _create_checkpoints() -> None:
    """The signed checkpoints (and their time-stamp tokens), append-only."""
    op.create_table(
        "checkpoints",
        sa.Column("tree_size", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("origin", sa.String(256), nullable=False),
        sa.Column("root_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("key_id", sa.String(256), nullable=False),
        sa.Column("signed_time_us", sa.BigInteger(), nullable=False),
        sa.Column("timestamp_token", sa.LargeBinary(), nullable=False),
        sa.Column("tsa", sa.String(512), nullable=False),
        sa.Column("store_time_us", sa.BigInteger(), nullable=False),
    )


def _create_event_metadata() -> None:
    """The mutable view of each event (enrichment, labels, triage) and its read indexes."""
    op.create_table(
        "event_metadata",
        sa.Column("event_id", sa.String(36), primary_key=True),
        sa.Column("subject_pseudonym", sa.String(128), nullable=False),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("source", sa.String(256), nullable=False),
        sa.Column("occurred_at_us", sa.BigInteger(), nullable=False),
        sa.Column("receive_time_us", sa.BigInteger(), nullable=False),
        sa.Column("severity", sa.SmallInteger(), nullable=False),
        sa.Column("summary_length", sa.Integer(), nullable=False),
        sa.Column("detail_count", sa.Integer(), nullable=False),
        sa.Column("risk_score", sa.Float(), nullable=True),
        sa.Column("risk_level", sa.SmallInteger(), nullable=False),
        sa.Column("model_version", sa.String(128), nullable=False),
        sa.Column("scoring_state", sa.SmallInteger(), nullable=False),
        sa.Column("scoring_note", sa.Text(), nullable=False),
        sa.Column("violations", sa.Text(), nullable=False),
        sa.Column("violation_count", sa.Integer(), nullable=False),
        sa.Column("evaluation_state", sa.SmallInteger(), nullable=False),
        sa.Column("evaluation_note", sa.Text(), nullable=False),
        sa.Column("label", sa.SmallInteger(), nullable=False),
        sa.Column("label_note", sa.Text(), nullable=False),
        sa.Column("triage_state", sa.SmallInteger(), nullable=False),
        sa.Column("labeled_by", sa.String(256), nullable=False),
        sa.Column("label_time_us", sa.BigInteger(), nullable=True),
        sa.Column("update_time_us", sa.BigInteger(), nullable=False),
    )
    op.create_index(
        "ix_event_metadata_subject_time", "event_metadata", ["subject_pseudonym", "occurred_at_us"]
    )
    op.create_index("ix_event_metadata_received", "event_metadata", ["receive_time_us", "event_id"])
    op.create_index("ix_event_metadata_label", "event_metadata", ["label"])
    op.create_index("ix_event_metadata_pending", "event_metadata", ["scoring_state", "evaluation_state"])


def _create_append_only_triggers() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        for table in APPEND_ONLY_TABLES:
            for action in ("UPDATE", "DELETE"):
                op.execute(
                    f"CREATE TRIGGER {table}_refuse_{action.lower()} BEFORE {action} ON {table} "
                    f"BEGIN SELECT RAISE(ABORT, '{table} is append-only: {action} refused'); END"
                )
    elif dialect == "postgresql":
        op.execute(
            f"""
            CREATE FUNCTION {_PG_FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
                    USING ERRCODE = 'insufficient_privilege';
            END
            $$
            """
        )
        for table in APPEND_ONLY_TABLES:
            op.execute(
                f"CREATE TRIGGER {table}_refuse_change BEFORE UPDATE OR DELETE ON {table} "
                f"FOR EACH ROW EXECUTE FUNCTION {_PG_FUNCTION}()"
            )
            op.execute(
                f"CREATE TRIGGER {table}_refuse_truncate BEFORE TRUNCATE ON {table} "
                f"FOR EACH STATEMENT EXECUTE FUNCTION {_PG_FUNCTION}()"
            )
    else:
        raise RuntimeError(f"no append-only triggers for dialect {dialect}: SQLite and PostgreSQL only")


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        for table in APPEND_ONLY_TABLES:
            op.execute(f"DROP TRIGGER IF EXISTS {table}_refuse_change ON {table}")
            op.execute(f"DROP TRIGGER IF EXISTS {table}_refuse_truncate ON {table}")
        op.execute(f"DROP FUNCTION IF EXISTS {_PG_FUNCTION}()")
    for table in ("event_metadata", *APPEND_ONLY_TABLES):
        op.drop_table(table)
