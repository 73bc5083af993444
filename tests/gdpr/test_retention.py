from __future__ import annotations

import itertools
import random
from datetime import UTC, date, datetime, timedelta

import pytest

from services.gdpr.domain.retention import (
    DEFAULT_RETENTION_DAYS,
    PeriodRef,
    RetentionRules,
    expired_periods,
    retained_until,
)

CLICKED = "phishing.link_clicked"
TRAINED = "training.completed"
USB = "device.usb_inserted"

# Shortened rules: clicks kept 30 days, trainings 365, everything else the 7-year default.
RULES = RetentionRules(days_by_event_type={CLICKED: 30, TRAINED: 365})


def _plus_calendar_years(day: date, years: int) -> date:
    try:
        return day.replace(year=day.year + years)
    except ValueError:  # 29 February into a common year: the next day
        return date(day.year + years, 3, 1)


def test_default_never_keeps_less_than_seven_calendar_years_and_at_most_one_day_more() -> None:
    day = date(1999, 1, 1)
    while day < date(2041, 1, 1):
        seven_years_later = _plus_calendar_years(day, 7)
        slack = (day + timedelta(days=DEFAULT_RETENTION_DAYS)) - seven_years_later
        assert timedelta(0) <= slack <= timedelta(days=1), day
        day += timedelta(days=1)


def test_rules_pick_type_specific_or_default_and_longest_in_period() -> None:
    assert RULES.days_for(CLICKED) == 30
    assert RULES.days_for(USB) == DEFAULT_RETENTION_DAYS
    assert RULES.days_for_period({CLICKED, TRAINED}) == 365
    assert RULES.days_for_period({CLICKED, USB}) == DEFAULT_RETENTION_DAYS
    # Nothing recorded about the key: keep it as long as any rule could need.
    assert RetentionRules(default_days=10, days_by_event_type={CLICKED: 90}).days_for_period(()) == 90


def test_retained_until_counts_from_period_end() -> None:
    ref = PeriodRef(pseudonym="psn_a", period="2026-01", event_types=frozenset({CLICKED}))
    assert retained_until(ref, rules=RULES) == datetime(2026, 2, 1, tzinfo=UTC) + timedelta(days=30)
    yearly = PeriodRef(pseudonym="psn_a", period="2026", event_types=frozenset({CLICKED}))
    assert retained_until(yearly, rules=RULES) == datetime(2027, 1, 1, tzinfo=UTC) + timedelta(days=30)


def _periods() -> list[PeriodRef]:
    return [
        # Clicks only, January: ends 1 Feb, +30 days -> 3 March 2026. Expired by 1 June.
        PeriodRef(pseudonym="psn_alice", period="2026-01", event_types=frozenset({CLICKED})),
        # Mixed clicks and a training in February: the training's 365 days win -> 1 March 2027. Kept.
        PeriodRef(pseudonym="psn_alice", period="2026-02", event_types=frozenset({CLICKED, TRAINED})),
        # Clicks only, but May: ends 1 June, +30 -> 1 July. Kept on 1 June.
        PeriodRef(pseudonym="psn_alice", period="2026-05", event_types=frozenset({CLICKED})),
        # Training only in 2025-03: ends 1 April 2025, +365 -> 1 April 2026. Expired.
        PeriodRef(pseudonym="psn_bob", period="2025-03", event_types=frozenset({TRAINED})),
        # A USB event alongside a click: 7-year default wins. Kept.
        PeriodRef(pseudonym="psn_bob", period="2026-01", event_types=frozenset({CLICKED, USB})),
        # A subject whose only period is clicks in March: ends 1 April, +30 -> 1 May. Expired.
        PeriodRef(pseudonym="psn_carol", period="2026-03", event_types=frozenset({CLICKED})),
    ]


def test_expired_periods_picks_exactly_the_expected_ones() -> None:
    now = datetime(2026, 6, 1, 12, tzinfo=UTC)
    expired = expired_periods(_periods(), rules=RULES, now=now)
    assert [(ref.pseudonym, ref.period) for ref in expired] == [
        ("psn_alice", "2026-01"),
        ("psn_bob", "2025-03"),
        ("psn_carol", "2026-03"),
    ]


def test_mixed_types_period_waits_for_the_longest_rule() -> None:
    mixed = PeriodRef(pseudonym="psn_alice", period="2026-02", event_types=frozenset({CLICKED, TRAINED}))
    clicks_only = PeriodRef(pseudonym="psn_alice", period="2026-02", event_types=frozenset({CLICKED}))
    after_click_retention = datetime(2026, 3, 1, tzinfo=UTC) + timedelta(days=31)
    assert expired_periods([clicks_only], rules=RULES, now=after_click_retention) == [clicks_only]
    assert expired_periods([mixed], rules=RULES, now=after_click_retention) == []
    after_training_retention = datetime(2026, 3, 1, tzinfo=UTC) + timedelta(days=366)
    assert expired_periods([mixed], rules=RULES, now=after_training_retention) == [mixed]


def test_boundary_is_strictly_after_retention() -> None:
    ref = PeriodRef(pseudonym="psn_a", period="2026-01", event_types=frozenset({CLICKED}))
    limit = retained_until(ref, rules=RULES)
    assert expired_periods([ref], rules=RULES, now=limit) == []
    assert expired_periods([ref], rules=RULES, now=limit + timedelta(microseconds=1)) == [ref]


def test_default_seven_years_with_monthly_periods() -> None:
    refs = [
        PeriodRef(pseudonym="psn_a", period=f"2020-{m:02d}", event_types=frozenset({USB}))
        for m in range(1, 13)
    ]
    now = datetime(2027, 6, 1, tzinfo=UTC)
    # 2020-04 ends 1 May 2020; seven years (one leap day, 2024) are 2556 days, so it is kept until
    # 2 May 2027: gone by 1 June. 2020-05 ends 1 June 2020 and is kept until 2 June 2027: still here.
    expired = expired_periods(refs, rules=RetentionRules(), now=now)
    assert [ref.period for ref in expired] == ["2020-01", "2020-02", "2020-03", "2020-04"]


def test_result_is_deterministic_and_independent_of_input_order() -> None:
    now = datetime(2026, 6, 1, 12, tzinfo=UTC)
    reference = expired_periods(_periods(), rules=RULES, now=now)
    shuffler = random.Random(7)
    for _ in range(20):
        shuffled = _periods()
        shuffler.shuffle(shuffled)
        assert expired_periods(iter(shuffled), rules=RULES, now=now) == reference
    for permutation in itertools.islice(itertools.permutations(_periods()), 50):
        assert expired_periods(permutation, rules=RULES, now=now) == reference


def test_rules_are_frozen_against_caller_mutation() -> None:
    overrides = {CLICKED: 30}
    rules = RetentionRules(days_by_event_type=overrides)
    overrides[CLICKED] = 9999
    assert rules.days_for(CLICKED) == 30


@pytest.mark.parametrize("bad", [-1, 1.5, True])
def test_rules_reject_invalid_days(bad: object) -> None:
    with pytest.raises(ValueError):
        RetentionRules(default_days=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        RetentionRules(days_by_event_type={CLICKED: bad})  # type: ignore[dict-item]


def test_naive_now_is_rejected() -> None:
    with pytest.raises(ValueError):
        expired_periods(_periods(), rules=RULES, now=datetime(2026, 6, 1))
