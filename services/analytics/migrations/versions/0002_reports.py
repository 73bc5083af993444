"""analytics: issued weekly reports and their evidence (token, log event).

Revision ID: 0002_reports
Revises: 0001_analytics_rollups
Create Date: 2026-12-06 00:00:00

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_reports"
down_revision: str | Sequence[str] | None = "0001_analytics_rollups"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "reports",
        sa.Column("report_id", sa.String(64), primary_key=True),
        sa.Column("period", sa.String(8), nullable=False),
        sa.Column("format", sa.String(8), nullable=False),
        sa.Column("media_type", sa.String(64), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("timestamp_token", sa.LargeBinary(), nullable=False),
        sa.Column("tsa_time_us", sa.BigInteger(), nullable=False),
        sa.Column("log_event_id", sa.String(64), nullable=False),
        sa.Column("created_us", sa.BigInteger(), nullable=False),
        sa.Column("created_by", sa.String(256), nullable=False),
        sa.Column("request_id", sa.String(128), nullable=True),
    )
    op.create_index("ix_reports_created", "reports", ["created_us", "report_id"])
    op.create_index("ix_reports_sha256", "reports", ["sha256"])
    op.create_index("ix_reports_request", "reports", ["request_id"], unique=True)


def downgrade() -> None:
    op.drop_index("ix_reports_request", table_name="reports")
    op.drop_index("ix_reports_sha256", table_name="reports")
    op.drop_index("ix_reports_created", table_name="reports")
    op.drop_table("reports")
