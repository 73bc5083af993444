"""A subject's history aggregates as of one event: the figures scoring and policy receive.

Every figure covers the subject's events that occurred strictly before the event (by occurred_at),
so the aggregates of an event do not depend on the order events arrived in, and the training
examples computed later equal what was sent for scoring (scoring's HistoryAggregator mirrors this).

``subject_history`` is the reference definition: ingest has the database compute the same figures
for a whole batch (services/ingest/aggregates.py), and tests/ingest/test_aggregates.py holds that
query equal to this fold.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

MICROS_PER_SECOND = 1_000_000
DAY_US = 86_400 * MICROS_PER_SECOND
WEEK_US = 7 * DAY_US
MONTH_US = 30 * DAY_US
FAILED_LOGIN_TYPES = frozenset({"login.failed", "password.reset"})


@dataclass(frozen=True, slots=True)
class PriorEvent:
    """One earlier event of the subject, as the metadata table holds it."""

    occurred_at_us: int
    type: str
    source: str
    violating: bool


@dataclass(frozen=True, slots=True)
class SubjectHistory:
    events_24h: int
    events_7d: int
    violations_30d: int
    distinct_sources_24h: int
    source_is_new: bool
    failed_logins_24h: int
    seconds_since_previous_event: float  # -1 when the subject has no earlier event

    def as_facts(self) -> dict[str, float]:
        """The policy service's `facts` map (source_is_new as 0 or 1)."""
        return {
            "events_24h": float(self.events_24h),
            "events_7d": float(self.events_7d),
            "violations_30d": float(self.violations_30d),
            "distinct_sources_24h": float(self.distinct_sources_24h),
            "source_is_new": 1.0 if self.source_is_new else 0.0,
            "failed_logins_24h": float(self.failed_logins_24h),
            "seconds_since_previous_event": self.seconds_since_previous_event,
        }


def subject_history(
    *,
    occurred_at_us: int,
    source: str,
    window: Iterable[PriorEvent],
    source_first_seen_us: Mapping[str, int],
    latest_before_window_us: int | None,
) -> SubjectHistory:
    """Aggregates of the event at `occurred_at_us` from `source`.

    `window` holds (at least) the subject's events of the 30 days before the event (older and later
    ones may be present: later ones are ignored, older ones only count for the previous event).
    `source_first_seen_us` maps each source to the subject's earliest event from it, and
    `latest_before_window_us` is the subject's latest event before the window, if any.
    """
    day_start, week_start, month_start = (occurred_at_us - span for span in (DAY_US, WEEK_US, MONTH_US))
    events_24h = events_7d = violations_30d = failed_logins_24h = 0
    sources_24h: set[str] = set()
    previous = latest_before_window_us
    for prior in window:
        moment = prior.occurred_at_us
        if moment >= occurred_at_us:
            continue
        if previous is None or moment > previous:
            previous = moment
        if moment < month_start:
            continue
        violations_30d += prior.violating
        if moment >= week_start:
            events_7d += 1
        if moment >= day_start:
            events_24h += 1
            sources_24h.add(prior.source)
            failed_logins_24h += prior.type in FAILED_LOGIN_TYPES
    if previous is not None and previous >= occurred_at_us:
        previous = None
    first_seen = source_first_seen_us.get(source)
    return SubjectHistory(
        events_24h=events_24h,
        events_7d=events_7d,
        violations_30d=violations_30d,
        distinct_sources_24h=len(sources_24h),
        source_is_new=first_seen is None or first_seen >= occurred_at_us,
        failed_logins_24h=failed_logins_24h,
        seconds_since_previous_event=(
            (occurred_at_us - previous) / MICROS_PER_SECOND if previous is not None else -1.0
        ),
    )
