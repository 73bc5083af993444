"""Event facts and the rollup rows one batch of them folds into (pure: no store, no clock).

A batch is reduced here to one row per key of each rollup, so that the store applies it with one
set-based upsert per table whatever the batch size. Days are whole days since the Unix epoch (UTC).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from services.analytics.domain.funnel import STAGE_BY_TYPE, Stage
from services.analytics.domain.risk import combine
from services.analytics.domain.training import TRAINING_BY_TYPE, TrainingStep

MICROS_PER_DAY = 86_400_000_000
EPOCH = date(1970, 1, 1)
CAMPAIGN_KEY = "campaign_id"
MODULE_KEY = "training_module"
# Groups are the directory's departments (EventFact.department), which k-anonymity guards; a
# source-reported `department` dimension would let a filter on it bypass the suppression.
NOT_COUNTED_DIMENSIONS = frozenset({"department"})


def day_of_us(micros: int) -> int:
    return micros // MICROS_PER_DAY


def day_of_date(value: date) -> int:
    return (value - EPOCH).days


def date_of_day(day: int) -> date:
    return EPOCH + timedelta(days=day)


def today_day(now: datetime | None = None) -> int:
    return day_of_date((now or datetime.now(UTC)).astimezone(UTC).date())


@dataclass(frozen=True, slots=True)
class Violation:
    policy: str
    severity: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Fact:
    event_id: str
    type: str
    occurred_us: int
    pseudonym: str
    severity: int = 0
    dimensions: Mapping[str, str] = field(default_factory=dict)
    department: str = ""
    scored: bool = False
    risk_score: float = 0.0
    violations: tuple[Violation, ...] = ()

    @property
    def day(self) -> int:
        return day_of_us(self.occurred_us)

    @property
    def risk(self) -> float:
        """What the event adds to its subject's daily risk: its score when scored, else nothing."""
        return self.risk_score if self.scored else 0.0


@dataclass(slots=True)
class FirstTimes:
    """The earliest time (microseconds) a person reached each step; None when never."""

    department: str
    times: dict[str, int] = field(default_factory=dict)

    def see(self, step: str, micros: int) -> None:
        known = self.times.get(step)
        if known is None or micros < known:
            self.times[step] = micros


@dataclass(slots=True)
class FoldPlan:
    """The rows one batch adds to each rollup, keyed as the tables are."""

    folded: list[tuple[str, str, int, str, float]] = field(default_factory=list)
    day_counts: dict[tuple[int, str, str, str, str], int] = field(default_factory=lambda: defaultdict(int))
    campaigns: dict[str, tuple[int, int]] = field(default_factory=dict)
    stage_events: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    campaign_people: dict[tuple[str, str], FirstTimes] = field(default_factory=dict)
    training_people: dict[tuple[str, str], FirstTimes] = field(default_factory=dict)
    violation_days: dict[tuple[int, str, int, str], int] = field(default_factory=lambda: defaultdict(int))
    # pseudonym -> (decayed risk as of ref_day, ref_day, events); see domain.risk.combine
    person_risks: dict[str, tuple[float, int, int]] = field(default_factory=dict)
    department_people: set[tuple[str, str]] = field(default_factory=set)


def plan_fold(
    facts: Iterable[Fact], *, half_life_days: float, profiled: frozenset[str] | None = None
) -> FoldPlan:
    """The rollup rows of ``facts``; a risk only for pseudonyms in ``profiled`` (None: everyone)."""
    plan = FoldPlan()
    for fact in facts:
        day = fact.day
        plan.folded.append((fact.event_id, fact.pseudonym, day, fact.type, fact.risk))
        plan.day_counts[(day, fact.type, "", "", fact.department)] += 1
        for key, value in fact.dimensions.items():
            if key not in NOT_COUNTED_DIMENSIONS:
                plan.day_counts[(day, fact.type, key, value, fact.department)] += 1
        for violation in fact.violations:
            plan.violation_days[(day, violation.policy, violation.severity, fact.department)] += 1
        if not fact.pseudonym:
            continue  # an event without a subject (a system event) is counted, but is nobody's
        plan.department_people.add((fact.department, fact.pseudonym))
        _fold_campaign(plan, fact)
        _fold_training(plan, fact)
        if profiled is None or fact.pseudonym in profiled:
            known = plan.person_risks.get(fact.pseudonym)
            here = (fact.risk, day, 1)
            plan.person_risks[fact.pseudonym] = combine(known, here, half_life_days) if known else here
    return plan


def _fold_campaign(plan: FoldPlan, fact: Fact) -> None:
    stage: Stage | None = STAGE_BY_TYPE.get(fact.type)
    campaign = fact.dimensions.get(CAMPAIGN_KEY, "")
    if stage is None or not campaign:
        return
    first, last = plan.campaigns.get(campaign, (fact.occurred_us, fact.occurred_us))
    plan.campaigns[campaign] = (min(first, fact.occurred_us), max(last, fact.occurred_us))
    plan.stage_events[(campaign, stage.value)] += 1
    person = plan.campaign_people.setdefault((campaign, fact.pseudonym), FirstTimes(fact.department))
    person.department = fact.department or person.department
    person.see(stage.value, fact.occurred_us)


def _fold_training(plan: FoldPlan, fact: Fact) -> None:
    step: TrainingStep | None = TRAINING_BY_TYPE.get(fact.type)
    module = fact.dimensions.get(MODULE_KEY, "")
    if step is None or not module:
        return
    person = plan.training_people.setdefault((module, fact.pseudonym), FirstTimes(fact.department))
    person.department = fact.department or person.department
    person.see(step.value, fact.occurred_us)
