"""analytics: the rollups (event counts, campaign funnel, training, violations, risk per person).

Revision ID: 0001_analytics_rollups
Revises:
Create Date: 2026-12-06 00:00:00

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001_analytics_rollups"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _pseudonym() -> sa.Column[str]:
    return sa.Column("subject_pseudonym", sa.String(128), nullable=False)


def _times(*names: str) -> list[sa.Column[int]]:
    return [sa.Column(name, sa.BigInteger(), nullable=True) for name in names]


def upgrade() -> None:
    op.create_table(
        "folded_events",
        sa.Column("event_id", sa.String(128), primary_key=True),
        _pseudonym(),
        sa.Column("day", sa.Integer(), nullable=False),
        sa.Column("type", sa.String(128), nullable=False),
        sa.Column("risk", sa.Float(), nullable=False),
    )
    op.create_index("ix_folded_events_subject", "folded_events", ["subject_pseudonym", "day"])
    op.create_table(
        "day_counts",
        sa.Column("day", sa.Integer(), primary_key=True),
        sa.Column("type", sa.String(128), primary_key=True),
        sa.Column("dimension_key", sa.String(64), primary_key=True),
        sa.Column("dimension_value", sa.String(256), primary_key=True),
        sa.Column("department", sa.String(128), primary_key=True),
        sa.Column("events", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_day_counts_department", "day_counts", ["department", "day"])
    op.create_table(
        "campaigns",
        sa.Column("campaign_id", sa.String(256), primary_key=True),
        sa.Column("first_event_us", sa.BigInteger(), nullable=False),
        sa.Column("last_event_us", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_campaigns_first", "campaigns", ["first_event_us", "campaign_id"])
    op.create_table(
        "campaign_stage_events",
        sa.Column("campaign_id", sa.String(256), primary_key=True),
        sa.Column("stage", sa.String(16), primary_key=True),
        sa.Column("events", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "campaign_people",
        sa.Column("campaign_id", sa.String(256), primary_key=True),
        sa.Column("subject_pseudonym", sa.String(128), primary_key=True),
        sa.Column("department", sa.String(128), nullable=False),
        *_times("sent_us", "opened_us", "clicked_us", "submitted_us", "reported_us"),
    )
    op.create_index("ix_campaign_people_subject", "campaign_people", ["subject_pseudonym"])
    op.create_table(
        "training_people",
        sa.Column("training_module", sa.String(256), primary_key=True),
        sa.Column("subject_pseudonym", sa.String(128), primary_key=True),
        sa.Column("department", sa.String(128), nullable=False),
        *_times("assigned_us", "completed_us", "overdue_us"),
    )
    op.create_index("ix_training_people_subject", "training_people", ["subject_pseudonym"])
    op.create_table(
        "violation_days",
        sa.Column("day", sa.Integer(), primary_key=True),
        sa.Column("policy", sa.String(128), primary_key=True),
        sa.Column("severity", sa.Integer(), primary_key=True),
        sa.Column("department", sa.String(128), primary_key=True),
        sa.Column("events", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_violation_days_department", "violation_days", ["department", "day"])
    op.create_table(
        "person_risks",
        sa.Column("subject_pseudonym", sa.String(128), primary_key=True),
        sa.Column("weighted", sa.Float(), nullable=False),
        sa.Column("ref_day", sa.Integer(), nullable=False),
        sa.Column("event_count", sa.BigInteger(), nullable=False),
        sa.Column("half_life_days", sa.Float(), nullable=False),
    )
    op.create_table(
        "department_people",
        sa.Column("department", sa.String(128), primary_key=True),
        sa.Column("subject_pseudonym", sa.String(128), primary_key=True),
    )
    op.create_index("ix_department_people_subject", "department_people", ["subject_pseudonym"])


def downgrade() -> None:
    for table in (
        "department_people",
        "person_risks",
        "violation_days",
        "training_people",
        "campaign_people",
        "campaign_stage_events",
        "campaigns",
        "day_counts",
        "folded_events",
    ):
        op.drop_table(table)
