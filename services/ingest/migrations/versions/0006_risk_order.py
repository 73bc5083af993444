"""The riskiest-first order of ListEvents (``order_by: "risk_score desc"``) reads this index backwards.

Revision ID: 0006_risk_order
Revises: 0005_access_records
Create Date: 2026-12-06 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0006_risk_order"
down_revision: str | Sequence[str] | None = "0005_access_records"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_event_metadata_risk", "event_metadata", ["risk_score", "receive_time_us", "event_id"])


def downgrade() -> None:
    op.drop_index("ix_event_metadata_risk", table_name="event_metadata")
