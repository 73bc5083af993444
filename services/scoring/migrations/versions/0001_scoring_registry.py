"""scoring: the model registry and the shadow scores.

Revision ID: 0001_scoring_registry
Revises:
Create Date: 2026-01-01 00:00:00

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001_scoring_registry"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_ONE_CHAMPION = sa.text("status = 'CHAMPION'")


def upgrade() -> None:
    op.create_table(
        "models",
        sa.Column("version", sa.String(64), primary_key=True),
        sa.Column("onnx", sa.LargeBinary(), nullable=False),
        sa.Column("onnx_size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("algorithm", sa.String(64), nullable=False),
        sa.Column("parameters", sa.JSON(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("data_card_version", sa.String(64), nullable=False),
        sa.Column("feature_schema_version", sa.String(64), nullable=False),
        sa.Column("training_example_count", sa.BigInteger(), nullable=False),
        sa.Column("model_card", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at_us", sa.BigInteger(), nullable=False),
        sa.Column("promoted_at_us", sa.BigInteger(), nullable=True),
        sa.Column("request_id", sa.String(128), nullable=True),
        sa.UniqueConstraint("sha256", name="uq_models_sha256"),
        sa.UniqueConstraint("request_id", name="uq_models_request_id"),
        sa.CheckConstraint("status IN ('CHALLENGER', 'CHAMPION', 'RETIRED')", name="ck_models_status"),
    )
    op.create_index("ix_models_created", "models", ["created_at_us", "version"])
    op.create_index("ix_models_status", "models", ["status"])
    # At most one champion, enforced by the database even with several replicas promoting at once.
    op.create_index(
        "uq_models_one_champion",
        "models",
        ["status"],
        unique=True,
        sqlite_where=_ONE_CHAMPION,
        postgresql_where=_ONE_CHAMPION,
    )
    op.create_table(
        "shadow_scores",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(128), nullable=False),
        sa.Column("champion_version", sa.String(64), nullable=False),
        sa.Column("challenger_version", sa.String(64), nullable=False),
        sa.Column("champion_score", sa.Float(), nullable=False),
        sa.Column("challenger_score", sa.Float(), nullable=False),
        sa.Column("scored_at_us", sa.BigInteger(), nullable=False),
    )
    op.create_index(
        "ix_shadow_scores_challenger", "shadow_scores", ["challenger_version", "scored_at_us", "id"]
    )


def downgrade() -> None:
    op.drop_table("shadow_scores")
    op.drop_index("uq_models_one_champion", table_name="models")
    op.drop_table("models")
