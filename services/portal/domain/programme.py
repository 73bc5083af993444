"""What the programme pages (services/portal/pages/programme.py) make of the analytics service's
answers: funnel rows, durations and rates as people read them, the weekly click and report rates,
training and violations tables, and the charts of rates and risk scores.

Nothing here asks a service or sees an identifier: the inputs are the analytics contract's messages,
which carry pseudonyms and k-anonymous aggregates only.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Final

from awareness.analytics.v1 import analytics_pb2
from awareness.ingest.v1 import ingest_pb2

from services.portal.domain import charts

Stage = analytics_pb2.FunnelStage
STAGE_NAMES: Final = {
    Stage.FUNNEL_STAGE_SENT: "sent",
    Stage.FUNNEL_STAGE_OPENED: "opened",
    Stage.FUNNEL_STAGE_CLICKED: "clicked",
    Stage.FUNNEL_STAGE_SUBMITTED_DATA: "submitted data",
    Stage.FUNNEL_STAGE_REPORTED: "reported",
}
STAGES: Final = tuple(STAGE_NAMES)
RISK_LEVELS: Final = {
    analytics_pb2.RISK_LEVEL_UNSPECIFIED: "",
    analytics_pb2.RISK_LEVEL_LOW: "low",
    analytics_pb2.RISK_LEVEL_MODERATE: "moderate",
    analytics_pb2.RISK_LEVEL_HIGH: "high",
    analytics_pb2.RISK_LEVEL_CRITICAL: "critical",
}
TREND_WEEKS: Final = 12
SENT: Final = "phishing.email_sent"
CLICKED: Final = "phishing.clicked"
REPORTED: Final = "phishing.reported"
TREND_TYPES: Final = (SENT, CLICKED, REPORTED)
UNKNOWN_DEPARTMENT: Final = "not in the directory"


def percent(rate: float) -> str:
    """``12.5 %`` for 0.125."""
    return f"{rate * 100:.1f} %"


def duration(seconds: float) -> str:
    """A duration as a person says it: ``45 s``, ``4 min 30 s``, ``2 h 5 min``, ``3 d 4 h``."""
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes} min {secs} s" if secs else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def department_name(department: str) -> str:
    return department or UNKNOWN_DEPARTMENT


def severity_name(severity: int) -> str:
    """Ingest's severity number as its word (``medium``), or the number when ingest has no name."""
    try:
        return ingest_pb2.Severity.Name(severity).removeprefix("SEVERITY_").lower()  # type: ignore[arg-type]
    except ValueError:
        return str(severity)


# --- a campaign's funnel -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StageRow:
    stage: str
    people: int
    events: int
    # People at this stage / people sent; None for "sent" itself.
    rate: float | None


def _rate_of(stage: Stage.ValueType, rates: analytics_pb2.FunnelRates) -> float | None:
    return {
        Stage.FUNNEL_STAGE_OPENED: rates.open_rate,
        Stage.FUNNEL_STAGE_CLICKED: rates.click_rate,
        Stage.FUNNEL_STAGE_SUBMITTED_DATA: rates.submit_rate,
        Stage.FUNNEL_STAGE_REPORTED: rates.report_rate,
    }.get(stage)


def stage_rows(
    stages: Iterable[analytics_pb2.StageCount], rates: analytics_pb2.FunnelRates
) -> list[StageRow]:
    """One row per stage in funnel order; a stage the answer leaves out counts zero."""
    found = {stage.stage: stage for stage in stages}
    rows = []
    for stage in STAGES:
        count = found.get(stage, analytics_pb2.StageCount(stage=stage))
        rows.append(StageRow(STAGE_NAMES[stage], count.people, count.events, _rate_of(stage, rates)))
    return rows


@dataclass(frozen=True, slots=True)
class DepartmentRow:
    department: str
    suppressed: bool
    # People per stage in funnel order (empty when suppressed: no figure is ever shown for it).
    people: tuple[int, ...]
    click_rate: float
    report_rate: float


def department_rows(departments: Iterable[analytics_pb2.DepartmentFunnel]) -> list[DepartmentRow]:
    rows = []
    for department in departments:
        if department.suppressed:
            rows.append(DepartmentRow(department_name(department.department), True, (), 0.0, 0.0))
            continue
        found = {stage.stage: stage.people for stage in department.stages}
        rows.append(
            DepartmentRow(
                department_name(department.department),
                False,
                tuple(found.get(stage, 0) for stage in STAGES),
                department.rates.click_rate,
                department.rates.report_rate,
            )
        )
    return rows


def funnel_chart(rows: Sequence[StageRow]) -> charts.Chart:
    return charts.bar_chart("People per stage", [(row.stage, row.people) for row in rows], unit="people")


# --- trends ----------------------------------------------------------------------------------------


def trend_weeks(today: date, weeks: int = TREND_WEEKS) -> list[tuple[str, date, date]]:
    """The last ``weeks`` ISO weeks up to the one ``today`` falls in (which is still running),
    oldest first: each as its label (``2026-W49``), Monday and Sunday."""
    this_monday = today - timedelta(days=today.isoweekday() - 1)
    found = []
    for back in range(weeks - 1, -1, -1):
        monday = this_monday - timedelta(weeks=back)
        year, week, _ = monday.isocalendar()
        found.append((f"{year:04d}-W{week:02d}", monday, monday + timedelta(days=6)))
    return found


@dataclass(frozen=True, slots=True)
class WeeklyRate:
    week: str
    sent: int
    clicked: int
    reported: int

    @property
    def click_rate(self) -> float | None:
        return self.clicked / self.sent if self.sent else None

    @property
    def report_rate(self) -> float | None:
        return self.reported / self.sent if self.sent else None


def weekly_rates(
    counts: Iterable[analytics_pb2.EventCount], weeks: Sequence[tuple[str, date, date]]
) -> list[WeeklyRate]:
    """Click and report rates per ISO week from the daily event counts, as the weekly report computes
    them: the week's ``phishing.clicked`` (or ``phishing.reported``) events over its
    ``phishing.email_sent`` events. The rollups count events, not people, so a person clicking twice
    counts twice, and a click in the week after the e-mail counts in that later week."""
    week_of_day: dict[str, str] = {}
    for label, monday, _ in weeks:
        for offset in range(7):
            week_of_day[(monday + timedelta(days=offset)).isoformat()] = label
    totals: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(TREND_TYPES, 0))
    for count in counts:
        week = week_of_day.get(count.day)
        if week is not None and count.type in TREND_TYPES:
            totals[week][count.type] += count.count
    return [
        WeeklyRate(label, totals[label][SENT], totals[label][CLICKED], totals[label][REPORTED])
        for label, _, _ in weeks
    ]


def grouped_bars(
    title: str,
    labels: Sequence[str],
    series: Sequence[tuple[str, Sequence[float | None]]],
    *,
    top: float,
    unit: str,
) -> charts.Chart:
    """Bars per label, one per series side by side, on a fixed scale from 0 to ``top`` (a rate's
    100 %, a score's 100); None (nothing to compute a figure from) draws no bar and reads as "none"."""
    plot_height = charts.HEIGHT - charts.MARGIN_BOTTOM - charts.MARGIN_TOP
    slot = (charts.WIDTH - charts.MARGIN_LEFT) / max(len(labels), 1)
    bar = slot * 0.7 / max(len(series), 1)
    rects, axis = [], []
    for position, label in enumerate(labels):
        x = charts.MARGIN_LEFT + position * slot + slot * 0.15
        for index, (name, values) in enumerate(series):
            value = values[position]
            if value is None:
                continue
            height = plot_height * min(value, top) / top
            rects.append(
                charts.Rect(
                    x + index * bar,
                    charts.MARGIN_TOP + plot_height - height,
                    bar,
                    height,
                    f"series-{index}",
                    f"{label} {name}: {value:.1f}{unit}",
                )
            )
        # Every other week is labelled when there are many, so the labels stay readable.
        if len(labels) <= 8 or position % 2 == 0:
            axis.append(charts.AxisLabel(charts.MARGIN_LEFT + position * slot + slot / 2, label))
    ticks = tuple(
        charts.Tick(y=charts.MARGIN_TOP + plot_height * (1 - fraction), label=f"{top * fraction:g}{unit}")
        for fraction in (0.0, 0.5, 1.0)
    )
    parts = []
    for position, label in enumerate(labels):
        figures = ", ".join(
            f"{name} {'none' if values[position] is None else f'{values[position]:.1f}{unit}'}"
            for name, values in series
        )
        parts.append(f"{label}: {figures}")
    return charts.Chart(
        title=title,
        summary="; ".join(parts) + ".",
        rects=tuple(rects),
        ticks=ticks,
        axis=tuple(axis),
        legend=tuple(charts.LegendEntry(name, f"series-{index}") for index, (name, _) in enumerate(series))
        if len(series) > 1
        else (),
        empty=not rects,
    )


def rates_chart(rates: Sequence[WeeklyRate]) -> charts.Chart:
    def as_percent(value: float | None) -> float | None:
        return None if value is None else value * 100

    return grouped_bars(
        "Click and report rates per ISO week",
        [rate.week for rate in rates],
        [
            ("click rate", [as_percent(rate.click_rate) for rate in rates]),
            ("report rate", [as_percent(rate.report_rate) for rate in rates]),
        ],
        top=100.0,
        unit=" %",
    )


@dataclass(frozen=True, slots=True)
class PolicyViolations:
    policy: str
    total: int
    # (severity word, count), most severe first.
    by_severity: tuple[tuple[str, int], ...]


def violations_by_policy(counts: Iterable[analytics_pb2.ViolationCount]) -> list[PolicyViolations]:
    """The period's violations summed per policy, most violated first."""
    per_policy: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    for count in counts:
        per_policy[count.policy][count.severity] += count.count
    rows = [
        PolicyViolations(
            policy,
            sum(severities.values()),
            tuple((severity_name(level), severities[level]) for level in sorted(severities, reverse=True)),
        )
        for policy, severities in per_policy.items()
    ]
    return sorted(rows, key=lambda row: (-row.total, row.policy))


def violations_chart(rows: Sequence[PolicyViolations], limit: int = 8) -> charts.Chart:
    return charts.bar_chart(
        "Violations by policy", [(row.policy, row.total) for row in rows[:limit]], unit="violations"
    )


# --- risk ------------------------------------------------------------------------------------------


def risk_trend_chart(trend: Sequence[analytics_pb2.WeeklyRisk]) -> charts.Chart:
    return grouped_bars(
        "Risk score at the end of each ISO week",
        [week.week for week in trend],
        [("score", [week.score for week in trend])],
        top=100.0,
        unit="",
    )
