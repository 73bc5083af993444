"""Dimensions in clear (record version 3), each event's department, and the analytics feed's state.

Revision ID: 0008_dimensions_and_analytics
Revises: 0007_score_features
Create Date: 2026-12-06 00:00:00

Every client event already stored is marked as waiting for analytics, so a new analytics service
learns the history; system events never go there.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_dimensions_and_analytics"
down_revision: str | Sequence[str] | None = "0007_score_features"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SYSTEM_TYPES = ("gdpr.erasure", "audit.action")


def upgrade() -> None:
    # A nullable column without a default: no rewrite of the append-only table and no UPDATE,
    # which its triggers refuse.
    op.add_column("event_records", sa.Column("dimensions", sa.Text(), nullable=True))
    op.add_column(
        "event_metadata", sa.Column("department", sa.String(128), nullable=False, server_default="")
    )
    op.add_column(
        "event_metadata",
        sa.Column("analytics_state", sa.SmallInteger(), nullable=False, server_default=sa.text("1")),
    )
    metadata = sa.table(
        "event_metadata", sa.column("type", sa.String), sa.column("analytics_state", sa.SmallInteger)
    )
    op.execute(metadata.update().where(metadata.c.type.in_(SYSTEM_TYPES)).values(analytics_state=3))
    op.create_index(
        "ix_event_metadata_analytics_pending",
        "event_metadata",
        ["receive_time_us"],
        postgresql_where=sa.text("analytics_state = 1"),
        sqlite_where=sa.text("analytics_state = 1"),
    )


def downgrade() -> None:
    op.drop_index("ix_event_metadata_analytics_pending", table_name="event_metadata")
    with op.batch_alter_table("event_metadata") as batch:
        batch.drop_column("analytics_state")
        batch.drop_column("department")
    with op.batch_alter_table("event_records") as batch:
        batch.drop_column("dimensions")
