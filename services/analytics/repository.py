"""Data access for the rollups; every function takes the session explicitly.

Folding writes with set-based upserts (``INSERT ... ON CONFLICT DO UPDATE``), one statement per table
and batch, through the DBAPI cursor of the session's connection (so inside its transaction): on
PostgreSQL one ``INSERT ... SELECT * FROM unnest(<one array per column>)``, on SQLite ``executemany``
of the same upsert.
Rows are sorted by key, so that concurrent batches lock shared counter rows in one order (no deadlock).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import Float, and_, cast, delete, func, literal, or_, select, update
from sqlalchemy.orm import Session

from services.analytics.domain.facts import FirstTimes, FoldPlan
from services.analytics.domain.funnel import PersonStages, Stage
from services.analytics.domain.risk import ScoredEvent, combine
from services.analytics.domain.training import Assignment, PersonAssignment, TrainingStep
from services.analytics.models import (
    CampaignPersonRow,
    CampaignRow,
    CampaignStageEventsRow,
    DayCountRow,
    DepartmentPersonRow,
    FoldedEventRow,
    PersonRiskRow,
    TrainingPersonRow,
    ViolationDayRow,
)

STAGE_COLUMNS: Final = {stage: f"{stage.value}_us" for stage in Stage}
TRAINING_COLUMNS: Final = {step: f"{step.value}_us" for step in TrainingStep}
PER_PERSON_TABLES: Final = (CampaignPersonRow, TrainingPersonRow, PersonRiskRow, DepartmentPersonRow)


def _cursor(session: Session) -> tuple[Any, bool]:
    """The DBAPI cursor of the session's connection (in its transaction), and whether it is PostgreSQL."""
    connection = session.connection()
    return connection.connection.cursor(), connection.dialect.name == "postgresql"


# PostgreSQL types of the columns folding writes: rows travel as one array per column (``unnest``), so a
# batch is one short statement to parse and plan however many rows it holds.
_INTEGER_COLUMNS: Final = frozenset({"day", "severity", "ref_day"})
_FLOAT_COLUMNS: Final = frozenset({"risk", "weighted", "half_life_days"})
_TEXT_COLUMNS: Final = frozenset(
    {"event_id", "subject_pseudonym", "type", "dimension_key", "dimension_value", "department", "campaign_id"}
    | {"stage", "training_module", "policy"}
)


def _array_type(column: str) -> str:
    if column in _INTEGER_COLUMNS:
        return "integer[]"
    if column in _FLOAT_COLUMNS:
        return "double precision[]"
    return "text[]" if column in _TEXT_COLUMNS else "bigint[]"


def _write(
    session: Session, table: str, columns: Sequence[str], rows: Sequence[tuple[Any, ...]], conflict: str
) -> None:
    if not rows:
        return
    cursor, postgres = _cursor(session)
    tail = f" ON CONFLICT ({conflict}"  # conflict: "key, ...) DO ..."
    try:
        if postgres:
            arrays = ", ".join(f"%s::{_array_type(column)}" for column in columns)
            cursor.execute(
                f"INSERT INTO {table} ({', '.join(columns)}) SELECT * FROM unnest({arrays}){tail}",
                [list(values) for values in zip(*rows, strict=True)],
            )
        else:
            values = "(" + ", ".join("?" * len(columns)) + ")"
            cursor.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES {values}{tail}", rows)
    finally:
        cursor.close()


def _earliest(table: str, column: str) -> str:
    return (
        f"{column} = CASE WHEN {table}.{column} IS NULL OR excluded.{column} < {table}.{column} "
        f"THEN excluded.{column} ELSE {table}.{column} END"
    )


def _known_department(table: str) -> str:
    return (
        "department = CASE WHEN excluded.department <> '' "
        f"THEN excluded.department ELSE {table}.department END"
    )


def claim_events(session: Session, rows: Sequence[tuple[str, str, int, str, float]]) -> set[str]:
    """Insert the folded-event index rows; the ids inserted now (the others were folded before)."""
    if not rows:
        return set()
    cursor, postgres = _cursor(session)
    sql = "INSERT INTO folded_events (event_id, subject_pseudonym, day, type, risk) VALUES "
    try:
        if postgres:
            columns = list(zip(*rows, strict=True))
            cursor.execute(
                "INSERT INTO folded_events (event_id, subject_pseudonym, day, type, risk) "
                "SELECT * FROM unnest(%s::text[], %s::text[], %s::integer[], %s::text[], "
                "%s::double precision[]) "
                "ON CONFLICT (event_id) DO NOTHING RETURNING event_id",
                [list(values) for values in columns],
            )
            return {row[0] for row in cursor.fetchall()}
        claimed: set[str] = set()
        for row in rows:  # SQLite: one writer at a time; the row count tells what was new
            cursor.execute(sql + "(?, ?, ?, ?, ?) ON CONFLICT (event_id) DO NOTHING", row)
            if cursor.rowcount == 1:
                claimed.add(row[0])
        return claimed
    finally:
        cursor.close()


def apply_fold(session: Session, plan: FoldPlan, *, half_life_days: float) -> None:
    """Add a batch's rollup rows (see :func:`services.analytics.domain.facts.plan_fold`)."""
    _write(
        session,
        "day_counts",
        ("day", "type", "dimension_key", "dimension_value", "department", "events"),
        sorted((*key, events) for key, events in plan.day_counts.items()),
        "day, type, dimension_key, dimension_value, department) DO UPDATE SET "
        "events = day_counts.events + excluded.events",
    )
    _write(
        session,
        "campaigns",
        ("campaign_id", "first_event_us", "last_event_us"),
        sorted((campaign, first, last) for campaign, (first, last) in plan.campaigns.items()),
        "campaign_id) DO UPDATE SET "
        + _earliest("campaigns", "first_event_us")
        + ", last_event_us = CASE WHEN excluded.last_event_us > campaigns.last_event_us "
        "THEN excluded.last_event_us ELSE campaigns.last_event_us END",
    )
    _write(
        session,
        "campaign_stage_events",
        ("campaign_id", "stage", "events"),
        sorted((*key, events) for key, events in plan.stage_events.items()),
        "campaign_id, stage) DO UPDATE SET events = campaign_stage_events.events + excluded.events",
    )
    _write_people(session, "campaign_people", "campaign_id", STAGE_COLUMNS.values(), plan.campaign_people)
    _write_people(
        session, "training_people", "training_module", TRAINING_COLUMNS.values(), plan.training_people
    )
    _write(
        session,
        "violation_days",
        ("day", "policy", "severity", "department", "events"),
        sorted((*key, events) for key, events in plan.violation_days.items()),
        "day, policy, severity, department) DO UPDATE SET events = violation_days.events + excluded.events",
    )
    _write_risks(session, plan.person_risks, half_life_days)
    _write(
        session,
        "department_people",
        ("department", "subject_pseudonym"),
        sorted(plan.department_people),
        "department, subject_pseudonym) DO NOTHING",
    )


def _write_risks(session: Session, risks: dict[str, tuple[float, int, int]], half_life_days: float) -> None:
    """Add each person's batch sum to its kept sum, both brought to the later day (domain.risk.combine)."""
    half_life = repr(float(half_life_days))  # a number from the settings, never input

    def decay(frm: str, to: str) -> str:
        return f"power(2.0, CAST({frm} - {to} AS DOUBLE PRECISION) / {half_life})"

    kept, new = "person_risks", "excluded"
    _write(
        session,
        "person_risks",
        ("subject_pseudonym", "weighted", "ref_day", "event_count", "half_life_days"),
        sorted((p, total, day, events, half_life_days) for p, (total, day, events) in risks.items()),
        f"subject_pseudonym) DO UPDATE SET weighted = CASE WHEN {new}.ref_day >= {kept}.ref_day "
        f"THEN {kept}.weighted * {decay(f'{kept}.ref_day', f'{new}.ref_day')} + {new}.weighted "
        f"ELSE {kept}.weighted + {new}.weighted * {decay(f'{new}.ref_day', f'{kept}.ref_day')} END, "
        f"ref_day = CASE WHEN {new}.ref_day > {kept}.ref_day THEN {new}.ref_day ELSE {kept}.ref_day END, "
        f"event_count = {kept}.event_count + {new}.event_count",
    )


def rebuild_risks(session: Session, *, half_life_days: float) -> bool:
    """Sum every person's risk again from the folded events when the kept sums were built with another
    half-life; whether it did."""
    other = select(PersonRiskRow.subject_pseudonym).where(PersonRiskRow.half_life_days != half_life_days)
    if session.execute(other.limit(1)).first() is None:
        return False
    session.execute(delete(PersonRiskRow))
    rows: dict[str, tuple[float, int, int]] = {}
    query = select(FoldedEventRow.subject_pseudonym, FoldedEventRow.day, FoldedEventRow.risk).where(
        FoldedEventRow.subject_pseudonym != ""
    )
    for pseudonym, day, risk in session.execute(query).tuples():
        known = rows.get(pseudonym)
        rows[pseudonym] = combine(known, (risk, day, 1), half_life_days) if known else (risk, day, 1)
    _write_risks(session, rows, half_life_days)
    return True


def _write_people(
    session: Session,
    table: str,
    group: str,
    steps: Collection[str],
    people: dict[tuple[str, str], FirstTimes],
) -> None:
    """Upsert per-person first times: each step keeps the earliest time seen."""
    columns = list(steps)
    rows = sorted(
        (key, pseudonym, first.department, *(first.times.get(c.removesuffix("_us")) for c in columns))
        for (key, pseudonym), first in people.items()
    )
    updates = ", ".join([_known_department(table), *(_earliest(table, column) for column in columns)])
    _write(
        session,
        table,
        (group, "subject_pseudonym", "department", *columns),
        rows,
        f"{group}, subject_pseudonym) DO UPDATE SET {updates}",
    )


def forget(session: Session, pseudonyms: Collection[str], *, risk_only: bool = False) -> set[str]:
    """Delete the per-person rows of ``pseudonyms`` and blank them on the folded-event index; returns the
    pseudonyms that had any. ``risk_only`` (an objection to profiling): their risk row, and the risk
    of their folded events, only."""
    if not pseudonyms:
        return set()
    wanted = list(pseudonyms)
    named = FoldedEventRow.subject_pseudonym.in_(wanted)
    if risk_only:
        session.execute(delete(PersonRiskRow).where(PersonRiskRow.subject_pseudonym.in_(wanted)))
        session.execute(update(FoldedEventRow).where(named, FoldedEventRow.risk != 0).values(risk=0.0))
        return set()
    held: set[str] = set()
    for table in PER_PERSON_TABLES:
        held.update(
            session.scalars(
                select(table.subject_pseudonym).where(table.subject_pseudonym.in_(wanted)).distinct()
            ).all()
        )
        session.execute(delete(table).where(table.subject_pseudonym.in_(wanted)))
    held.update(session.scalars(select(FoldedEventRow.subject_pseudonym).where(named).distinct()).all())
    session.execute(update(FoldedEventRow).where(named).values(subject_pseudonym=""))
    return held


def held_pseudonyms(session: Session, *, after: str, limit: int) -> list[str]:
    """The pseudonyms the folded-event index still names, in order, after ``after``: the people whose
    consent the sweep re-checks."""
    named = FoldedEventRow.subject_pseudonym
    return list(
        session.scalars(select(named).where(named > after).group_by(named).order_by(named).limit(limit)).all()
    )


# --- reads -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CampaignSummary:
    campaign_id: str
    first_event_us: int
    last_event_us: int
    people_sent: int


def list_campaigns(session: Session, *, limit: int, before: tuple[int, str] | None) -> list[CampaignSummary]:
    """Campaigns newest first by first event, after ``before`` (the previous page's last row)."""
    query = select(CampaignRow).order_by(CampaignRow.first_event_us.desc(), CampaignRow.campaign_id.desc())
    if before is not None:
        moment, campaign = before
        query = query.where(
            or_(
                CampaignRow.first_event_us < moment,
                and_(CampaignRow.first_event_us == moment, CampaignRow.campaign_id < campaign),
            )
        )
    rows = session.scalars(query.limit(limit)).all()
    sent = dict(
        session.execute(
            select(CampaignPersonRow.campaign_id, func.count())
            .where(
                CampaignPersonRow.campaign_id.in_([row.campaign_id for row in rows]),
                CampaignPersonRow.sent_us.is_not(None),
            )
            .group_by(CampaignPersonRow.campaign_id)
        )
        .tuples()
        .all()
    )
    return [
        CampaignSummary(row.campaign_id, row.first_event_us, row.last_event_us, sent.get(row.campaign_id, 0))
        for row in rows
    ]


def campaign_exists(session: Session, campaign_id: str) -> bool:
    return session.get(CampaignRow, campaign_id) is not None


def stage_events(session: Session, campaign_id: str) -> dict[str, int]:
    query = select(CampaignStageEventsRow.stage, CampaignStageEventsRow.events).where(
        CampaignStageEventsRow.campaign_id == campaign_id
    )
    return dict(session.execute(query).tuples().all())


def campaign_people(session: Session, campaign_id: str) -> list[PersonStages]:
    """Each person's department and first time at each stage of the campaign (plain rows, no ORM objects:
    a campaign holds thousands)."""
    stages = list(Stage)
    columns = [getattr(CampaignPersonRow, STAGE_COLUMNS[stage]) for stage in stages]
    query = select(CampaignPersonRow.department, *columns).where(CampaignPersonRow.campaign_id == campaign_id)
    return [
        PersonStages(row[0], dict(zip(stages, row[1:], strict=True)))
        for row in session.execute(query).tuples()
    ]


def department_size(session: Session, department: str) -> int:
    query = (
        select(func.count())
        .select_from(DepartmentPersonRow)
        .where(DepartmentPersonRow.department == department)
    )
    return int(session.scalar(query) or 0)


def event_counts(
    session: Session,
    *,
    first_day: int,
    last_day: int,
    types: Sequence[str],
    dimension: tuple[str, str],
    department: str | None,
) -> list[tuple[int, str, int]]:
    """(day, type, events) over the days, summed over departments unless one is named."""
    query = (
        select(DayCountRow.day, DayCountRow.type, func.sum(DayCountRow.events))
        .where(
            DayCountRow.day.between(first_day, last_day),
            DayCountRow.dimension_key == dimension[0],
            DayCountRow.dimension_value == dimension[1],
        )
        .group_by(DayCountRow.day, DayCountRow.type)
        .order_by(DayCountRow.day, DayCountRow.type)
    )
    if types:
        query = query.where(DayCountRow.type.in_(list(types)))
    if department is not None:
        query = query.where(DayCountRow.department == department)
    return [(day, kind, int(events)) for day, kind, events in session.execute(query).tuples()]


def violation_counts(
    session: Session, *, first_day: int, last_day: int, policy: str, department: str | None
) -> list[tuple[int, str, int, int]]:
    """(day, policy, severity, events) over the days, summed over departments unless one is named."""
    query = (
        select(
            ViolationDayRow.day,
            ViolationDayRow.policy,
            ViolationDayRow.severity,
            func.sum(ViolationDayRow.events),
        )
        .where(ViolationDayRow.day.between(first_day, last_day))
        .group_by(ViolationDayRow.day, ViolationDayRow.policy, ViolationDayRow.severity)
        .order_by(ViolationDayRow.day, ViolationDayRow.policy, ViolationDayRow.severity)
    )
    if policy:
        query = query.where(ViolationDayRow.policy == policy)
    if department is not None:
        query = query.where(ViolationDayRow.department == department)
    return [
        (day, name, severity, int(events)) for day, name, severity, events in session.execute(query).tuples()
    ]


def training_people(session: Session, *, module: str) -> list[PersonAssignment]:
    query = select(
        TrainingPersonRow.training_module,
        TrainingPersonRow.department,
        TrainingPersonRow.subject_pseudonym,
        TrainingPersonRow.completed_us,
        TrainingPersonRow.overdue_us,
    )
    if module:
        query = query.where(TrainingPersonRow.training_module == module)
    return [
        PersonAssignment(name, department, pseudonym, Assignment(completed is not None, overdue is not None))
        for name, department, pseudonym, completed, overdue in session.execute(query).tuples()
    ]


def subject_events(session: Session, pseudonym: str) -> list[ScoredEvent]:
    """Every folded event of one pseudonym whose risk is kept (risk 0 when unscored), the input of its
    risk in detail; none when no risk is kept for it (one query: reads are one round trip)."""
    event = FoldedEventRow
    query = (
        select(event.event_id, event.type, event.day, event.risk)
        .join(PersonRiskRow, PersonRiskRow.subject_pseudonym == event.subject_pseudonym)
        .where(event.subject_pseudonym == pseudonym)
    )
    rows = session.execute(query).tuples()
    return [ScoredEvent(event_id, kind, day, risk) for event_id, kind, day, risk in rows]


@dataclass(frozen=True, slots=True)
class RiskSum:
    pseudonym: str
    decayed: float
    event_count: int
    # Its place in the ranking (models.RISK_RANK_SQL), the same on every day.
    rank: float


def riskiest(
    session: Session,
    *,
    today: int,
    half_life_days: float,
    limit: int,
    after: tuple[float, str] | None,
) -> list[RiskSum]:
    """Pseudonyms by decayed risk S on ``today``, largest first (ties by pseudonym), after ``after``
    (a previous row's rank and pseudonym): an index scan of ``limit`` rows however many people."""
    person = PersonRiskRow
    decayed = person.weighted * func.power(literal(2.0), cast(person.ref_day - today, Float) / half_life_days)
    query = (
        select(person.subject_pseudonym, decayed, person.event_count, person.rank)
        .order_by(person.rank.desc(), person.subject_pseudonym)
        .limit(limit)
    )
    if after is not None:
        rank, pseudonym = after
        later = and_(person.rank == rank, person.subject_pseudonym > pseudonym)
        query = query.where(or_(person.rank < rank, later))
    return [
        RiskSum(p, float(s or 0.0), int(n or 0), float(r)) for p, s, n, r in session.execute(query).tuples()
    ]
