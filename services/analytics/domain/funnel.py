"""The phishing funnel: which event type is which stage, and the figures of a funnel (pure)."""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from services.analytics.domain.anonymity import suppressed


class Stage(enum.StrEnum):
    """Funnel stages in order; the value names the column of the person's first time at it."""

    SENT = "sent"
    OPENED = "opened"
    CLICKED = "clicked"
    SUBMITTED = "submitted"
    REPORTED = "reported"


# The event types of services/ingest/domain (the data-minimisation registry declares `campaign_id`
# on each); only facts that carry a `campaign_id` dimension enter a funnel.
STAGE_BY_TYPE: Final[Mapping[str, Stage]] = {
    "phishing.email_sent": Stage.SENT,
    "phishing.email_opened": Stage.OPENED,
    "phishing.clicked": Stage.CLICKED,
    "phishing.submitted_data": Stage.SUBMITTED,
    "phishing.reported": Stage.REPORTED,
}


@dataclass(frozen=True, slots=True)
class Rates:
    open_rate: float
    click_rate: float
    submit_rate: float
    report_rate: float


def rate(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def rates(people: Mapping[Stage, int]) -> Rates:
    """Each stage's people against the people sent."""
    sent = people.get(Stage.SENT, 0)
    return Rates(
        open_rate=rate(people.get(Stage.OPENED, 0), sent),
        click_rate=rate(people.get(Stage.CLICKED, 0), sent),
        submit_rate=rate(people.get(Stage.SUBMITTED, 0), sent),
        report_rate=rate(people.get(Stage.REPORTED, 0), sent),
    )


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True, slots=True)
class Durations:
    count: int
    median_seconds: float
    p90_seconds: float


def durations(seconds: Sequence[float]) -> Durations:
    return Durations(len(seconds), percentile(seconds, 50.0), percentile(seconds, 90.0))


def elapsed_seconds(pairs: Sequence[tuple[int | None, int | None]]) -> list[float]:
    """Seconds from each (start, end) microsecond pair where both are known and end is not before start."""
    return [
        (end - start) / 1_000_000
        for start, end in pairs
        if start is not None and end is not None and end >= start
    ]


@dataclass(frozen=True, slots=True)
class PersonStages:
    """One person's first time (microseconds) at each stage of one campaign; absent when never."""

    department: str
    times: Mapping[Stage, int | None]


@dataclass(frozen=True, slots=True)
class StageFigures:
    stage: Stage
    events: int
    people: int


@dataclass(frozen=True, slots=True)
class DepartmentFunnel:
    department: str
    suppressed: bool
    people: Mapping[Stage, int]
    rates: Rates


@dataclass(frozen=True, slots=True)
class Funnel:
    campaign_id: str
    stages: tuple[StageFigures, ...]
    rates: Rates
    time_to_click: Durations
    time_to_report: Durations
    departments: tuple[DepartmentFunnel, ...]


def people_per_stage(people: Sequence[PersonStages]) -> dict[Stage, int]:
    return {stage: sum(1 for person in people if person.times.get(stage) is not None) for stage in Stage}


def build_funnel(
    campaign_id: str, people: Sequence[PersonStages], stage_events: Mapping[Stage, int], *, k: int
) -> Funnel:
    """The funnel of one campaign; a department with fewer than ``k`` people in it shows no figures."""
    reached = people_per_stage(people)
    by_department: dict[str, list[PersonStages]] = {}
    for person in people:
        by_department.setdefault(person.department, []).append(person)
    departments = []
    for name in sorted(by_department):
        members = by_department[name]
        if suppressed(len(members), k=k):
            departments.append(DepartmentFunnel(name, True, dict.fromkeys(Stage, 0), rates({})))
        else:
            counts = people_per_stage(members)
            departments.append(DepartmentFunnel(name, False, counts, rates(counts)))
    return Funnel(
        campaign_id=campaign_id,
        stages=tuple(StageFigures(stage, stage_events.get(stage, 0), reached[stage]) for stage in Stage),
        rates=rates(reached),
        time_to_click=durations(
            elapsed_seconds([(p.times.get(Stage.SENT), p.times.get(Stage.CLICKED)) for p in people])
        ),
        time_to_report=durations(
            elapsed_seconds([(p.times.get(Stage.SENT), p.times.get(Stage.REPORTED)) for p in people])
        ),
        departments=tuple(departments),
    )
