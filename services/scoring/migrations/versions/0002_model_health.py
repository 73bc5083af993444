"""scoring: shadow scores found by event (model health), and promotion decisions.

Revision ID: 0002_model_health
Revises: 0001_scoring_registry
Create Date: 2026-12-06 00:00:00

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_model_health"
down_revision: str | Sequence[str] | None = "0001_scoring_registry"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_index("ix_shadow_scores_event", "shadow_scores", ["event_id"])
    op.create_table(
        "promotion_decisions",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("challenger_version", sa.String(64), nullable=False),
        sa.Column("champion_version", sa.String(64), nullable=False),
        sa.Column("promoted", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("figures", sa.JSON(), nullable=False),
        sa.Column("decided_at_us", sa.BigInteger(), nullable=False),
        sa.Column("decider", sa.String(256), nullable=False),
    )
    op.create_index(
        "ix_promotion_decisions_challenger",
        "promotion_decisions",
        ["challenger_version", "decided_at_us", "id"],
    )


def downgrade() -> None:
    op.drop_index("ix_promotion_decisions_challenger", table_name="promotion_decisions")
    op.drop_table("promotion_decisions")
    op.drop_index("ix_shadow_scores_event", table_name="shadow_scores")
