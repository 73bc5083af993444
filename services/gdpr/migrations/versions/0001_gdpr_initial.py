"""gdpr: subjects, data keys, consents, retention, erasure records, KEK rotations and the audit trail.

Revision ID: 0001_gdpr_initial
Revises:
Create Date: 2026-01-01 00:00:00

Triggers refuse UPDATE and DELETE (and, on PostgreSQL, TRUNCATE) on the append-only tables, on SQLite
and PostgreSQL alike. ``erasure_records`` accepts one kind of UPDATE only: filling a still-NULL outcome
column (``events_affected``, ``log_event_id``) once the log append succeeded; everything else in it is
immutable. ``subjects`` and ``data_keys`` are deliberately NOT append-only: deleting them is the erasure.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001_gdpr_initial"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_KEY = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
APPEND_ONLY_TABLES = ("consent_records", "retention_runs", "kek_rotations", "audit_records")
_CORE = ("erasure_id", "pseudonym", "erase_time", "actor", "reason", "request_id", "keys_shredded")
_WRITE_ONCE = ("events_affected", "log_event_id")
_PG_REFUSE = "gdpr_refuse_change"
_PG_ERASURE = "gdpr_erasure_write_once"


def upgrade() -> None:
    _create_key_tables()
    _create_record_tables()
    _create_erasure_and_audit_tables()
    _create_triggers()


def _create_key_tables() -> None:
    """Subjects and their data keys: the rows an erasure or retention deletes."""
    op.create_table(
        "subjects",
        sa.Column("pseudonym", sa.String(64), primary_key=True),
        sa.Column("lookup_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("lookup_hash", name="uq_subjects_lookup_hash"),
    )
    op.create_table(
        "data_keys",
        sa.Column("key_id", sa.String(64), primary_key=True),
        sa.Column("pseudonym", sa.String(64), sa.ForeignKey("subjects.pseudonym"), nullable=False),
        sa.Column("period", sa.String(16), nullable=False),
        sa.Column("kek_id", sa.String(64), nullable=False),
        sa.Column("nonce", sa.LargeBinary(12), nullable=False),
        sa.Column("wrapped", sa.LargeBinary(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("rewrapped_at", sa.DateTime(timezone=True), nullable=True),
        sa.UniqueConstraint("pseudonym", "period", name="uq_data_keys_pseudonym_period"),
    )
    op.create_index("ix_data_keys_pseudonym", "data_keys", ["pseudonym"])
    op.create_index("ix_data_keys_period", "data_keys", ["period"])
    op.create_index("ix_data_keys_kek_id", "data_keys", ["kek_id"])
    op.create_table(
        "data_key_event_types",
        sa.Column("key_id", sa.String(64), sa.ForeignKey("data_keys.key_id"), primary_key=True),
        sa.Column("event_type", sa.String(128), primary_key=True),
    )


def _create_record_tables() -> None:
    """Consents, retention rules and runs, KEK rotations: records that outlive an erasure."""
    op.create_table(
        "consent_records",
        sa.Column("id", _KEY, primary_key=True, autoincrement=True),
        sa.Column("pseudonym", sa.String(64), nullable=False),
        sa.Column("purpose", sa.String(64), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(256), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("request_id", sa.String(128), nullable=True),
        sa.UniqueConstraint("request_id", name="uq_consent_records_request_id"),
    )
    op.create_index("ix_consent_records_pseudonym", "consent_records", ["pseudonym"])
    op.create_table(
        "retention_rules",
        sa.Column("event_type", sa.String(128), primary_key=True),
        sa.Column("retention_days", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(256), nullable=False),
    )
    op.create_table(
        "retention_runs",
        sa.Column("id", _KEY, primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(128), nullable=True),
        sa.Column("dry_run", sa.Boolean(), nullable=False),
        sa.Column("run_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(256), nullable=False),
        sa.Column("keys_shredded", sa.BigInteger(), nullable=False),
        sa.Column("report", sa.Text(), nullable=False),
        sa.UniqueConstraint("request_id", name="uq_retention_runs_request_id"),
    )
    op.create_table(
        "kek_rotations",
        sa.Column("id", _KEY, primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(128), nullable=True),
        sa.Column("kek_id", sa.String(64), nullable=False),
        sa.Column("keys_rewrapped", sa.BigInteger(), nullable=False),
        sa.Column("retired_kek_ids", sa.Text(), nullable=False),
        sa.Column("actor", sa.String(256), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("request_id", name="uq_kek_rotations_request_id"),
    )


def _create_erasure_and_audit_tables() -> None:
    op.create_table(
        "erasure_records",
        sa.Column("erasure_id", sa.String(64), primary_key=True),
        sa.Column("pseudonym", sa.String(64), nullable=False),
        sa.Column("erase_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(256), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("keys_shredded", sa.BigInteger(), nullable=False),
        sa.Column("events_affected", sa.BigInteger(), nullable=True),
        sa.Column("log_event_id", sa.String(64), nullable=True),
        sa.UniqueConstraint("request_id", name="uq_erasure_records_request_id"),
    )
    op.create_index("ix_erasure_records_pseudonym", "erasure_records", ["pseudonym"])
    op.create_index("ix_erasure_records_erase_time", "erasure_records", ["erase_time"])
    op.create_table(
        "erasure_log_attempts",
        sa.Column("erasure_id", sa.String(64), sa.ForeignKey("erasure_records.erasure_id"), primary_key=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=False),
        sa.Column("last_attempt_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_table(
        "audit_records",
        sa.Column("sequence", _KEY, primary_key=True, autoincrement=True),
        sa.Column("actor", sa.String(256), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target", sa.String(256), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("prev_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("entry_hash", sa.LargeBinary(32), nullable=False),
        sa.UniqueConstraint("prev_hash", name="uq_audit_records_prev_hash"),
        sa.UniqueConstraint("entry_hash", name="uq_audit_records_entry_hash"),
    )
    op.create_index("ix_audit_records_actor", "audit_records", ["actor"])
    op.create_index("ix_audit_records_action", "audit_records", ["action"])
    op.create_index("ix_audit_records_at", "audit_records", ["at"])


def downgrade() -> None:
    _drop_triggers()
    for table in (
        "audit_records",
        "erasure_log_attempts",
        "erasure_records",
        "kek_rotations",
        "retention_runs",
        "retention_rules",
        "consent_records",
        "data_key_event_types",
        "data_keys",
        "subjects",
    ):
        op.drop_table(table)


def _create_triggers() -> None:
    dialect = op.get_bind().dialect.name
    core_changed = " OR ".join(f"NEW.{column} IS NOT OLD.{column}" for column in _CORE)
    rewritten = " OR ".join(
        f"(OLD.{column} IS NOT NULL AND NEW.{column} IS NOT OLD.{column})" for column in _WRITE_ONCE
    )
    if dialect == "sqlite":
        for table in APPEND_ONLY_TABLES:
            for action in ("UPDATE", "DELETE"):
                op.execute(
                    f"CREATE TRIGGER {table}_refuse_{action.lower()} BEFORE {action} ON {table} "
                    f"BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END"
                )
        op.execute(
            "CREATE TRIGGER erasure_records_refuse_delete BEFORE DELETE ON erasure_records "
            "BEGIN SELECT RAISE(ABORT, 'erasure_records is append-only'); END"
        )
        op.execute(
            "CREATE TRIGGER erasure_records_refuse_update BEFORE UPDATE ON erasure_records "
            f"WHEN {core_changed} OR {rewritten} "
            "BEGIN SELECT RAISE(ABORT, 'erasure_records is append-only (outcomes are write-once)'); END"
        )
        return
    if dialect == "postgresql":
        op.execute(
            f"""
            CREATE FUNCTION {_PG_REFUSE}() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                RAISE EXCEPTION '% is append-only', TG_TABLE_NAME USING ERRCODE = 'restrict_violation';
            END
            $$
            """
        )
        pg_core = " OR ".join(f"NEW.{column} IS DISTINCT FROM OLD.{column}" for column in _CORE)
        pg_rewritten = " OR ".join(
            f"(OLD.{column} IS NOT NULL AND NEW.{column} IS DISTINCT FROM OLD.{column})"
            for column in _WRITE_ONCE
        )
        op.execute(
            f"""
            CREATE FUNCTION {_PG_ERASURE}() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF {pg_core} OR {pg_rewritten} THEN
                    RAISE EXCEPTION 'erasure_records is append-only (outcomes are write-once)'
                        USING ERRCODE = 'restrict_violation';
                END IF;
                RETURN NEW;
            END
            $$
            """
        )
        for table in (*APPEND_ONLY_TABLES, "erasure_records"):
            if table != "erasure_records":
                op.execute(
                    f"CREATE TRIGGER {table}_refuse_change BEFORE UPDATE OR DELETE ON {table} "
                    f"FOR EACH ROW EXECUTE FUNCTION {_PG_REFUSE}()"
                )
            op.execute(
                f"CREATE TRIGGER {table}_refuse_truncate BEFORE TRUNCATE ON {table} "
                f"FOR EACH STATEMENT EXECUTE FUNCTION {_PG_REFUSE}()"
            )
        op.execute(
            "CREATE TRIGGER erasure_records_refuse_delete BEFORE DELETE ON erasure_records "
            f"FOR EACH ROW EXECUTE FUNCTION {_PG_REFUSE}()"
        )
        op.execute(
            "CREATE TRIGGER erasure_records_write_once BEFORE UPDATE ON erasure_records "
            f"FOR EACH ROW EXECUTE FUNCTION {_PG_ERASURE}()"
        )
        return
    raise RuntimeError(f"no append-only triggers for dialect {dialect}: SQLite and PostgreSQL only")


def _drop_triggers() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        for table in APPEND_ONLY_TABLES:
            for action in ("update", "delete"):
                op.execute(f"DROP TRIGGER IF EXISTS {table}_refuse_{action}")
        op.execute("DROP TRIGGER IF EXISTS erasure_records_refuse_delete")
        op.execute("DROP TRIGGER IF EXISTS erasure_records_refuse_update")
        return
    for table in APPEND_ONLY_TABLES:
        op.execute(f"DROP TRIGGER IF EXISTS {table}_refuse_change ON {table}")
        op.execute(f"DROP TRIGGER IF EXISTS {table}_refuse_truncate ON {table}")
    op.execute("DROP TRIGGER IF EXISTS erasure_records_refuse_truncate ON erasure_records")
    op.execute("DROP TRIGGER IF EXISTS erasure_records_refuse_delete ON erasure_records")
    op.execute("DROP TRIGGER IF EXISTS erasure_records_write_once ON erasure_records")
    op.execute(f"DROP FUNCTION IF EXISTS {_PG_ERASURE}()")
    op.execute(f"DROP FUNCTION IF EXISTS {_PG_REFUSE}()")
