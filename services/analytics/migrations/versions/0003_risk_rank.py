"""analytics: person_risks.rank, a generated column that orders people by risk on any day, indexed.

Revision ID: 0003_risk_rank
Revises: 0002_reports
Create Date: 2026-12-06 00:00:00

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_risk_rank"
down_revision: str | Sequence[str] | None = "0002_reports"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# services/analytics/models.py RISK_RANK_SQL as of this revision.
RISK_RANK_SQL = (
    "CASE WHEN weighted > 0 THEN ln(weighted) ELSE -1e308 END + ref_day * 0.6931471805599453 / half_life_days"
)


def upgrade() -> None:
    # SQLite adds only virtual generated columns to an existing table; an index on one is stored.
    stored = op.get_bind().dialect.name != "sqlite"
    op.add_column("person_risks", sa.Column("rank", sa.Float(), sa.Computed(RISK_RANK_SQL, persisted=stored)))
    op.create_index("ix_person_risks_rank", "person_risks", [sa.text("rank DESC"), "subject_pseudonym"])


def downgrade() -> None:
    op.drop_index("ix_person_risks_rank", table_name="person_risks")
    op.drop_column("person_risks", "rank")
