"""Index only labelled events: the label index held one entry per event, nearly all "unlabelled".

Revision ID: 0002_partial_label_index
Revises: 0001_event_log
Create Date: 2026-11-28 00:00:00

Queries by label ask for labelled events (a label filter, training examples); unlabelled ones are
the bulk of the table and are never found through this index. Every append paid for an entry.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_partial_label_index"
down_revision: str | Sequence[str] | None = "0001_event_log"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_LABELLED = sa.text("label <> 0")


def upgrade() -> None:
    op.drop_index("ix_event_metadata_label", table_name="event_metadata")
    op.create_index(
        "ix_event_metadata_label",
        "event_metadata",
        ["label"],
        postgresql_where=_LABELLED,
        sqlite_where=_LABELLED,
    )


def downgrade() -> None:
    op.drop_index("ix_event_metadata_label", table_name="event_metadata")
    op.create_index("ix_event_metadata_label", "event_metadata", ["label"])
