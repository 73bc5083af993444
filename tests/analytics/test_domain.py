"""The pure parts: risk decay and score against hand-computed values, k-suppression, funnel stages,
percentiles, training figures and the fold plan of a batch."""

from __future__ import annotations

import math
from datetime import date

import pytest

from services.analytics.domain.anonymity import suppressed
from services.analytics.domain.facts import Fact, Violation, day_of_date, plan_fold
from services.analytics.domain.funnel import STAGE_BY_TYPE, PersonStages, Stage, build_funnel, percentile
from services.analytics.domain.risk import (
    ScoredEvent,
    combine,
    decayed_from,
    decayed_sum,
    factors,
    level_of,
    score_of,
    top_contributions,
    trend,
    weight,
)
from services.analytics.domain.training import Assignment, PersonAssignment, summarise
from services.runtime.risk_levels import RISK_LEVEL_THRESHOLDS

DAY_US = 86_400_000_000


def test_weight_halves_every_half_life() -> None:
    assert weight(0, 30.0) == 1.0
    assert weight(30, 30.0) == 0.5
    assert weight(60, 30.0) == 0.25
    assert weight(15, 30.0) == pytest.approx(1 / math.sqrt(2))
    assert weight(-30, 30.0) == 2.0  # a day after the one asked about


def test_score_of_a_decayed_sum_by_hand() -> None:
    # 0.9 thirty days ago and 0.5 today: S = 0.45 + 0.5 = 0.95; 100 * (1 - e^-0.95) = 61.32...
    today = 20_000
    total = decayed_sum([(today - 30, 0.9), (today, 0.5)], at_day=today, half_life_days=30.0)
    assert total == pytest.approx(0.95)
    assert score_of(total) == 61.3
    assert score_of(0.0) == 0.0
    assert score_of(10.0) == 100.0
    # Half-life 10 days: 0.8 twenty days ago weighs 0.2; 100 * (1 - e^-0.2) = 18.126...
    assert score_of(decayed_sum([(today - 20, 0.8)], at_day=today, half_life_days=10.0)) == 18.1


def test_a_kept_sum_combined_in_any_order_decays_like_the_sum_of_its_days() -> None:
    days = [(20_000, 0.4), (20_010, 0.7), (19_990, 0.2), (20_010, 0.1)]
    kept = (days[0][1], days[0][0], 1)
    for day, risk in days[1:]:  # out of order, as late facts arrive
        kept = combine(kept, (risk, day, 1), 30.0)
    total, ref_day, events = kept
    assert (ref_day, events) == (20_010, 4)
    for at_day in (20_010, 20_040, 20_100):
        by_hand = sum(risk * 2 ** (-(at_day - day) / 30) for day, risk in days)
        assert decayed_from(total, ref_day, at_day=at_day, half_life_days=30.0) == pytest.approx(by_hand)
        assert decayed_sum(days, at_day=at_day, half_life_days=30.0) == pytest.approx(by_hand)


@pytest.mark.parametrize(
    ("score", "level"), [(0.0, "low"), (24.9, "low"), (25.0, "moderate"), (61.3, "high"), (80.0, "critical")]
)
def test_levels_follow_the_shared_thresholds(score: float, level: str) -> None:
    assert level_of(score) == level
    assert dict((name, bound) for bound, name in RISK_LEVEL_THRESHOLDS)["high"] == 0.5


def test_top_events_and_factors_by_decayed_contribution() -> None:
    today = 20_000
    events = [
        ScoredEvent("e-old", "phishing.clicked", today - 60, 0.8),  # 0.2
        ScoredEvent("e-new", "login.failed", today, 0.3),  # 0.3
        ScoredEvent("e-mid", "phishing.clicked", today - 30, 0.5),  # 0.25
        ScoredEvent("e-zero", "phishing.clicked", today, 0.0),
    ]
    top = top_contributions(events, at_day=today, half_life_days=30.0)
    assert [(c.event_id, round(c.contribution, 6)) for c in top] == [
        ("e-new", 0.3),
        ("e-mid", 0.25),
        ("e-old", 0.2),
    ]
    found = factors(events, at_day=today, half_life_days=30.0)
    assert [(f.factor, round(f.contribution, 6), round(f.share, 6)) for f in found] == [
        ("type:phishing.clicked", 0.45, round(0.45 / 0.75, 6)),
        ("type:login.failed", 0.3, round(0.3 / 0.75, 6)),
    ]


def test_trend_is_the_score_at_the_end_of_each_of_twelve_iso_weeks() -> None:
    today = date(2026, 12, 2)  # a Wednesday of 2026-W49
    today_day = day_of_date(today)
    risk_day = day_of_date(date(2026, 11, 18))  # Wednesday of W47
    weeks = trend([(risk_day, 1.0)], today=today, today_day=today_day, half_life_days=30.0)
    assert len(weeks) == 12
    assert weeks[-1].week == "2026-W49" and weeks[0].week == "2026-W38"
    by_week = {w.week: w.score for w in weeks}
    assert by_week["2026-W46"] == 0.0  # before the event
    # W47 ends Sunday 2026-11-22, 4 days later; W48 on 11-29 (11 days); W49 is taken today (14 days).
    assert by_week["2026-W47"] == round(100 * (1 - math.exp(-(2 ** (-4 / 30)))), 1)
    assert by_week["2026-W48"] == round(100 * (1 - math.exp(-(2 ** (-11 / 30)))), 1)
    assert by_week["2026-W49"] == round(100 * (1 - math.exp(-(2 ** (-14 / 30)))), 1)


@pytest.mark.parametrize(
    ("people", "k", "hidden"), [(4, 5, True), (5, 5, False), (0, 1, True), (1, 1, False)]
)
def test_groups_smaller_than_k_are_suppressed(people: int, k: int, hidden: bool) -> None:
    assert suppressed(people, k=k) is hidden


def test_each_phishing_type_is_one_stage() -> None:
    assert STAGE_BY_TYPE == {
        "phishing.email_sent": Stage.SENT,
        "phishing.email_opened": Stage.OPENED,
        "phishing.clicked": Stage.CLICKED,
        "phishing.submitted_data": Stage.SUBMITTED,
        "phishing.reported": Stage.REPORTED,
    }
    # Every type the funnel knows is a type ingest declares, with a campaign_id dimension.
    from services.ingest.domain.minimisation import DETAIL_KEYS, DetailKind

    for kind in STAGE_BY_TYPE:
        assert DETAIL_KEYS[kind]["campaign_id"].kind is DetailKind.DIMENSION


def test_percentile_interpolates_like_numpy() -> None:
    values = [10.0, 20.0, 30.0, 40.0]
    assert percentile(values, 50) == 25.0
    assert percentile(values, 90) == pytest.approx(37.0)  # position 2.7: 30 + 0.7 * 10
    assert percentile([], 50) == 0.0
    assert percentile([7.0], 90) == 7.0


def test_funnel_of_people_with_a_small_department_suppressed() -> None:
    def person(
        department: str, sent: int, clicked: int | None = None, reported: int | None = None
    ) -> PersonStages:
        return PersonStages(
            department,
            {Stage.SENT: sent, Stage.CLICKED: clicked, Stage.REPORTED: reported, Stage.OPENED: clicked},
        )

    people = [person("sales", 0, clicked=60_000_000) for _ in range(3)]
    people += [person("it", 0, reported=120_000_000) for _ in range(5)]
    people.append(person("it", 0))
    funnel = build_funnel("c1", people, {Stage.SENT: 9, Stage.CLICKED: 4}, k=5)
    stages = {s.stage: (s.events, s.people) for s in funnel.stages}
    assert stages[Stage.SENT] == (9, 9)
    assert stages[Stage.CLICKED] == (4, 3)
    assert stages[Stage.REPORTED] == (0, 5)
    assert funnel.rates.click_rate == pytest.approx(3 / 9)
    assert funnel.rates.report_rate == pytest.approx(5 / 9)
    assert (funnel.time_to_click.count, funnel.time_to_click.median_seconds) == (3, 60.0)
    assert funnel.time_to_report.p90_seconds == 120.0
    departments = {d.department: d for d in funnel.departments}
    assert departments["sales"].suppressed and departments["sales"].people[Stage.CLICKED] == 0
    assert departments["sales"].rates.click_rate == 0.0
    assert not departments["it"].suppressed and departments["it"].people[Stage.REPORTED] == 5
    assert departments["it"].rates.report_rate == pytest.approx(5 / 6)


def test_training_figures_count_overdue_only_when_not_completed() -> None:
    rows = [
        PersonAssignment("m1", "it", f"p{i}", Assignment(completed=i < 3, overdue=i in (2, 3)))
        for i in range(5)
    ]
    rows.append(PersonAssignment("m2", "hr", "q", Assignment(completed=False, overdue=True)))
    summary = summarise(rows, k=5)
    assert (summary.total.assigned, summary.total.completed, summary.total.overdue) == (6, 3, 2)
    assert summary.total.completion_rate == 0.5
    assert dict(summary.modules)["m1"].overdue == 1
    departments = {d.department: d for d in summary.departments}
    assert departments["hr"].suppressed and departments["hr"].figures.assigned == 0
    assert not departments["it"].suppressed and departments["it"].figures.completion_rate == 0.6


def test_a_batch_folds_into_one_row_per_key() -> None:
    base = 20_000 * DAY_US
    facts = [
        Fact(
            event_id=f"e{i}",
            type="phishing.clicked",
            occurred_us=base + i,
            pseudonym="psn_a" if i < 2 else "psn_b",
            dimensions={"campaign_id": "c1", "template": "t", "department": "ignored"},
            department="it",
            scored=True,
            risk_score=0.5,
            violations=(Violation("p1", 3),),
        )
        for i in range(3)
    ]
    plan = plan_fold(facts, half_life_days=30.0, profiled=frozenset({"psn_a"}))
    assert plan.day_counts[(20_000, "phishing.clicked", "", "", "it")] == 3
    assert plan.day_counts[(20_000, "phishing.clicked", "campaign_id", "c1", "it")] == 3
    assert not any(key[2] == "department" for key in plan.day_counts)
    assert plan.stage_events[("c1", "clicked")] == 3
    assert plan.campaign_people[("c1", "psn_a")].times == {"clicked": base}
    assert plan.campaigns["c1"] == (base, base + 2)
    assert plan.violation_days[(20_000, "p1", 3, "it")] == 3
    assert plan.person_risks == {"psn_a": (1.0, 20_000, 2)}  # psn_b is not profiled
    assert plan.department_people == {("it", "psn_a"), ("it", "psn_b")}


def test_a_fact_without_a_subject_enters_no_per_person_rollup() -> None:
    system = Fact(
        event_id="s1",
        type="phishing.clicked",
        occurred_us=20_000 * DAY_US,
        pseudonym="",
        dimensions={"campaign_id": "c1", "training_module": "m"},
        scored=True,
        risk_score=0.9,
    )
    plan = plan_fold([system], half_life_days=30.0)
    assert plan.day_counts[(20_000, "phishing.clicked", "", "", "")] == 1
    assert not plan.campaign_people and not plan.person_risks and not plan.department_people
    assert not plan.campaigns  # a campaign is known from its people's events
