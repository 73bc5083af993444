"""History aggregates for a batch of events, computed by the database: one row per event.

The figures are those of ``domain.history.subject_history`` (the reference definition, which the
tests hold this query to): each event's subject's events strictly before it, counted over 24 h,
7 d and 30 d windows, plus the latest earlier event and whether the source was seen before.

The database does the counting, so an event costs one index range scan over its subject's last
30 days and one result row, however long that history is. (Fetching every row of the window and
folding it in Python cost milliseconds per event once a subject had a few hundred events.)
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import TextClause, text
from sqlalchemy.orm import Session

from services.ingest import repository
from services.ingest.domain.access import AUDIT_EVENT_TYPE
from services.ingest.domain.history import (
    DAY_US,
    FAILED_LOGIN_TYPES,
    MICROS_PER_SECOND,
    MONTH_US,
    WEEK_US,
    SubjectHistory,
)
from services.ingest.models import EventMetadata

# Events per statement: on SQLite, four parameters each stays under its oldest limit of 999 variables.
CHUNK = 200


@dataclass(frozen=True, slots=True)
class HistoryQuery:
    event_id: str
    pseudonym: str
    occurred_at_us: int
    source: str


def _sql_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _aggregate_query(events: str) -> TextClause:
    """The aggregates of the events that the CTE text `events` lists as (event_id, pseudonym,
    at_us, source): one row per event. The window join walks the index on (subject_pseudonym,
    occurred_at_us). "previous" and "source seen" come from the window's rows when it has any, and
    only otherwise look beyond the 30 days, through the same index: COALESCE and CASE evaluate a
    subquery only when reached, so a person seen this month costs one index scan, not three.
    Access records about the subject (audit.action) are someone else's actions: none counts."""
    table = repository.METADATA.name
    audit = _sql_literal(AUDIT_EVENT_TYPE)
    failed = ", ".join(_sql_literal(kind) for kind in sorted(FAILED_LOGIN_TYPES))
    return text(f"""
WITH q(event_id, pseudonym, at_us, source) AS ({events})
SELECT q.event_id,
  SUM(CASE WHEN m.occurred_at_us >= q.at_us - {DAY_US} THEN 1 ELSE 0 END) AS events_24h,
  SUM(CASE WHEN m.occurred_at_us >= q.at_us - {WEEK_US} THEN 1 ELSE 0 END) AS events_7d,
  SUM(CASE WHEN m.violation_count > 0 THEN 1 ELSE 0 END) AS violations_30d,
  COUNT(DISTINCT CASE WHEN m.occurred_at_us >= q.at_us - {DAY_US} THEN m.source END) AS sources_24h,
  SUM(CASE WHEN m.occurred_at_us >= q.at_us - {DAY_US} AND m.type IN ({failed}) THEN 1 ELSE 0 END)
    AS failed_logins_24h,
  COALESCE(MAX(m.occurred_at_us), (SELECT MAX(p.occurred_at_us) FROM {table} p
     WHERE p.subject_pseudonym = q.pseudonym AND p.occurred_at_us < q.at_us - {MONTH_US}
       AND p.type <> {audit}))
    AS previous_us,
  CASE WHEN COUNT(CASE WHEN m.source = q.source THEN 1 END) > 0 THEN 1
    WHEN EXISTS (SELECT 1 FROM {table} s
     WHERE s.subject_pseudonym = q.pseudonym AND s.source = q.source
       AND s.occurred_at_us < q.at_us - {MONTH_US} AND s.type <> {audit})
    THEN 1 ELSE 0 END AS source_seen
FROM q LEFT JOIN {table} m
  ON m.subject_pseudonym = q.pseudonym
  AND m.occurred_at_us >= q.at_us - {MONTH_US} AND m.occurred_at_us < q.at_us
  AND m.type <> {audit}
GROUP BY q.event_id, q.pseudonym, q.at_us, q.source
""")


@functools.cache
def _postgres_statement() -> TextClause:
    # Four array parameters whatever the batch size: one statement text, which the driver parses
    # once and PostgreSQL prepares, instead of a new VALUES list for every batch size.
    return _aggregate_query(
        "SELECT * FROM unnest(CAST(:ids AS VARCHAR[]), CAST(:pseudonyms AS VARCHAR[]),"
        " CAST(:ats AS BIGINT[]), CAST(:sources AS VARCHAR[]))"
    )


@functools.lru_cache(maxsize=CHUNK)
def _values_statement(count: int) -> TextClause:
    """SQLite, which has no arrays: `count` rows of parameters e{i}, p{i}, a{i}, s{i}."""
    rows = ", ".join(f"(:e{i}, :p{i}, CAST(:a{i} AS BIGINT), :s{i})" for i in range(count))
    return _aggregate_query(f"VALUES {rows}")


def _statement(session: Session, chunk: Sequence[HistoryQuery]) -> tuple[TextClause, dict[str, Any]]:
    if repository.is_postgres(session):
        return _postgres_statement(), {
            "ids": [q.event_id for q in chunk],
            "pseudonyms": [q.pseudonym for q in chunk],
            "ats": [q.occurred_at_us for q in chunk],
            "sources": [q.source for q in chunk],
        }
    parameters: dict[str, Any] = {}
    for i, q in enumerate(chunk):
        parameters.update(
            {f"e{i}": q.event_id, f"p{i}": q.pseudonym, f"a{i}": q.occurred_at_us, f"s{i}": q.source}
        )
    return _values_statement(len(chunk)), parameters


def histories(session: Session, *, queries: Sequence[HistoryQuery]) -> dict[str, SubjectHistory]:
    """Each event's subject history as of its occurred_at (events strictly before it)."""
    unique = list({q.event_id: q for q in queries}.values())
    results: dict[str, SubjectHistory] = {}
    for start in range(0, len(unique), CHUNK):
        chunk = unique[start : start + CHUNK]
        at_of = {q.event_id: q.occurred_at_us for q in chunk}
        statement, parameters = _statement(session, chunk)
        for row in session.execute(statement, parameters):
            event_id = str(row.event_id)
            previous = row.previous_us
            results[event_id] = SubjectHistory(
                events_24h=int(row.events_24h or 0),
                events_7d=int(row.events_7d or 0),
                violations_30d=int(row.violations_30d or 0),
                distinct_sources_24h=int(row.sources_24h or 0),
                source_is_new=not row.source_seen,
                failed_logins_24h=int(row.failed_logins_24h or 0),
                seconds_since_previous_event=(
                    (at_of[event_id] - int(previous)) / MICROS_PER_SECOND if previous is not None else -1.0
                ),
            )
    return results


def labelled_with_histories(
    session: Session, *, start_us: int | None, end_us: int | None, after: tuple[int, str] | None, limit: int
) -> tuple[list[EventMetadata], dict[str, SubjectHistory]]:
    """A page of labelled events (repository.labelled_metadata) and each one's subject history."""
    rows = repository.labelled_metadata(session, start_us=start_us, end_us=end_us, after=after, limit=limit)
    queries = [HistoryQuery(m.event_id, m.subject_pseudonym, m.occurred_at_us, m.source) for m in rows]
    return rows, histories(session, queries=queries)
