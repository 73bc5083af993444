"""Risk per pseudonym (pure): a decayed sum of daily risk, a 0..100 score, its level, factors and trend.

S = Σ_days risk_sum_day · 2^(-age_days / half_life); score = round(100 · (1 - e^(-S)), 1).

The store keeps, per person, S as of the day of its latest event (``ref_day``): adding an event or a
batch is ``combine``, and S on any later day is ``decayed_from``. The list ranks by that one row per
person; one person's risk in detail is summed here from its events, with the same weights.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Final

from services.runtime.risk_levels import RISK_LEVEL_THRESHOLDS

DEFAULT_HALF_LIFE_DAYS: Final = 30.0
TREND_WEEKS: Final = 12
TOP_EVENTS: Final = 10


def weight(age_days: int, half_life_days: float) -> float:
    """The decay of a day ``age_days`` old: halves every half-life."""
    return float(2.0 ** (-age_days / half_life_days))


def combine(
    first: tuple[float, int, int], second: tuple[float, int, int], half_life_days: float
) -> tuple[float, int, int]:
    """Two (decayed sum as of ref_day, ref_day, events) of one person as one, as of the later day."""
    (a, a_day, a_events), (b, b_day, b_events) = first, second
    ref_day = max(a_day, b_day)
    total = a * weight(ref_day - a_day, half_life_days) + b * weight(ref_day - b_day, half_life_days)
    return total, ref_day, a_events + b_events


def decayed_from(total: float, ref_day: int, *, at_day: int, half_life_days: float) -> float:
    """S on ``at_day`` of a sum kept as of ``ref_day``."""
    return total * weight(at_day - ref_day, half_life_days)


def decayed_sum(days: Iterable[tuple[int, float]], *, at_day: int, half_life_days: float) -> float:
    """S at ``at_day`` from (day, risk_sum) pairs."""
    pairs = list(days)
    weights = _weights({day for day, _ in pairs}, at_day=at_day, half_life_days=half_life_days)
    return sum(risk * weights[day] for day, risk in pairs)


def _weights(days: Iterable[int], *, at_day: int, half_life_days: float) -> dict[int, float]:
    """The decay of each distinct day: a person's events fall on far fewer days than there are events."""
    return {day: weight(at_day - day, half_life_days) for day in set(days)}


def daily_sums(events: Iterable[ScoredEvent]) -> list[tuple[int, float]]:
    """(day, risk summed over the day's events), by day."""
    sums: dict[int, float] = defaultdict(float)
    for event in events:
        sums[event.day] += event.risk
    return sorted(sums.items())


def score_of(decayed: float) -> float:
    """The 0..100 score of a decayed sum, one decimal."""
    return round(100.0 * (1.0 - math.exp(-max(decayed, 0.0))), 1)


def level_of(score: float) -> str:
    """The level of a 0..100 score, by the suite's thresholds on score / 100."""
    for lower_bound, name in RISK_LEVEL_THRESHOLDS:
        if score / 100.0 >= lower_bound:
            return name
    return RISK_LEVEL_THRESHOLDS[-1][1]


@dataclass(frozen=True, slots=True)
class ScoredEvent:
    event_id: str
    type: str
    day: int
    risk: float


@dataclass(frozen=True, slots=True)
class Contribution:
    event_id: str
    type: str
    day: int
    contribution: float


@dataclass(frozen=True, slots=True)
class Factor:
    factor: str
    contribution: float
    share: float


def top_contributions(
    events: Iterable[ScoredEvent], *, at_day: int, half_life_days: float, limit: int = TOP_EVENTS
) -> list[Contribution]:
    """The events adding most to S at ``at_day``, largest first (ties by event id)."""
    listed = list(events)
    weights = _weights((e.day for e in listed), at_day=at_day, half_life_days=half_life_days)
    found = [Contribution(e.event_id, e.type, e.day, e.risk * weights[e.day]) for e in listed]
    found = [c for c in found if c.contribution > 0.0]
    found.sort(key=lambda c: (-c.contribution, c.event_id))
    return found[:limit]


def factors(events: Iterable[ScoredEvent], *, at_day: int, half_life_days: float) -> list[Factor]:
    """S split by event type (`type:<type>`), largest first, with each part's share."""
    listed = list(events)
    weights = _weights((e.day for e in listed), at_day=at_day, half_life_days=half_life_days)
    by_type: dict[str, float] = defaultdict(float)
    for event in listed:
        by_type[event.type] += event.risk * weights[event.day]
    total = sum(by_type.values())
    parts = [(f"type:{name}", value) for name, value in by_type.items() if value > 0.0]
    parts.sort(key=lambda part: (-part[1], part[0]))
    return [Factor(name, value, value / total if total else 0.0) for name, value in parts]


@dataclass(frozen=True, slots=True)
class WeekScore:
    week: str
    score: float


def iso_week_label(day: date) -> str:
    year, week, _ = day.isocalendar()
    return f"{year}-W{week:02d}"


def trend(
    days: Sequence[tuple[int, float]],
    *,
    today: date,
    today_day: int,
    half_life_days: float,
    weeks: int = TREND_WEEKS,
) -> list[WeekScore]:
    """The score at the end (Sunday) of each of the last ``weeks`` ISO weeks, the current one last and
    taken at today; oldest first."""
    this_sunday = today + timedelta(days=7 - today.isoweekday())
    found: list[WeekScore] = []
    for back in range(weeks - 1, -1, -1):
        sunday = this_sunday - timedelta(weeks=back)
        at_day = today_day - (today - min(sunday, today)).days
        until = [(day, risk) for day, risk in days if day <= at_day]  # what had happened by then
        found.append(
            WeekScore(
                iso_week_label(sunday),
                score_of(decayed_sum(until, at_day=at_day, half_life_days=half_life_days)),
            )
        )
    return found
