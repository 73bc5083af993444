"""The weekly report's content: plain values that the analytics service fills and
``services/analytics/rendering.py`` draws as HTML, PDF or CSV.

Every figure is an aggregate. People appear only as pseudonyms (the riskiest), and a department
smaller than k carries no figure at all (``suppressed``): rendering prints neither its size nor
its rates."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Final

_ISO_WEEK: Final = re.compile(r"(?P<year>[0-9]{4})-W(?P<week>[0-9]{2})")


def parse_iso_week(text: str) -> tuple[date, date]:
    """The Monday and the Sunday of ISO week ``text`` ("2026-W48"); ValueError for a malformed
    label or a week its year does not have (2025-W53: only years that start on a Thursday, or
    leap years that start on a Wednesday, have 53 weeks)."""
    match = _ISO_WEEK.fullmatch(text)
    if match is None:
        raise ValueError(f"not an ISO week (YYYY-Www): {text!r}")
    year, week = int(match["year"]), int(match["week"])
    try:
        monday = date.fromisocalendar(year, week, 1)
    except ValueError:
        raise ValueError(f"{year} has no ISO week {week}") from None
    return monday, monday + timedelta(days=6)


def iso_week(day: date) -> str:
    """The ISO week label of ``day`` ("2026-W48"); the ISO year may differ from ``day.year``."""
    year, week, _ = day.isocalendar()
    return f"{year:04d}-W{week:02d}"


def _rate(part: int, whole: int) -> float:
    return part / whole if whole > 0 else 0.0


@dataclass(frozen=True, slots=True)
class FunnelRow:
    """One campaign: sent, then opened, clicked, submitted data; reported beside them."""

    campaign_id: str
    sent: int
    opened: int
    clicked: int
    submitted: int
    reported: int

    @property
    def open_rate(self) -> float:
        return _rate(self.opened, self.sent)

    @property
    def click_rate(self) -> float:
        return _rate(self.clicked, self.sent)

    @property
    def submit_rate(self) -> float:
        return _rate(self.submitted, self.sent)

    @property
    def report_rate(self) -> float:
        return _rate(self.reported, self.sent)


@dataclass(frozen=True, slots=True)
class WeeklyRate:
    """The whole programme in one ISO week."""

    week: str
    sent: int
    clicked: int
    reported: int

    @property
    def click_rate(self) -> float:
        return _rate(self.clicked, self.sent)

    @property
    def report_rate(self) -> float:
        return _rate(self.reported, self.sent)


@dataclass(frozen=True, slots=True)
class DepartmentRow:
    """Rates are fractions (0..1). ``suppressed``: fewer than k people, so no figure is shown."""

    department: str
    people: int
    click_rate: float
    report_rate: float
    training_completion: float
    suppressed: bool


@dataclass(frozen=True, slots=True)
class TrainingRow:
    module: str
    assigned: int
    completed: int
    overdue: int

    @property
    def completion_rate(self) -> float:
        return _rate(self.completed, self.assigned)

    @property
    def overdue_rate(self) -> float:
        return _rate(self.overdue, self.assigned)


@dataclass(frozen=True, slots=True)
class ViolationRow:
    """Violations of one policy at one severity this week: how many events matched. (Analytics counts
    violating events by policy, severity and day; it keeps no people per policy.)"""

    policy: str
    severity: str
    events: int


@dataclass(frozen=True, slots=True)
class RiskRow:
    """One person by pseudonym: score 0..100, its level, and the factor that weighs most."""

    pseudonym: str
    score: float
    level: str
    top_factor: str


@dataclass(frozen=True, slots=True)
class LogState:
    """The event log when the report was made: its size, the latest signed checkpoint, and
    whether the log verified against it."""

    size: int
    checkpoint_size: int
    checkpoint_time: datetime | None
    root_hash_hex: str
    verified: bool
    note: str


@dataclass(frozen=True, slots=True)
class LiveQualityRow:
    """A model's quality on analysts' labels over a window (scoring's GetModelHealth)."""

    window: str
    model_version: str
    challenger: bool  # the challenger's shadow scores of the events the champion served
    labelled: int
    precision: float
    recall: float
    f1: float


@dataclass(frozen=True, slots=True)
class ModelHealth:
    """The champion model's health from scoring: its card's F1, its live quality and its input drift
    (the largest PSI over the last day, and where). ``note`` says what is missing and why."""

    champion_version: str
    note: str
    card_f1: float | None = None
    live: tuple[LiveQualityRow, ...] = ()
    drift_psi: float | None = None
    drift_on: str = ""
    drift_level: str = ""


@dataclass(frozen=True, slots=True)
class WeeklyReport:
    """One ISO week (Monday ``start`` .. Sunday ``end``, both inclusive). ``trend`` runs oldest
    first and ends with ``week`` itself (normally the four weeks before, then this one)."""

    week: str
    start: date
    end: date
    generated_at: datetime
    k: int
    funnels: tuple[FunnelRow, ...]
    trend: tuple[WeeklyRate, ...]
    departments: tuple[DepartmentRow, ...]
    training: tuple[TrainingRow, ...]
    violations: tuple[ViolationRow, ...]
    riskiest: tuple[RiskRow, ...]
    log_state: LogState
    model: ModelHealth

    def __post_init__(self) -> None:
        if parse_iso_week(self.week) != (self.start, self.end):
            raise ValueError(f"{self.week} runs {parse_iso_week(self.week)}, not {(self.start, self.end)}")
        # Aware, so that every rendering prints the same instant in UTC.
        if self.generated_at.utcoffset() is None:
            raise ValueError("generated_at must carry a time zone")
        if self.k < 1:
            raise ValueError("k must be at least 1")
        starts = [parse_iso_week(rate.week)[0] for rate in self.trend]
        if starts != sorted(set(starts)):
            raise ValueError("trend weeks must be distinct and oldest first")
        if self.trend and self.trend[-1].week != self.week:
            raise ValueError("the trend must end with the report's own week")

    @classmethod
    def for_week(
        cls,
        week: str,
        *,
        generated_at: datetime,
        k: int,
        funnels: tuple[FunnelRow, ...],
        trend: tuple[WeeklyRate, ...],
        departments: tuple[DepartmentRow, ...],
        training: tuple[TrainingRow, ...],
        violations: tuple[ViolationRow, ...],
        riskiest: tuple[RiskRow, ...],
        log_state: LogState,
        model: ModelHealth,
    ) -> WeeklyReport:
        """The report of ``week``, its start and end taken from the label."""
        start, end = parse_iso_week(week)
        return cls(
            week=week,
            start=start,
            end=end,
            generated_at=generated_at,
            k=k,
            funnels=funnels,
            trend=trend,
            departments=departments,
            training=training,
            violations=violations,
            riskiest=riskiest,
            log_state=log_state,
            model=model,
        )

    @property
    def this_week(self) -> WeeklyRate | None:
        return self.trend[-1] if self.trend else None

    @property
    def previous_week(self) -> WeeklyRate | None:
        return self.trend[-2] if len(self.trend) >= 2 else None
