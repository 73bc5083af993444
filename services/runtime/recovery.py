"""The restore marker: a service whose store was restored from a backup refuses to start until the
restore is reconciled (``awareness backup reconcile``; docs/disaster-recovery.md).

The marker is a one-row table in the restored store itself, written by ``awareness backup restore``
in the same run that restores the data and dropped by the reconciliation. Living in the store, it
travels with the data: every replica of every restored service sees it, whichever pod it runs in,
and no restore can forget to set it. It is not part of any service's models, so migrations never
create it.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Engine, inspect, text

from services.runtime.config import ConfigError

MARKER_TABLE = "awareness_restore_pending"


class RestorePendingError(ConfigError):
    """The store was restored and not yet reconciled: the process refuses to start (exit 78)."""


def mark_restored(engine: Engine, *, backup_id: str) -> None:
    with engine.begin() as connection:
        connection.execute(
            text(
                f"CREATE TABLE IF NOT EXISTS {MARKER_TABLE}"
                " (backup_id VARCHAR(64) NOT NULL, restored_at VARCHAR(40) NOT NULL)"
            )
        )
        connection.execute(text(f"DELETE FROM {MARKER_TABLE}"))
        connection.execute(
            text(f"INSERT INTO {MARKER_TABLE} (backup_id, restored_at) VALUES (:backup, :at)"),
            {"backup": backup_id, "at": datetime.now(UTC).isoformat(timespec="seconds")},
        )


def pending_restore(engine: Engine) -> str | None:
    """The id of the backup the store was restored from while it awaits reconciliation, else None."""
    with engine.connect() as connection:
        if not inspect(connection).has_table(MARKER_TABLE):
            return None
        row = connection.execute(text(f"SELECT backup_id FROM {MARKER_TABLE}")).first()
    return None if row is None else str(row[0])


def clear_restored(engine: Engine) -> None:
    with engine.begin() as connection:
        connection.execute(text(f"DROP TABLE IF EXISTS {MARKER_TABLE}"))


def refuse_if_restored(engine: Engine, *, service: str) -> None:
    backup_id = pending_restore(engine)
    if backup_id is not None:
        raise RestorePendingError(
            f"{service}'s store was restored from backup {backup_id} and is not reconciled yet: "
            "run `awareness backup reconcile` (docs/disaster-recovery.md) before serving"
        )
