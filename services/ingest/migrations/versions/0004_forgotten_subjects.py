"""Forgotten subjects: ForgetSubject recorded where every ingest replica sees it.

Revision ID: 0004_forgotten_subjects
Revises: 0003_leaves_unique_by_seq
Create Date: 2026-12-04 00:00:00

ForgetSubject reaches one replica; the others poll this table (every replica shares the database)
and drop their cached keys of the pseudonym within a poll interval. Rows older than the key cache
TTL are of no further use (any copy has expired) and are deleted as new ones arrive.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_forgotten_subjects"
down_revision: str | Sequence[str] | None = "0003_leaves_unique_by_seq"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_KEY = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "forgotten_subjects",
        sa.Column("seq", _KEY, primary_key=True, autoincrement=True),
        sa.Column("pseudonym", sa.String(128), nullable=False),
        sa.Column("recorded_us", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_forgotten_subjects_recorded", "forgotten_subjects", ["recorded_us"])


def downgrade() -> None:
    op.drop_index("ix_forgotten_subjects_recorded", table_name="forgotten_subjects")
    op.drop_table("forgotten_subjects")
