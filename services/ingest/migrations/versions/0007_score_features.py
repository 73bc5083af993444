"""The feature values a score was computed from, kept beside the score for analysts to read.

Revision ID: 0007_score_features
Revises: 0006_risk_order
Create Date: 2026-12-06 00:00:00

Events scored before this revision keep an empty object: their inputs were not kept.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_score_features"
down_revision: str | Sequence[str] | None = "0006_risk_order"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("event_metadata", sa.Column("features", sa.Text(), nullable=False, server_default="{}"))


def downgrade() -> None:
    with op.batch_alter_table("event_metadata") as batch:
        batch.drop_column("features")
