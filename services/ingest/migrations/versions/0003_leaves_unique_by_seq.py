"""Leaves are unique by the record's seq instead of its event id.

Revision ID: 0003_leaves_unique_by_seq
Revises: 0002_partial_label_index
Create Date: 2026-11-28 00:00:00

Each record still gets at most one leaf (seq and event id are both unique in event_records), but
the integrator appends leaves in seq order, so this index grows at its right edge; a unique index
on random event ids touched a random page for every leaf, and grew slower as the log grew.
Lookups by event id go through event_records (seq), whose event-id index exists anyway.

On SQLite the event-id constraint stays: dropping a table constraint there means rebuilding the
table and its append-only triggers, for a store that has one writer at a time anyway.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0003_leaves_unique_by_seq"
down_revision: str | Sequence[str] | None = "0002_partial_label_index"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _postgres() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def upgrade() -> None:
    op.create_index("uq_leaves_seq", "leaves", ["seq"], unique=True)
    if _postgres():
        op.drop_constraint("uq_leaves_event_id", "leaves", type_="unique")


def downgrade() -> None:
    if _postgres():
        op.create_unique_constraint("uq_leaves_event_id", "leaves", ["event_id"])
    op.drop_index("uq_leaves_seq", table_name="leaves")
