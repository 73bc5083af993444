"""History aggregates for a batch of events: three indexed SQL queries, then the pure domain fold."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.orm import Session

from services.ingest import repository
from services.ingest.domain.history import MONTH_US, PriorEvent, SubjectHistory, subject_history


@dataclass(frozen=True, slots=True)
class HistoryQuery:
    event_id: str
    pseudonym: str
    occurred_at_us: int
    source: str


def histories(session: Session, *, queries: Sequence[HistoryQuery]) -> dict[str, SubjectHistory]:
    """Each event's subject history as of its occurred_at (events strictly before it)."""
    if not queries:
        return {}
    since = min(q.occurred_at_us for q in queries) - MONTH_US
    until = max(q.occurred_at_us for q in queries)
    rows = repository.history_rows(
        session, pseudonyms=[q.pseudonym for q in queries], since_us=since, until_us=until
    )
    windows = {
        pseudonym: [PriorEvent(at, kind, source, violating) for at, kind, source, violating in entries]
        for pseudonym, entries in rows.window.items()
    }
    return {
        q.event_id: subject_history(
            occurred_at_us=q.occurred_at_us,
            source=q.source,
            window=windows.get(q.pseudonym, ()),
            source_first_seen_us=rows.source_first_seen.get(q.pseudonym, {}),
            latest_before_window_us=rows.latest_before.get(q.pseudonym),
        )
        for q in queries
    }
