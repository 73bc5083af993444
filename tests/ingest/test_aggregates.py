"""The database's history aggregates equal the reference fold (domain.history.subject_history).

Random subjects, sources, types, violations and times (within and beyond the 30-day window, and
on the window edges), on SQLite and PostgreSQL, asked for in one batch with duplicates.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

from sqlalchemy import Engine, insert
from sqlalchemy.orm import Session, sessionmaker

from services.ingest import aggregates, repository
from services.ingest.domain.history import (
    DAY_US,
    MONTH_US,
    WEEK_US,
    PriorEvent,
    SubjectHistory,
    subject_history,
)
from services.runtime.db import session_factory

T = 1_800_000_000 * 1_000_000
TYPES = ("phishing.clicked", "login.failed", "password.reset", "mfa.disabled")
SOURCES = ("gophish", "okta", "edr", "o'brien")  # a quote must not break the statement


@dataclass(frozen=True)
class Stored:
    event_id: str
    pseudonym: str
    at: int
    kind: str
    source: str
    violations: int

    def row(self) -> dict[str, object]:
        return {
            "event_id": self.event_id,
            "subject_pseudonym": self.pseudonym,
            "type": self.kind,
            "source": self.source,
            "occurred_at_us": self.at,
            "receive_time_us": self.at,
            "severity": 1,
            "summary_length": 0,
            "detail_count": 0,
            "scoring_state": repository.SCORING_PENDING,
            "evaluation_state": repository.EVALUATION_PENDING,
            "violation_count": self.violations,
            "triage_state": repository.TRIAGE_NEW,
            "update_time_us": self.at,
        }


def _reference(stored: list[Stored], query: aggregates.HistoryQuery) -> SubjectHistory:
    """The fold over the subject's whole history (a superset of the window it needs)."""
    mine = [s for s in stored if s.pseudonym == query.pseudonym]
    first_seen: dict[str, int] = {}
    for s in mine:
        first_seen[s.source] = min(s.at, first_seen.get(s.source, s.at))
    return subject_history(
        occurred_at_us=query.occurred_at_us,
        source=query.source,
        window=[PriorEvent(s.at, s.kind, s.source, s.violations > 0) for s in mine],
        source_first_seen_us=first_seen,
        latest_before_window_us=None,
    )


def test_database_aggregates_equal_the_reference_fold(engine: Engine) -> None:
    generator = random.Random(20261128)
    edges = (0, 1, DAY_US, DAY_US + 1, WEEK_US, WEEK_US + 1, MONTH_US, MONTH_US + 1, 45 * DAY_US)
    stored: list[Stored] = []
    for n in range(600):
        back = generator.choice(edges) if n % 3 == 0 else generator.randrange(-DAY_US, 60 * DAY_US)
        stored.append(
            Stored(
                f"ev-{n}",
                f"subject-{generator.randrange(8)}",
                T - back,
                generator.choice(TYPES),
                generator.choice(SOURCES),
                generator.choice((0, 0, 0, 2)),
            )
        )
    # Someone seen only before the window: "previous" and "source seen" come from beyond it.
    stored.append(Stored("old-only", "subject-old", T - 45 * DAY_US, "login.failed", "okta", 0))
    sessions: sessionmaker[Session] = session_factory(engine)
    with sessions.begin() as session:
        session.execute(insert(repository.METADATA), [s.row() for s in stored])
    queries = [aggregates.HistoryQuery(s.event_id, s.pseudonym, s.at, s.source) for s in stored[::2]]
    queries.append(aggregates.HistoryQuery("new-subject", "subject-none", T, "okta"))
    queries.append(aggregates.HistoryQuery("new-source", "subject-1", T, "never-seen"))
    queries.append(aggregates.HistoryQuery("beyond-same", "subject-old", T, "okta"))
    queries.append(aggregates.HistoryQuery("beyond-other", "subject-old", T, "edr"))
    queries.append(queries[0])  # a duplicate in the batch is answered once
    with sessions() as session:
        got = aggregates.histories(session, queries=queries)
    assert set(got) == {q.event_id for q in queries}
    for query in queries:
        assert got[query.event_id] == _reference(stored, query), query
    assert got["new-subject"] == SubjectHistory(0, 0, 0, 0, True, 0, -1.0)
    assert got["new-source"].source_is_new
    beyond = SubjectHistory(0, 0, 0, 0, False, 0, 45 * DAY_US / 1_000_000)
    assert got["beyond-same"] == beyond
    assert got["beyond-other"] == dataclasses.replace(beyond, source_is_new=True)
