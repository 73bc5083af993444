"""Retention rules and the decision which per-period data keys may be shredded.

Retention is counted in whole days from the END of the period a data key covers (``period_bounds``), and
a key is shredded only when every event type encrypted under it is past its retention: the longest rule
among the types seen in that period wins. The default is 2557 days: 7 x 365 plus 2 leap days. Any seven
calendar years contain one or two 29ths of February, so 2557 days never keeps data for LESS than seven
calendar years and at most one day more. Days (not calendar years) because they are unambiguous, need no
29-February rule, and are what a DPO sets per event type.

Everything here is pure and deterministic given ``now``: a dry run is the same call without shredding.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import MappingProxyType

from services.gdpr.domain.keys import period_bounds

DEFAULT_RETENTION_DAYS = 2557


def _check_days(days: int, *, what: str) -> None:
    if isinstance(days, bool) or not isinstance(days, int) or days < 0:
        raise ValueError(f"{what} retention must be a non-negative whole number of days, got {days!r}")


@dataclass(frozen=True, slots=True)
class RetentionRules:
    """A default retention and per-event-type overrides, all in days."""

    default_days: int = DEFAULT_RETENTION_DAYS
    days_by_event_type: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_days(self.default_days, what="default")
        for event_type, days in self.days_by_event_type.items():
            _check_days(days, what=f"event type {event_type!r}")
        # Freeze a private copy so a caller mutating its dict cannot change a decision half-way.
        object.__setattr__(self, "days_by_event_type", MappingProxyType(dict(self.days_by_event_type)))

    def days_for(self, event_type: str) -> int:
        return self.days_by_event_type.get(event_type, self.default_days)

    def days_for_period(self, event_types: Iterable[str]) -> int:
        """Retention of a period key: the longest among its event types.

        A key with no recorded event types is kept as long as any rule could require, because nothing
        proves which rule applies to what it encrypts.
        """
        types = list(event_types)
        if not types:
            return max([self.default_days, *self.days_by_event_type.values()])
        return max(self.days_for(event_type) for event_type in types)


@dataclass(frozen=True, slots=True)
class PeriodRef:
    """One subject's data key for one period, with the event types encrypted under it."""

    pseudonym: str
    period: str
    event_types: frozenset[str] = frozenset()


def retained_until(period: PeriodRef, *, rules: RetentionRules) -> datetime:
    """The instant after which the period key may be shredded: period end + its retention."""
    _, end = period_bounds(period.period)
    return end + timedelta(days=rules.days_for_period(period.event_types))


def expired_periods(periods: Iterable[PeriodRef], *, rules: RetentionRules, now: datetime) -> list[PeriodRef]:
    """The period keys past retention at ``now`` (strictly after ``retained_until``).

    Sorted by (pseudonym, period) so the result does not depend on the order rows came from storage.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    expired = [period for period in periods if retained_until(period, rules=rules) < now]
    return sorted(expired, key=lambda period: (period.pseudonym, period.period))
