"""The analytics service in process, on SQLite and on a fresh PostgreSQL database: folding (with
duplicates and consent), forgetting, and every read, against figures the test computes itself from the
same synthetic programme."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import numpy as np
import pytest
from awareness.analytics.v1 import analytics_pb2

from services.runtime.consent import ConsentUnavailableError
from tests.analytics.harness import AUDITOR, Analytics, FakeGdpr, fact, fake_gdpr, running_analytics
from tests.grpc_errors import reason_of, rpc_error, violated_fields

TODAY = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
T0 = TODAY - timedelta(days=3) + timedelta(hours=9)
STAGE_TYPES = {
    analytics_pb2.FUNNEL_STAGE_SENT: "phishing.email_sent",
    analytics_pb2.FUNNEL_STAGE_OPENED: "phishing.email_opened",
    analytics_pb2.FUNNEL_STAGE_CLICKED: "phishing.clicked",
    analytics_pb2.FUNNEL_STAGE_SUBMITTED_DATA: "phishing.submitted_data",
    analytics_pb2.FUNNEL_STAGE_REPORTED: "phishing.reported",
}
IT = [f"psn_it{i}" for i in range(6)]
SALES = [f"psn_sales{i}" for i in range(3)]
DEPARTMENT = {**dict.fromkeys(IT, "it"), **dict.fromkeys(SALES, "sales")}


@dataclass
class Programme:
    """Facts of one small programme, and the ground truth they were made from."""

    facts: list[analytics_pb2.EventFact] = field(default_factory=list)
    # (type, pseudonym, seconds after T0) of each campaign event of c1
    campaign: list[tuple[str, str, int]] = field(default_factory=list)

    def add(self, kind: str, pseudonym: str, seconds: int, *, campaign: str = "c1", **extra: object) -> None:
        self.facts.append(
            fact(
                f"evt-{len(self.facts):04d}",
                kind,
                T0 + timedelta(seconds=seconds),
                pseudonym,
                dimensions={"campaign_id": campaign, "template": "invoice"},
                department=DEPARTMENT.get(pseudonym, ""),
                **extra,  # type: ignore[arg-type]
            )
        )
        if campaign == "c1":
            self.campaign.append((kind, pseudonym, seconds))


def programme() -> Programme:
    p = Programme()
    for person in IT + SALES:
        p.add("phishing.email_sent", person, 0)
    for person in (*IT[:4], SALES[0]):
        p.add("phishing.email_opened", person, 10)
    p.add("phishing.clicked", IT[0], 60, violations=[("no-click", 3)])
    p.add("phishing.clicked", IT[0], 900, violations=[("no-click", 3)])
    p.add("phishing.clicked", IT[1], 300, violations=[("no-click", 3)])
    p.add("phishing.clicked", SALES[0], 30, violations=[("no-click", 4)])
    p.add("phishing.submitted_data", IT[0], 100)
    p.add("phishing.reported", IT[4], 120)
    p.add("phishing.reported", IT[5], 600)
    p.add("phishing.reported", SALES[1], 3600)
    p.add("phishing.email_sent", IT[0], 86_400, campaign="c2")
    return p


@dataclass(frozen=True)
class Truth:
    events: dict[str, int]
    people: dict[str, int]
    sent: int
    click: list[float]
    report: list[float]


def expected_funnel(campaign: list[tuple[str, str, int]], people: set[str]) -> Truth:
    """Counts, rates and times computed straight from the ground truth, for the people still counted."""
    events = {kind: sum(1 for k, _, _ in campaign if k == kind) for kind in STAGE_TYPES.values()}
    first: dict[tuple[str, str], int] = {}
    for kind, person, seconds in campaign:
        if person in people:
            first[(kind, person)] = min(seconds, first.get((kind, person), seconds))
    reached = {kind: {p for (k, p) in first if k == kind} for kind in STAGE_TYPES.values()}
    sent = reached["phishing.email_sent"]

    def times(kind: str) -> list[float]:
        return [
            float(first[(kind, p)] - first[("phishing.email_sent", p)]) for p in reached[kind] if p in sent
        ]

    return Truth(
        events=events,
        people={kind: len(found) for kind, found in reached.items()},
        sent=len(sent),
        click=times("phishing.clicked"),
        report=times("phishing.reported"),
    )


@pytest.fixture
async def gdpr() -> AsyncIterator[tuple[FakeGdpr, str]]:
    async with fake_gdpr() as found:
        yield found


@pytest.fixture
async def analytics(
    tmp_path: Path, database_url: str, gdpr: tuple[FakeGdpr, str]
) -> AsyncIterator[Analytics]:
    async with running_analytics(tmp_path, database_url=database_url, gdpr_address=gdpr[1]) as served:
        yield served


def _day(moment: datetime) -> str:
    return moment.date().isoformat()


async def test_fold_counts_duplicates_once_and_the_funnel_matches(analytics: Analytics) -> None:
    p = programme()
    first = await analytics.feed.RecordEvents(analytics_pb2.RecordEventsRequest(facts=p.facts))
    assert (first.folded, first.duplicates, first.excluded) == (len(p.facts), 0, 0)
    again = await analytics.feed.RecordEvents(
        analytics_pb2.RecordEventsRequest(facts=[*p.facts[:5], p.facts[0]])
    )
    assert (again.folded, again.duplicates, again.excluded) == (0, 6, 0)

    funnel = await analytics.stub().GetCampaignFunnel(
        analytics_pb2.GetCampaignFunnelRequest(campaign_id="c1")
    )
    truth = expected_funnel(p.campaign, set(IT + SALES))
    stages = {STAGE_TYPES[s.stage]: (s.events, s.people) for s in funnel.stages}
    assert stages == {kind: (truth.events[kind], truth.people[kind]) for kind in STAGE_TYPES.values()}
    assert funnel.rates.click_rate == pytest.approx(truth.people["phishing.clicked"] / truth.sent)
    assert funnel.rates.report_rate == pytest.approx(3 / 9)
    for summary, seconds in (
        (funnel.time_to_click, truth.click),
        (funnel.time_to_report, truth.report),
    ):
        assert summary.count == len(seconds)
        assert summary.median_seconds == pytest.approx(float(np.percentile(seconds, 50)))
        assert summary.p90_seconds == pytest.approx(float(np.percentile(seconds, 90)))
    departments = {d.department: d for d in funnel.departments}
    assert departments["sales"].suppressed  # 3 people < k = 5
    assert all(s.people == 0 for s in departments["sales"].stages)
    it = departments["it"]
    assert not it.suppressed
    assert {STAGE_TYPES[s.stage]: s.people for s in it.stages}["phishing.clicked"] == 2
    assert it.rates.report_rate == pytest.approx(2 / 6)

    missing = await rpc_error(
        analytics.stub().GetCampaignFunnel(analytics_pb2.GetCampaignFunnelRequest(campaign_id="nope"))
    )
    assert missing.code() == grpc.StatusCode.NOT_FOUND


async def test_campaigns_page_newest_first(analytics: Analytics) -> None:
    await analytics.feed.RecordEvents(analytics_pb2.RecordEventsRequest(facts=programme().facts))
    stub = analytics.stub()
    page = await stub.ListCampaigns(analytics_pb2.ListCampaignsRequest(page_size=1))
    assert [c.campaign_id for c in page.campaigns] == ["c2"] and page.next_page_token
    rest = await stub.ListCampaigns(
        analytics_pb2.ListCampaignsRequest(page_size=1, page_token=page.next_page_token)
    )
    assert [(c.campaign_id, c.people_sent) for c in rest.campaigns] == [("c1", 9)]
    assert rest.campaigns[0].first_event_time.ToDatetime(UTC) == T0
    assert rest.campaigns[0].last_event_time.ToDatetime(UTC) == T0 + timedelta(seconds=3600)
    assert rest.next_page_token == ""


async def test_event_counts_and_violations_with_k_suppression(analytics: Analytics) -> None:
    p = programme()
    await analytics.feed.RecordEvents(analytics_pb2.RecordEventsRequest(facts=p.facts))
    stub = analytics.stub()
    window = {"start_day": _day(T0 - timedelta(days=1)), "end_day": _day(TODAY)}
    counts = await stub.QueryEventCounts(analytics_pb2.QueryEventCountsRequest(**window))
    expected: dict[tuple[str, str], int] = {}
    for item in p.facts:
        key = (_day(item.occurred_at.ToDatetime(UTC)), item.type)
        expected[key] = expected.get(key, 0) + 1
    assert {(c.day, c.type): c.count for c in counts.counts} == expected and not counts.suppressed

    by_campaign = await stub.QueryEventCounts(
        analytics_pb2.QueryEventCountsRequest(**window, dimension_key="campaign_id", dimension_value="c2")
    )
    assert [(c.day, c.type, c.count) for c in by_campaign.counts] == [
        (_day(T0 + timedelta(days=1)), "phishing.email_sent", 1)
    ]
    sales = await stub.QueryEventCounts(analytics_pb2.QueryEventCountsRequest(**window, department="sales"))
    assert sales.suppressed and not sales.counts
    it = await stub.QueryEventCounts(
        analytics_pb2.QueryEventCountsRequest(**window, department="it", types=["phishing.clicked"])
    )
    assert [(c.type, c.count) for c in it.counts] == [("phishing.clicked", 3)]

    violations = await stub.QueryViolations(analytics_pb2.QueryViolationsRequest(**window))
    assert {(v.policy, v.severity, v.count) for v in violations.counts} == {
        ("no-click", 3, 3),
        ("no-click", 4, 1),
    }
    hidden = await stub.QueryViolations(analytics_pb2.QueryViolationsRequest(**window, department="sales"))
    assert hidden.suppressed and not hidden.counts

    bad = await rpc_error(
        stub.QueryEventCounts(analytics_pb2.QueryEventCountsRequest(start_day="2026-13-01", end_day="x"))
    )
    assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT and "start_day" in violated_fields(bad)
    reversed_range = await rpc_error(
        stub.QueryViolations(
            analytics_pb2.QueryViolationsRequest(start_day="2026-02-01", end_day="2026-01-01")
        )
    )
    assert violated_fields(reversed_range) == {"end_day"}


async def test_training_summary(analytics: Analytics) -> None:
    completed, overdue = {IT[0], IT[1], IT[2]}, {IT[2], IT[3], SALES[0]}
    facts = []
    for person in IT + SALES:
        facts.append(("training.assigned", person))
        if person in completed:
            facts.append(("training.completed", person))
        if person in overdue:
            facts.append(("training.overdue", person))
    await analytics.feed.RecordEvents(
        analytics_pb2.RecordEventsRequest(
            facts=[
                fact(
                    f"tr-{i}",
                    kind,
                    T0 + timedelta(minutes=i),
                    person,
                    department=DEPARTMENT[person],
                    dimensions={"training_module": "phish-101"},
                )
                for i, (kind, person) in enumerate(facts)
            ]
        )
    )
    summary = await analytics.stub().GetTrainingSummary(analytics_pb2.GetTrainingSummaryRequest())
    assigned = len(IT + SALES)
    still_overdue = len(overdue - completed)
    assert (summary.total.assigned, summary.total.completed, summary.total.overdue) == (
        assigned,
        3,
        still_overdue,
    )
    assert summary.total.completion_rate == pytest.approx(3 / assigned)
    assert summary.total.overdue_rate == pytest.approx(still_overdue / assigned)
    assert [m.training_module for m in summary.modules] == ["phish-101"]
    departments = {d.department: d for d in summary.departments}
    assert departments["sales"].suppressed and departments["sales"].figures.assigned == 0
    assert departments["it"].figures.completion_rate == pytest.approx(3 / 6)
    other = await analytics.stub().GetTrainingSummary(
        analytics_pb2.GetTrainingSummaryRequest(training_module="none")
    )
    assert other.total.assigned == 0


def _score(decayed: float) -> float:
    return round(100 * (1 - math.exp(-decayed)), 1)


async def test_risk_scores_decay_and_rank(analytics: Analytics, gdpr: tuple[FakeGdpr, str]) -> None:
    noon = TODAY + timedelta(hours=12) if datetime.now(UTC) >= TODAY + timedelta(hours=12) else TODAY
    facts = [
        fact("r-1", "phishing.clicked", noon - timedelta(days=30), "psn_r1", risk=0.9),
        fact("r-2", "login.failed", noon, "psn_r1", risk=0.5),
        fact("r-3", "login.failed", noon - timedelta(days=1), "psn_r1"),  # not scored: counted, adds nothing
        fact("r-4", "phishing.clicked", noon, "psn_r2", risk=0.2),
        fact("r-5", "phishing.clicked", noon, "psn_r3", risk=0.99),  # objected to profiling
    ]
    gdpr[0].withdrawn["profiling"].add("psn_r3")
    result = await analytics.feed.RecordEvents(analytics_pb2.RecordEventsRequest(facts=facts))
    assert (result.folded, result.excluded) == (5, 0)  # profiling objections are still counted

    risk = await analytics.stub().GetSubjectRisk(
        analytics_pb2.GetSubjectRiskRequest(subject_pseudonym="psn_r1")
    )
    assert risk.score == _score(0.9 * 0.5 + 0.5) == 61.3
    assert risk.level == analytics_pb2.RISK_LEVEL_HIGH
    assert risk.event_count == 3
    assert [(e.event_id, round(e.contribution, 6)) for e in risk.top_events] == [("r-2", 0.5), ("r-1", 0.45)]
    assert [(f.factor, round(f.share, 6)) for f in risk.factors] == [
        ("type:login.failed", round(0.5 / 0.95, 6)),
        ("type:phishing.clicked", round(0.45 / 0.95, 6)),
    ]
    assert len(risk.trend) == 12 and risk.trend[-1].score == risk.score
    assert risk.trend[0].score == 0.0  # eleven weeks back: before the first event
    objected = await rpc_error(
        analytics.stub().GetSubjectRisk(analytics_pb2.GetSubjectRiskRequest(subject_pseudonym="psn_r3"))
    )
    assert objected.code() == grpc.StatusCode.NOT_FOUND

    listed = await analytics.stub().ListSubjectRisks(analytics_pb2.ListSubjectRisksRequest(page_size=1))
    assert [(r.subject_pseudonym, r.score) for r in listed.subject_risks] == [("psn_r1", 61.3)]
    rest = await analytics.stub().ListSubjectRisks(
        analytics_pb2.ListSubjectRisksRequest(page_size=1, page_token=listed.next_page_token)
    )
    assert [(r.subject_pseudonym, r.score) for r in rest.subject_risks] == [("psn_r2", _score(0.2))]
    assert rest.next_page_token == ""  # psn_r3 is left out

    denied = await rpc_error(
        analytics.stub(AUDITOR).GetSubjectRisk(
            analytics_pb2.GetSubjectRiskRequest(subject_pseudonym="psn_r1")
        )
    )
    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
    assert (await analytics.stub(AUDITOR).GetTrainingSummary(analytics_pb2.GetTrainingSummaryRequest())).total


async def test_objecting_to_analytics_excludes_new_facts_and_drops_per_person_rows(
    analytics: Analytics, gdpr: tuple[FakeGdpr, str]
) -> None:
    p = programme()
    await analytics.feed.RecordEvents(analytics_pb2.RecordEventsRequest(facts=p.facts))
    gdpr[0].withdrawn["analytics"].add(IT[0])
    late = [
        fact("late-1", "phishing.reported", T0 + timedelta(hours=2), IT[0], dimensions={"campaign_id": "c1"}),
        fact(
            "late-2",
            "phishing.reported",
            T0 + timedelta(hours=2),
            IT[1],
            dimensions={"campaign_id": "c1"},
            department="it",
        ),
    ]
    result = await analytics.feed.RecordEvents(analytics_pb2.RecordEventsRequest(facts=late))
    assert (result.folded, result.duplicates, result.excluded) == (1, 0, 1)

    funnel = await analytics.stub().GetCampaignFunnel(
        analytics_pb2.GetCampaignFunnelRequest(campaign_id="c1")
    )
    truth = expected_funnel([*p.campaign, ("phishing.reported", IT[1], 7200)], set(IT[1:] + SALES))
    assert {STAGE_TYPES[s.stage]: s.people for s in funnel.stages} == truth.people
    # Event counts already folded stay (anonymous totals); the excluded fact was never counted.
    assert {STAGE_TYPES[s.stage]: s.events for s in funnel.stages}["phishing.reported"] == 4


async def test_the_consent_sweep_honours_objections_of_people_who_send_nothing_more(
    analytics: Analytics, gdpr: tuple[FakeGdpr, str]
) -> None:
    p = programme()
    await analytics.feed.RecordEvents(analytics_pb2.RecordEventsRequest(facts=p.facts))
    scored = fact("s-1", "phishing.clicked", T0, SALES[0], risk=0.8, dimensions={"campaign_id": "c9"})
    await analytics.feed.RecordEvents(analytics_pb2.RecordEventsRequest(facts=[scored]))
    assert await analytics.service.operations.sweep_consent() == 0  # nobody objected: nothing changes
    gdpr[0].withdrawn["analytics"].add(IT[0])
    gdpr[0].withdrawn["profiling"].add(SALES[0])

    assert await analytics.service.operations.sweep_consent() == 1
    funnel = await analytics.stub().GetCampaignFunnel(
        analytics_pb2.GetCampaignFunnelRequest(campaign_id="c1")
    )
    truth = expected_funnel(p.campaign, set(IT[1:] + SALES))
    assert {STAGE_TYPES[s.stage]: s.people for s in funnel.stages} == truth.people
    gone = await rpc_error(
        analytics.stub().GetSubjectRisk(analytics_pb2.GetSubjectRiskRequest(subject_pseudonym=SALES[0]))
    )
    assert gone.code() == grpc.StatusCode.NOT_FOUND  # profiling: the risk goes, the counts stay
    c9 = await analytics.stub().GetCampaignFunnel(analytics_pb2.GetCampaignFunnelRequest(campaign_id="c9"))
    assert {STAGE_TYPES[s.stage]: s.people for s in c9.stages}["phishing.clicked"] == 1
    assert await analytics.service.operations.sweep_consent() == 0  # already gone

    gdpr[0].down = True
    with pytest.raises(ConsentUnavailableError):
        await analytics.service.operations.sweep_consent()


async def test_forget_subjects_removes_per_person_rows(analytics: Analytics) -> None:
    p = programme()
    p.facts.append(fact("risk-it0", "phishing.clicked", TODAY, IT[0], risk=0.7))
    await analytics.feed.RecordEvents(analytics_pb2.RecordEventsRequest(facts=p.facts))
    forgotten = await analytics.feed.ForgetSubjects(
        analytics_pb2.ForgetSubjectsRequest(subject_pseudonyms=[IT[0], "psn_unknown"])
    )
    assert forgotten.forgotten == 1
    funnel = await analytics.stub().GetCampaignFunnel(
        analytics_pb2.GetCampaignFunnelRequest(campaign_id="c1")
    )
    truth = expected_funnel(p.campaign, set(IT[1:] + SALES))
    assert {STAGE_TYPES[s.stage]: s.people for s in funnel.stages} == truth.people
    assert funnel.time_to_click.count == len(truth.click)
    gone = await rpc_error(
        analytics.stub().GetSubjectRisk(analytics_pb2.GetSubjectRiskRequest(subject_pseudonym=IT[0]))
    )
    assert gone.code() == grpc.StatusCode.NOT_FOUND
    again = await analytics.feed.ForgetSubjects(
        analytics_pb2.ForgetSubjectsRequest(subject_pseudonyms=[IT[0]])
    )
    assert again.forgotten == 0
    # The idempotency index still holds the event (blanked): a resend is a duplicate, not a new fact.
    resent = await analytics.feed.RecordEvents(analytics_pb2.RecordEventsRequest(facts=p.facts[:1]))
    assert (resent.folded, resent.duplicates) == (0, 1)


async def test_the_feed_is_internal_and_checked(analytics: Analytics, gdpr: tuple[FakeGdpr, str]) -> None:
    facts = programme().facts[:2]
    denied = await rpc_error(analytics.stub().RecordEvents(analytics_pb2.RecordEventsRequest(facts=facts)))
    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
    empty = await rpc_error(analytics.feed.RecordEvents(analytics_pb2.RecordEventsRequest()))
    assert reason_of(empty) == "INVALID_BATCH_SIZE"
    broken = analytics_pb2.EventFact(event_id="x", type="phishing.clicked", subject_pseudonym="psn_a")
    invalid = await rpc_error(analytics.feed.RecordEvents(analytics_pb2.RecordEventsRequest(facts=[broken])))
    assert violated_fields(invalid) == {"facts[0].occurred_at"}
    gdpr[0].down = True
    unavailable = await rpc_error(analytics.feed.RecordEvents(analytics_pb2.RecordEventsRequest(facts=facts)))
    assert (
        unavailable.code() == grpc.StatusCode.UNAVAILABLE and reason_of(unavailable) == "CONSENT_UNAVAILABLE"
    )


async def test_an_event_without_a_subject_is_counted_but_is_nobodys(
    analytics: Analytics, gdpr: tuple[FakeGdpr, str]
) -> None:
    system = fact("sys-1", "audit.action", T0, "", dimensions={"campaign_id": "c9"})
    result = await analytics.feed.RecordEvents(analytics_pb2.RecordEventsRequest(facts=[system]))
    assert (result.folded, result.excluded) == (1, 0)
    assert gdpr[0].calls == []  # no subject, no consent to ask
    counts = await analytics.stub().QueryEventCounts(
        analytics_pb2.QueryEventCountsRequest(start_day=_day(T0), end_day=_day(T0))
    )
    assert [(c.type, c.count) for c in counts.counts] == [("audit.action", 1)]
    listed = await analytics.stub().ListSubjectRisks(analytics_pb2.ListSubjectRisksRequest())
    assert list(listed.subject_risks) == []


async def test_a_new_half_life_rebuilds_the_ranking_at_start(
    tmp_path: Path, database_url: str, gdpr: tuple[FakeGdpr, str]
) -> None:
    thirty_days_ago = TODAY - timedelta(days=30)
    facts = [fact("h-1", "phishing.clicked", thirty_days_ago, "psn_h", risk=0.8)]
    async with running_analytics(tmp_path, database_url=database_url, gdpr_address=gdpr[1]) as first:
        await first.feed.RecordEvents(analytics_pb2.RecordEventsRequest(facts=facts))
        listed = await first.stub().ListSubjectRisks(analytics_pb2.ListSubjectRisksRequest())
        assert [r.score for r in listed.subject_risks] == [_score(0.8 * 0.5)]
    async with running_analytics(
        tmp_path,
        database_url=database_url,
        gdpr_address=gdpr[1],
        AWARENESS_ANALYTICS_RISK_HALF_LIFE_DAYS="10",
    ) as second:
        listed = await second.stub().ListSubjectRisks(analytics_pb2.ListSubjectRisksRequest())
        assert [r.score for r in listed.subject_risks] == [_score(0.8 * 2 ** (-30 / 10))]
        risk = await second.stub().GetSubjectRisk(
            analytics_pb2.GetSubjectRiskRequest(subject_pseudonym="psn_h")
        )
        assert risk.score == listed.subject_risks[0].score
