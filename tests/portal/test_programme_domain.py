"""The programme pages' domain (services/portal/domain/programme.py): funnel rows, department
suppression, durations, ISO weeks, weekly rates, violations per policy and the rate chart; and how a
part of a page that cannot answer shows "unavailable" alone (services/portal/api.py, part)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import date
from typing import TypeVar, cast

import grpc
import pytest
from awareness.analytics.v1 import analytics_pb2

from services.portal.api import part
from services.portal.domain import programme
from services.portal.service import Person, Services
from services.runtime.errors import NotFoundError, PermissionDeniedError, UnavailableError

T = TypeVar("T")

Stage = analytics_pb2.FunnelStage


def test_stage_rows_follow_the_funnel_and_count_missing_stages_as_zero() -> None:
    stages = [
        analytics_pb2.StageCount(stage=Stage.FUNNEL_STAGE_REPORTED, events=3, people=2),
        analytics_pb2.StageCount(stage=Stage.FUNNEL_STAGE_SENT, events=8, people=8),
        analytics_pb2.StageCount(stage=Stage.FUNNEL_STAGE_CLICKED, events=4, people=3),
    ]
    rates = analytics_pb2.FunnelRates(click_rate=0.375, report_rate=0.25)
    rows = programme.stage_rows(stages, rates)
    assert [(row.stage, row.people, row.events, row.rate) for row in rows] == [
        ("sent", 8, 8, None),
        ("opened", 0, 0, 0.0),
        ("clicked", 3, 4, 0.375),
        ("submitted data", 0, 0, 0.0),
        ("reported", 2, 3, 0.25),
    ]


def test_a_suppressed_department_carries_no_figure() -> None:
    departments = [
        analytics_pb2.DepartmentFunnel(
            department="Finance",
            stages=[analytics_pb2.StageCount(stage=Stage.FUNNEL_STAGE_SENT, people=6)],
            rates=analytics_pb2.FunnelRates(click_rate=0.5),
        ),
        analytics_pb2.DepartmentFunnel(department="Legal", suppressed=True),
        analytics_pb2.DepartmentFunnel(department="", suppressed=True),
    ]
    rows = programme.department_rows(departments)
    assert rows[0].people == (6, 0, 0, 0, 0) and rows[0].click_rate == 0.5
    assert (rows[1].department, rows[1].suppressed, rows[1].people) == ("Legal", True, ())
    assert rows[2].department == programme.UNKNOWN_DEPARTMENT


def test_durations_read_as_people_say_them() -> None:
    assert programme.duration(45) == "45 s"
    assert programme.duration(270) == "4 min 30 s"
    assert programme.duration(600) == "10 min"
    assert programme.duration(7500) == "2 h 5 min"
    assert programme.duration(3 * 86400 + 4 * 3600 + 59) == "3 d 4 h"
    assert programme.percent(0.125) == "12.5 %"


def test_trend_weeks_are_twelve_iso_weeks_ending_with_the_current_one() -> None:
    # 2027-01-03 is a Sunday in ISO week 2026-W53.
    weeks = programme.trend_weeks(date(2027, 1, 3))
    assert len(weeks) == 12
    assert weeks[-1] == ("2026-W53", date(2026, 12, 28), date(2027, 1, 3))
    assert weeks[0] == ("2026-W42", date(2026, 10, 12), date(2026, 10, 18))
    assert all(monday.isoweekday() == 1 for _, monday, _ in weeks)


def test_weekly_rates_divide_the_weeks_clicks_and_reports_by_its_sendings() -> None:
    weeks = programme.trend_weeks(date(2026, 12, 2), weeks=2)  # 2026-W49 (running) and W48
    counts = [
        analytics_pb2.EventCount(day="2026-11-23", type="phishing.email_sent", count=10),
        analytics_pb2.EventCount(day="2026-11-24", type="phishing.clicked", count=2),
        analytics_pb2.EventCount(day="2026-11-29", type="phishing.reported", count=3),
        analytics_pb2.EventCount(day="2026-12-01", type="phishing.clicked", count=1),
        analytics_pb2.EventCount(day="2026-11-24", type="login.failed", count=99),
        analytics_pb2.EventCount(day="2026-11-01", type="phishing.email_sent", count=50),
    ]
    w48, w49 = programme.weekly_rates(counts, weeks)
    assert (w48.week, w48.sent, w48.clicked, w48.reported) == ("2026-W48", 10, 2, 3)
    assert (w48.click_rate, w48.report_rate) == (0.2, 0.3)
    # A click without a sending that week: no rate rather than a division by zero.
    assert (w49.week, w49.clicked, w49.click_rate, w49.report_rate) == ("2026-W49", 1, None, None)
    chart = programme.rates_chart([w48, w49])
    assert "2026-W48: click rate 20.0 %, report rate 30.0 %" in chart.summary
    assert "2026-W49: click rate none, report rate none" in chart.summary
    assert len(chart.rects) == 2 and not chart.empty
    assert [tick.label for tick in chart.ticks] == ["0 %", "50 %", "100 %"]


def test_violations_are_summed_per_policy_most_violated_first() -> None:
    counts = [
        analytics_pb2.ViolationCount(day="2026-12-01", policy="usb", severity=3, count=2),
        analytics_pb2.ViolationCount(day="2026-12-02", policy="usb", severity=5, count=1),
        analytics_pb2.ViolationCount(day="2026-12-02", policy="mfa", severity=4, count=4),
        analytics_pb2.ViolationCount(day="2026-12-03", policy="usb", severity=3, count=1),
    ]
    rows = programme.violations_by_policy(counts)
    assert [(row.policy, row.total, row.by_severity) for row in rows] == [
        ("mfa", 4, (("high", 4),)),
        ("usb", 4, (("critical", 1), ("medium", 3))),
    ]
    assert programme.severity_name(9) == "9"


class _Services:
    """As the portal's Services, for a part of a page: the call made as the person, nothing more."""

    async def as_person(self, person: object, call: Callable[[], Awaitable[T]]) -> T:
        return await call()


def _failing(error: Exception) -> Callable[[], Awaitable[str]]:
    async def call() -> str:
        raise error

    return call


def test_a_part_that_cannot_answer_says_so_and_a_refusal_refuses_the_page() -> None:
    services = cast(Services, _Services())
    person = cast(Person, None)

    async def answer() -> str:
        return "figures"

    async def parts() -> list[str]:
        return [
            await part(services, person, answer),
            await part(services, person, _failing(UnavailableError("analytics is down"))),
        ]

    assert asyncio.run(parts()) == ["figures", "unavailable (UNAVAILABLE)"]
    with pytest.raises(PermissionDeniedError):
        asyncio.run(part(services, person, _failing(PermissionDeniedError("no analytics:read"))))
    # A page about one thing answers 404 when that thing is missing, not "unavailable".
    with pytest.raises(NotFoundError):
        asyncio.run(
            part(
                services,
                person,
                _failing(NotFoundError("no such model")),
                whole_page=(grpc.StatusCode.NOT_FOUND,),
            )
        )
