"""gdpr: the organisation's directory (department and manager per pseudonym).

Revision ID: 0002_directory_entries
Revises: 0001_gdpr_initial
Create Date: 2026-12-06 00:00:00

Keyed by the person's pseudonym, never by an identifier. Like ``subjects`` and ``data_keys`` (and unlike
the append-only record tables) the rows are deletable on purpose: erasure deletes the person's row and
blanks them as anyone's manager, and a full-sync import deletes the people it no longer lists.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_directory_entries"
down_revision: str | Sequence[str] | None = "0001_gdpr_initial"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "directory_entries",
        sa.Column("pseudonym", sa.String(64), sa.ForeignKey("subjects.pseudonym"), primary_key=True),
        sa.Column("department", sa.String(128), nullable=False),
        sa.Column("manager_pseudonym", sa.String(64), sa.ForeignKey("subjects.pseudonym"), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("import_id", sa.String(64), nullable=True),
    )
    op.create_index("ix_directory_entries_department", "directory_entries", ["department"])
    # Erasure blanks the erased person wherever they are the manager: found by this index.
    op.create_index("ix_directory_entries_manager_pseudonym", "directory_entries", ["manager_pseudonym"])


def downgrade() -> None:
    op.drop_index("ix_directory_entries_manager_pseudonym", table_name="directory_entries")
    op.drop_index("ix_directory_entries_department", table_name="directory_entries")
    op.drop_table("directory_entries")
