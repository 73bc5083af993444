"""A seeded synthetic awareness programme through the whole suite (issue 20, "Done when").

`awareness up` runs every service as processes; everything goes in and comes out through the
gateway's HTTP routes with API keys, as an operator's tools would: the directory (2,000 people,
some departments smaller than k), then 13 weeks of events (12 phishing campaigns, three training
modules) in batches of at most 500, then the analytics figures. The expected figures are computed
here from the generated events alone (never with the service's code) and compared with what
analytics folded: every campaign's funnel (events and people per stage, rates, time to click and to
report, departments suppressed exactly below k people), the training summary and the event counts.

Then what docs/data-minimisation.md and the analytics proto promise for consent and erasure:
- an erased person leaves every per-person figure (people per stage, rates, times, training,
  department sizes, risk), while the anonymous event counts keep their events; an event for the same
  identifier afterwards belongs to a new pseudonym, not to the erased one;
- a person who objected to `analytics` is counted nowhere from then on;
- a person who objected to `profiling` has no risk, but is still in the aggregates.

Pseudonyms (needed for the risk routes) are asked of gdpr with ingest's own certificate, as ingest
does when it appends; GetSubjectKeys is internal and not routed by the gateway.
"""

from __future__ import annotations

import math
import random
import statistics
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import grpc
import httpx
import pytest
from awareness.analytics.v1 import analytics_pb2
from awareness.gdpr.v1 import gdpr_pb2, gdpr_pb2_grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from services.runtime.config import load_settings
from services.runtime.identity import channel_options
from services.runtime.timestamps import to_timestamp
from tests.support.suite import Backend, UpSuite, awareness_up

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

M = TypeVar("M", bound=Message)

SEED = 20
K = 5
PEOPLE = 2_000
WEEKS = 13
CAMPAIGNS = 12
BATCH = 500
FOLD_TIMEOUT_SECONDS = 240.0
Stage = analytics_pb2.FunnelStage
STAGE_OF_TYPE: dict[str, int] = {
    "phishing.email_sent": Stage.FUNNEL_STAGE_SENT,
    "phishing.email_opened": Stage.FUNNEL_STAGE_OPENED,
    "phishing.clicked": Stage.FUNNEL_STAGE_CLICKED,
    "phishing.submitted_data": Stage.FUNNEL_STAGE_SUBMITTED_DATA,
    "phishing.reported": Stage.FUNNEL_STAGE_REPORTED,
}
STAGES: tuple[int, ...] = tuple(STAGE_OF_TYPE.values())
# Departments and their sizes; the last three are smaller than k and must never be shown.
DEPARTMENTS = {
    "Engineering": 560,
    "Sales": 400,
    "Operations": 330,
    "Finance": 240,
    "Marketing": 200,
    "People": 120,
    "IT": 126,
    "Legal": 4,
    "Board": 3,
    "Internal Audit": 2,
}
UNLISTED = PEOPLE - sum(DEPARTMENTS.values())  # people the directory does not know: department ""
MODULES = ("phishing-basics", "password-hygiene", "data-handling")
TEMPLATES = ("parcel-delivery", "invoice-overdue", "password-expiry", "shared-document", "hr-bonus")


# --- the programme ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Event:
    event_id: str
    type: str
    person: str  # a person key of the model: the identifier, with "#2" once erased and seen again
    at: datetime
    dimensions: dict[str, str]


@dataclass
class Programme:
    """The generated people and events, and what the suite was told since (the model the expected
    figures are computed from)."""

    now: datetime
    start: datetime
    department: dict[str, str]  # person key -> department ("" when the directory does not know them)
    events: list[Event] = field(default_factory=list)
    # Events analytics folded: every event, minus those of a person after their analytics objection.
    folded: list[Event] = field(default_factory=list)
    # People whose per-person rows analytics forgot (erased, or objected to analytics).
    forgotten: set[str] = field(default_factory=set)

    @property
    def per_person(self) -> list[Event]:
        """Folded events still linked to a person: the source of every unique-people figure."""
        return [event for event in self.folded if event.person not in self.forgotten]


def subject(index: int) -> str:
    return f"person{index:04d}@corp.example"


def seconds_after(rng: random.Random, median_minutes: float, sigma: float = 1.0) -> timedelta:
    """A log-normally distributed delay (whole seconds, at least one), as human reaction times are."""
    return timedelta(seconds=max(1, round(rng.lognormvariate(math.log(median_minutes * 60), sigma))))


def generate(seed: int, now: datetime) -> Programme:
    rng = random.Random(seed)
    start = (now - timedelta(weeks=WEEKS)).replace(hour=8, minute=0, second=0, microsecond=0)
    people = [subject(i) for i in range(PEOPLE)]
    departments = [name for name, size in DEPARTMENTS.items() for _ in range(size)] + [""] * UNLISTED
    rng.shuffle(departments)
    programme = Programme(now=now, start=start, department=dict(zip(people, departments, strict=True)))
    latest = now - timedelta(hours=1)

    def add(kind: str, person: str, at: datetime, dimensions: dict[str, str]) -> None:
        if at <= latest:
            event_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            programme.events.append(Event(event_id, kind, person, at, dimensions))

    for number in range(CAMPAIGNS):
        campaign_id = f"cmp-{number + 1:02d}"
        template = TEMPLATES[number % len(TEMPLATES)]
        dimensions = {"campaign_id": campaign_id, "template": template, "campaign": f"Campaign {number + 1}"}
        launch = start + timedelta(weeks=number, days=rng.randrange(0, 3), hours=rng.randrange(0, 6))
        # The first campaign is the baseline sent to everyone; later ones to a fifth each.
        targets = people if number == 0 else rng.sample(people, PEOPLE // 5)
        # People learn: fewer clicks and more reports as the programme goes on.
        click_p = 0.20 - 0.01 * number
        report_p = 0.12 + 0.02 * number
        for person in targets:
            sent = launch + timedelta(seconds=rng.randrange(0, 3600))
            add("phishing.email_sent", person, sent, dimensions)
            if rng.random() < 0.6:
                opened = sent + seconds_after(rng, 90, 1.2)
                add("phishing.email_opened", person, opened, dimensions)
                if rng.random() < 0.15:  # opened again later
                    add("phishing.email_opened", person, opened + seconds_after(rng, 240), dimensions)
                if rng.random() < click_p / 0.6:
                    clicked = opened + seconds_after(rng, 4, 0.8)
                    add("phishing.clicked", person, clicked, dimensions)
                    if rng.random() < 0.1:  # clicked twice
                        add("phishing.clicked", person, clicked + seconds_after(rng, 2), dimensions)
                    if rng.random() < 0.35:
                        add("phishing.submitted_data", person, clicked + seconds_after(rng, 1.5), dimensions)
            if rng.random() < report_p:
                reported = sent + seconds_after(rng, 45, 1.1)
                add(
                    "phishing.reported",
                    person,
                    reported,
                    {**dimensions, "report_channel": rng.choice(("button", "forward")), "simulated": "true"},
                )

    for number, module in enumerate(MODULES):
        assigned_at = start + timedelta(weeks=4 * number, days=1)
        due = assigned_at + timedelta(days=21)
        targets = people if number == 0 else rng.sample(people, PEOPLE * (3 - number) // 10)
        dimensions = {"training_module": module, "course": module.replace("-", " ").title()}
        due_dimensions = {**dimensions, "due_date": due.date().isoformat()}
        for person in targets:
            at = assigned_at + timedelta(seconds=rng.randrange(0, 7200))
            add("training.assigned", person, at, due_dimensions)
            completes = rng.random() < 0.78
            completed_at = at + timedelta(days=rng.uniform(0.5, 35))
            if not completes or completed_at > due:
                add("training.overdue", person, due + timedelta(hours=1), due_dimensions)
            if completes:  # some late: overdue first, then completed
                add("training.completed", person, completed_at, dimensions)
    programme.events.sort(key=lambda event: (event.at, event.event_id))
    programme.folded = list(programme.events)
    return programme


# --- the figures, computed here ---------------------------------------------------------------


@dataclass(frozen=True)
class ExpectedFunnel:
    stage_events: dict[int, int]
    stage_people: dict[int, int]
    rates: tuple[float, float, float, float]
    time_to_click: tuple[int, float, float]
    time_to_report: tuple[int, float, float]
    departments: list[tuple[str, bool, dict[int, int]]]


def ratio(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def summary(seconds: Sequence[float]) -> tuple[int, float, float]:
    """Count, median and 90th percentile by linear interpolation between closest ranks."""
    if not seconds:
        return (0, 0.0, 0.0)
    if len(seconds) == 1:
        return (1, seconds[0], seconds[0])
    return (
        len(seconds),
        statistics.median(seconds),
        statistics.quantiles(seconds, n=10, method="inclusive")[8],
    )


def stage_rates(people: dict[int, int]) -> tuple[float, float, float, float]:
    sent = people[Stage.FUNNEL_STAGE_SENT]
    return (
        ratio(people[Stage.FUNNEL_STAGE_OPENED], sent),
        ratio(people[Stage.FUNNEL_STAGE_CLICKED], sent),
        ratio(people[Stage.FUNNEL_STAGE_SUBMITTED_DATA], sent),
        ratio(people[Stage.FUNNEL_STAGE_REPORTED], sent),
    )


def expected_funnels(programme: Programme) -> dict[str, ExpectedFunnel]:
    events: dict[str, Counter[int]] = defaultdict(Counter)
    for event in programme.folded:
        if event.type in STAGE_OF_TYPE:
            events[event.dimensions["campaign_id"]][STAGE_OF_TYPE[event.type]] += 1
    first: dict[str, dict[str, dict[int, datetime]]] = defaultdict(lambda: defaultdict(dict))
    for event in programme.per_person:
        if event.type in STAGE_OF_TYPE:
            times = first[event.dimensions["campaign_id"]][event.person]
            stage = STAGE_OF_TYPE[event.type]
            times[stage] = min(times.get(stage, event.at), event.at)
    funnels = {}
    for campaign_id, counts in events.items():
        people = first[campaign_id]

        def reached(members: list[str], stage: int, people: dict[str, dict[int, datetime]] = people) -> int:
            return sum(1 for person in members if stage in people[person])

        def elapsed(until: int, people: dict[str, dict[int, datetime]] = people) -> tuple[int, float, float]:
            sent = Stage.FUNNEL_STAGE_SENT
            return summary(
                [
                    (times[until] - times[sent]).total_seconds()
                    for times in people.values()
                    if sent in times and until in times and times[until] >= times[sent]
                ]
            )

        everyone = list(people)
        stage_people = {stage: reached(everyone, stage) for stage in STAGES}
        by_department: dict[str, list[str]] = defaultdict(list)
        for person in everyone:
            by_department[programme.department[person]].append(person)
        departments = []
        for name in sorted(by_department):
            members = by_department[name]
            hidden = len(members) < K
            departments.append(
                (name, hidden, {stage: 0 if hidden else reached(members, stage) for stage in STAGES})
            )
        funnels[campaign_id] = ExpectedFunnel(
            stage_events={stage: counts[stage] for stage in STAGES},
            stage_people=stage_people,
            rates=stage_rates(stage_people),
            time_to_click=elapsed(Stage.FUNNEL_STAGE_CLICKED),
            time_to_report=elapsed(Stage.FUNNEL_STAGE_REPORTED),
            departments=departments,
        )
    return funnels


Figures = tuple[int, int, int]  # assigned, completed, overdue (and not completed)


def training_figures(assignments: list[tuple[bool, bool]]) -> Figures:
    return (
        len(assignments),
        sum(completed for completed, _ in assignments),
        sum(overdue and not completed for completed, overdue in assignments),
    )


def expected_training(
    programme: Programme,
) -> tuple[Figures, dict[str, Figures], list[tuple[str, bool, Figures]]]:
    steps: dict[tuple[str, str], set[str]] = defaultdict(set)
    for event in programme.per_person:
        if event.type.startswith("training."):
            steps[(event.dimensions["training_module"], event.person)].add(event.type)
    rows = [
        (module, person, ("training.completed" in seen, "training.overdue" in seen))
        for (module, person), seen in steps.items()
    ]
    modules: dict[str, list[tuple[bool, bool]]] = defaultdict(list)
    departments: dict[str, list[tuple[str, tuple[bool, bool]]]] = defaultdict(list)
    for module, person, assignment in rows:
        modules[module].append(assignment)
        departments[programme.department[person]].append((person, assignment))
    by_department = []
    for name in sorted(departments):
        members = departments[name]
        hidden = len({person for person, _ in members}) < K
        by_department.append(
            (name, hidden, (0, 0, 0) if hidden else training_figures([a for _, a in members]))
        )
    return (
        training_figures([assignment for _, _, assignment in rows]),
        {module: training_figures(modules[module]) for module in sorted(modules)},
        by_department,
    )


def expected_counts(events: Sequence[Event]) -> dict[tuple[str, str], int]:
    return dict(Counter((event.at.date().isoformat(), event.type) for event in events))


def department_sizes(programme: Programme) -> Counter[str]:
    """Distinct people of each department with a fact still linked to them."""
    return Counter(programme.department[p] for p in {event.person for event in programme.per_person})


# --- the suite, through the gateway -----------------------------------------------------------


@dataclass
class Api:
    suite: UpSuite
    keys: dict[str, str]
    client: httpx.Client

    def call(self, role: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.keys[role]}"}
        return self.client.request(method, f"{self.suite.url}{path}", headers=headers, **kwargs)

    def ok(self, role: str, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = self.call(role, method, path, **kwargs)
        assert response.status_code == 200, f"{method} {path}: {response.status_code} {response.text}"
        body: dict[str, Any] = response.json()
        return body

    def read(self, message: M, path: str, **params: Any) -> M:
        body = self.ok("analyst", "GET", path, params=params)
        return json_format.ParseDict(body, message, ignore_unknown_fields=True)

    def funnel(self, campaign_id: str) -> analytics_pb2.CampaignFunnel:
        return self.read(analytics_pb2.CampaignFunnel(), f"/v1/analytics/campaigns/{campaign_id}/funnel")

    def counts(self, programme: Programme, **params: Any) -> analytics_pb2.QueryEventCountsResponse:
        days = {"startDay": programme.start.date().isoformat(), "endDay": programme.now.date().isoformat()}
        return self.read(
            analytics_pb2.QueryEventCountsResponse(), "/v1/analytics/eventCounts", **days, **params
        )

    def append(self, events: Sequence[Event]) -> None:
        for offset in range(0, len(events), BATCH):
            chunk = events[offset : offset + BATCH]
            body = {"events": [as_json(event) for event in chunk]}
            results = self.ok("integration", "POST", "/v1/events:batchAppend", json=body)["results"]
            refused = [result for result in results if "receipt" not in result]
            assert not refused, refused[:3]
            assert len(results) == len(chunk)

    def risk(self, pseudonym: str) -> httpx.Response:
        return self.call("analyst", "GET", f"/v1/analytics/subjectRisks/{pseudonym}")

    def listed_risks(self) -> set[str]:
        listed: set[str] = set()
        token = ""
        while True:
            page = self.ok(
                "analyst", "GET", "/v1/analytics/subjectRisks", params={"pageSize": 1000, "pageToken": token}
            )
            listed |= {risk["subjectPseudonym"] for risk in page.get("subjectRisks", [])}
            token = page.get("nextPageToken", "")
            if not token:
                return listed

    def withdraw(self, person: str, purpose: str) -> None:
        self.ok(
            "dpo",
            "POST",
            "/v1/consents:withdraw",
            json={"subject": person, "purpose": purpose, "reason": "objection, ticket DPO-20"},
        )


def identifier(person: str) -> str:
    return person.partition("#")[0]


def as_json(event: Event) -> dict[str, Any]:
    source = "lms" if event.type.startswith("training.") else "gophish"
    return {
        "eventId": event.event_id,
        "type": event.type,
        "source": source,
        "subject": identifier(event.person),
        "occurredAt": event.at.isoformat().replace("+00:00", "Z"),
        "severity": "SEVERITY_MEDIUM",
        "summary": f"{event.type} in the awareness programme",
        "details": event.dimensions,
    }


def pseudonym_of(suite: UpSuite, person: str) -> str:
    """The person's current pseudonym, asked of gdpr as ingest asks it (ingest's certificate)."""
    credentials = load_settings("ingest", suite.env).identity.channel_credentials()
    with grpc.secure_channel(
        suite.addresses["gdpr"], credentials, options=channel_options("gdpr")
    ) as channel:
        response = gdpr_pb2_grpc.GdprServiceStub(channel).GetSubjectKeys(
            gdpr_pb2.GetSubjectKeysRequest(
                lookups=[
                    gdpr_pb2.SubjectKeyLookup(
                        subject=identifier(person),
                        occurred_at=to_timestamp(datetime.now(UTC)),
                        event_type="phishing.clicked",
                    )
                ]
            ),
            timeout=30,
        )
    (key,) = response.keys
    return str(key.pseudonym)


def wait_until(probe: Any, *, what: str, timeout: float = FOLD_TIMEOUT_SECONDS) -> Any:
    """Poll ``probe`` until it returns something truthy (bounded)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def total_counted(api: Api, programme: Programme) -> int:
    return sum(count.count for count in api.counts(programme).counts)


def folded_all(api: Api, programme: Programme) -> bool:
    return total_counted(api, programme) == len(programme.folded)


# --- comparisons --------------------------------------------------------------------------------


def assert_funnels(api: Api, programme: Programme) -> None:
    expected = expected_funnels(programme)
    assert len(expected) == CAMPAIGNS
    listed = api.read(analytics_pb2.ListCampaignsResponse(), "/v1/analytics/campaigns", pageSize=100)
    assert {c.campaign_id: c.people_sent for c in listed.campaigns} == {
        campaign_id: funnel.stage_people[Stage.FUNNEL_STAGE_SENT] for campaign_id, funnel in expected.items()
    }
    starts = [c.first_event_time.ToDatetime(UTC) for c in listed.campaigns]
    assert starts == sorted(starts, reverse=True), "campaigns must come most recently started first"
    for campaign_id, want in expected.items():
        got = api.funnel(campaign_id)
        assert [s.stage for s in got.stages] == list(STAGES), campaign_id
        assert {s.stage: s.events for s in got.stages} == want.stage_events, campaign_id
        assert {s.stage: s.people for s in got.stages} == want.stage_people, campaign_id
        rates = (got.rates.open_rate, got.rates.click_rate, got.rates.submit_rate, got.rates.report_rate)
        assert rates == pytest.approx(want.rates, abs=1e-9), campaign_id
        for name, duration, wanted in (
            ("time to click", got.time_to_click, want.time_to_click),
            ("time to report", got.time_to_report, want.time_to_report),
        ):
            assert (duration.count, duration.median_seconds, duration.p90_seconds) == pytest.approx(
                wanted, abs=1e-6
            ), f"{campaign_id} {name}"
        departments = [
            (d.department, d.suppressed, {s.stage: s.people for s in d.stages}) for d in got.departments
        ]
        wanted_departments = [
            (name, hidden, {stage: people for stage, people in stages.items() if not hidden or people})
            for name, hidden, stages in want.departments
        ]
        # A suppressed department may list its stages as zeros or not at all; either way no figure shows.
        departments = [
            (name, hidden, {stage: n for stage, n in stages.items() if not hidden or n})
            for name, hidden, stages in departments
        ]
        assert departments == wanted_departments, campaign_id
        for department in got.departments:
            if department.suppressed:
                r = department.rates
                assert (r.open_rate, r.click_rate, r.submit_rate, r.report_rate) == (0, 0, 0, 0)
            else:
                people = {s.stage: s.people for s in department.stages}
                assert department.rates.click_rate == pytest.approx(
                    ratio(people[Stage.FUNNEL_STAGE_CLICKED], people[Stage.FUNNEL_STAGE_SENT])
                )
                assert department.rates.report_rate == pytest.approx(
                    ratio(people[Stage.FUNNEL_STAGE_REPORTED], people[Stage.FUNNEL_STAGE_SENT])
                )


def figures_of(figures: analytics_pb2.TrainingFigures) -> Figures:
    return (figures.assigned, figures.completed, figures.overdue)


def assert_training(api: Api, programme: Programme) -> None:
    total, modules, departments = expected_training(programme)
    got = api.read(analytics_pb2.TrainingSummary(), "/v1/analytics/training")
    assert figures_of(got.total) == total
    assert got.total.completion_rate == pytest.approx(ratio(total[1], total[0]))
    assert got.total.overdue_rate == pytest.approx(ratio(total[2], total[0]))
    assert {m.training_module: figures_of(m.figures) for m in got.modules} == modules
    assert [m.training_module for m in got.modules] == sorted(modules)
    for module in got.modules:
        assigned, completed, overdue = modules[module.training_module]
        assert module.figures.completion_rate == pytest.approx(ratio(completed, assigned))
        assert module.figures.overdue_rate == pytest.approx(ratio(overdue, assigned))
    assert [(d.department, d.suppressed, figures_of(d.figures)) for d in got.departments] == departments
    one = api.read(analytics_pb2.TrainingSummary(), "/v1/analytics/training", trainingModule=MODULES[1])
    assert figures_of(one.total) == modules[MODULES[1]]


def assert_counts(api: Api, programme: Programme) -> None:
    got = api.counts(programme)
    assert not got.suppressed
    assert {(c.day, c.type): c.count for c in got.counts} == expected_counts(programme.folded)
    campaign = [e for e in programme.folded if e.dimensions.get("campaign_id") == "cmp-03"]
    by_campaign = api.counts(programme, dimensionKey="campaign_id", dimensionValue="cmp-03")
    assert {(c.day, c.type): c.count for c in by_campaign.counts} == expected_counts(campaign)
    clicks = api.counts(programme, types="phishing.clicked")
    assert sum(c.count for c in clicks.counts) == sum(e.type == "phishing.clicked" for e in programme.folded)
    sizes = department_sizes(programme)
    for name in DEPARTMENTS:
        of_department = api.counts(programme, department=name)
        if sizes[name] < K:
            assert of_department.suppressed and not of_department.counts, name
        else:
            wanted = [e for e in programme.folded if programme.department[e.person] == name]
            assert not of_department.suppressed, name
            assert {(c.day, c.type): c.count for c in of_department.counts} == expected_counts(wanted), name


def assert_everything(api: Api, programme: Programme) -> None:
    assert_funnels(api, programme)
    assert_training(api, programme)
    assert_counts(api, programme)


# --- fixtures -----------------------------------------------------------------------------------


@dataclass
class Running:
    api: Api
    programme: Programme
    timings: dict[str, float]


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory, suite_backend: Backend) -> Iterator[Running]:
    data_dir = tmp_path_factory.mktemp(f"analytics-programme-{suite_backend.name}")
    extra = {
        # Consent answers are not cached, so that an objection reaches analytics at once.
        "AWARENESS_ANALYTICS_CONSENT_CACHE_SECONDS": "0",
        # An objection without a later event is seen by the consent sweep: every second here.
        "AWARENESS_ANALYTICS_CONSENT_SWEEP_SECONDS": "1",
        "AWARENESS_ANALYTICS_K": str(K),
        # Facts go without a score or evaluation: the figures checked here do not depend on them, and
        # scoring 20,000 events on two cores would take most of the time box.
        "AWARENESS_INGEST_ENRICHMENT": "false",
        "AWARENESS_INGEST_ANALYTICS_INTERVAL_MS": "100",
        # A batch of 500 new subjects' events takes about a second here, but several times the 5 s
        # default deadline when the shared two-core machine is busy with other suites.
        "AWARENESS_CALL_TIMEOUT_SECONDS": "60",
        "AWARENESS_GATEWAY_RATE_PRINCIPAL_PER_MIN": "1000000",
        "AWARENESS_GATEWAY_RATE_IP_PER_MIN": "1000000",
        "AWARENESS_GATEWAY_RATE_GLOBAL_PER_MIN": "1000000",
    }
    timings: dict[str, float] = {}
    started = time.monotonic()
    with awareness_up(data_dir, suite_backend, extra_env=extra) as suite:
        timings["up"] = time.monotonic() - started
        keys = {
            role: suite.create_key(role, name=f"programme-{role}")
            for role in ("integration", "analyst", "dpo")
        }
        with httpx.Client(timeout=120) as client:
            api = Api(suite, keys, client)
            programme = generate(SEED, datetime.now(UTC).replace(microsecond=0))
            mark = time.monotonic()
            imported = api.ok(
                "dpo",
                "POST",
                "/v1/directory:import",
                json={
                    "entries": [
                        {"subject": person, "department": department}
                        for person, department in programme.department.items()
                        if department
                    ]
                },
            )
            assert int(imported.get("createdCount", 0)) == PEOPLE - UNLISTED
            timings["directory"] = time.monotonic() - mark
            mark = time.monotonic()
            api.append(programme.events)
            timings["append"] = time.monotonic() - mark
            mark = time.monotonic()
            wait_until(lambda: folded_all(api, programme), what="analytics to fold the programme")
            timings["fold"] = time.monotonic() - mark
            yield Running(api, programme, timings)
            timings["total"] = time.monotonic() - started
            print(
                f"\nprogramme of {len(programme.events)} events: "
                + ", ".join(f"{name} {seconds:.1f}s" for name, seconds in timings.items())
            )


# --- the tests ----------------------------------------------------------------------------------


def test_the_programme_is_realistic_and_reproducible(running: Running) -> None:
    programme = running.programme
    again = generate(SEED, programme.now)
    assert [(e.event_id, e.type, e.person, e.at) for e in again.events] == [
        (e.event_id, e.type, e.person, e.at) for e in programme.events
    ]
    kinds = Counter(event.type for event in programme.events)
    assert set(kinds) == set(STAGE_OF_TYPE) | {"training.assigned", "training.completed", "training.overdue"}
    assert min(e.at for e in programme.events) >= programme.start
    assert max(e.at for e in programme.events) < programme.now
    assert (programme.now - programme.start).days >= 90
    sizes = department_sizes(programme)
    assert sorted(name for name in DEPARTMENTS if sizes[name] < K) == ["Board", "Internal Audit", "Legal"]


def test_funnels_rates_training_and_counts_match_the_generated_programme(running: Running) -> None:
    assert_everything(running.api, running.programme)
    # The baseline went to everyone: exactly the three departments under k are withheld.
    baseline = running.api.funnel("cmp-01")
    assert [d.department for d in baseline.departments if d.suppressed] == [
        "Board",
        "Internal Audit",
        "Legal",
    ]
    training = running.api.read(analytics_pb2.TrainingSummary(), "/v1/analytics/training")
    assert [d.department for d in training.departments if d.suppressed] == [
        "Board",
        "Internal Audit",
        "Legal",
    ]


def test_an_erased_person_leaves_every_per_person_figure(running: Running) -> None:
    """docs/data-minimisation.md: on erasure the per-person rows go and the counts already made stay
    as anonymous totals; events of the identifier afterwards are a new person's."""
    api, programme = running.api, running.programme
    erased = next(
        person
        for person, department in programme.department.items()
        if department == "Finance"
        and {"phishing.clicked", "phishing.reported", "training.completed"}
        <= {e.type for e in programme.events if e.person == person}
    )
    old = pseudonym_of(api.suite, erased)
    risk = api.risk(old)
    assert risk.status_code == 200, risk.text
    assert int(risk.json().get("eventCount", 0)) == sum(e.person == erased for e in programme.folded)

    api.ok("dpo", "POST", "/v1/subjects:erase", json={"subject": erased, "reason": "Art. 17, ticket DPO-20"})
    programme.forgotten.add(erased)
    sent_people = expected_funnels(programme)["cmp-01"].stage_people[Stage.FUNNEL_STAGE_SENT]
    wait_until(
        lambda: (
            {s.stage: s.people for s in api.funnel("cmp-01").stages}[Stage.FUNNEL_STAGE_SENT] == sent_people
        ),
        what="analytics to forget the erased person",
        timeout=60,
    )
    assert_everything(api, programme)
    assert api.risk(old).status_code == 404
    assert old not in api.listed_risks()

    # The same identifier afterwards: gdpr gives it a new pseudonym, with no department (the directory
    # entry went with the erasure); nothing of it joins the erased person's figures.
    again = f"{erased}#2"
    programme.department[again] = ""
    new = pseudonym_of(api.suite, again)
    assert new != old
    rng = random.Random(SEED + 1)
    at = programme.now - timedelta(minutes=30)
    dimensions = {
        "campaign_id": "cmp-12",
        "template": TEMPLATES[11 % len(TEMPLATES)],
        "campaign": "Campaign 12",
    }
    late = [
        Event(
            str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            kind,
            again,
            at + timedelta(seconds=i),
            dimensions,
        )
        for i, kind in enumerate(("phishing.email_sent", "phishing.clicked"))
    ]
    api.append(late)
    programme.events += late
    programme.folded += late
    wait_until(lambda: folded_all(api, programme), what="the late events to be folded", timeout=60)
    assert_everything(api, programme)
    assert api.risk(old).status_code == 404
    fresh = api.risk(new)
    assert fresh.status_code == 200, fresh.text
    assert int(fresh.json().get("eventCount", 0)) == len(late)


def test_a_person_who_objected_to_analytics_is_counted_nowhere_from_then_on(running: Running) -> None:
    """The analytics proto: facts after the objection are folded nowhere, and the person's per-person
    rows go; event counts folded before stay in the anonymous totals."""
    api, programme = running.api, running.programme
    objector = next(
        person
        for person, department in programme.department.items()
        if department == "Engineering"
        and person not in programme.forgotten
        and {"phishing.clicked", "training.assigned"}
        <= {e.type for e in programme.events if e.person == person}
    )
    bystander = next(
        person
        for person, department in programme.department.items()
        if department == "Engineering" and person != objector and person not in programme.forgotten
    )
    api.withdraw(objector, "analytics")
    rng = random.Random(SEED + 2)
    at = programme.now - timedelta(minutes=20)
    dimensions = {
        "campaign_id": "cmp-12",
        "template": TEMPLATES[11 % len(TEMPLATES)],
        "campaign": "Campaign 12",
    }
    after: list[Event] = []
    for person in (objector, bystander):
        for i, kind in enumerate(("phishing.email_sent", "phishing.email_opened", "phishing.clicked")):
            event_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            after.append(Event(event_id, kind, person, at + timedelta(seconds=10 * i), dimensions))
        event_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        training = {
            "training_module": MODULES[2],
            "course": "Data Handling",
            "due_date": at.date().isoformat(),
        }
        after.append(Event(event_id, "training.assigned", person, at + timedelta(seconds=40), training))
    api.append(after)
    programme.events += after
    programme.folded += [event for event in after if event.person != objector]
    programme.forgotten.add(objector)
    wait_until(lambda: folded_all(api, programme), what="the bystander's events to be folded", timeout=60)
    time.sleep(2)  # the objector's events went in the same batches; give a stray one time to show
    assert total_counted(api, programme) == len(programme.folded), "an objector's event was counted"
    assert_everything(api, programme)
    assert api.risk(pseudonym_of(api.suite, objector)).status_code == 404


def test_an_objection_to_profiling_removes_the_risk_but_not_the_counts(running: Running) -> None:
    api, programme = running.api, running.programme
    person = next(
        person
        for person, department in programme.department.items()
        if department == "Marketing"
        and person not in programme.forgotten
        and "phishing.clicked" in {e.type for e in programme.events if e.person == person}
    )
    pseudonym = pseudonym_of(api.suite, person)
    before = api.risk(pseudonym)
    assert before.status_code == 200, before.text
    assert pseudonym in api.listed_risks()
    api.withdraw(person, "profiling")
    assert api.risk(pseudonym).status_code == 404
    assert pseudonym not in api.listed_risks()

    rng = random.Random(SEED + 3)
    at = programme.now - timedelta(minutes=10)
    dimensions = {
        "campaign_id": "cmp-12",
        "template": TEMPLATES[11 % len(TEMPLATES)],
        "campaign": "Campaign 12",
    }
    after = [
        Event(
            str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            kind,
            person,
            at + timedelta(seconds=i),
            dimensions,
        )
        for i, kind in enumerate(("phishing.email_sent", "phishing.reported"))
    ]
    api.append(after)
    programme.events += after
    programme.folded += after
    wait_until(lambda: folded_all(api, programme), what="the events after the objection", timeout=60)
    assert_everything(api, programme)  # still counted everywhere, per person too
    assert api.risk(pseudonym).status_code == 404
    assert pseudonym not in api.listed_risks()


def test_an_objection_to_analytics_removes_the_people_figures_by_the_next_sweep(running: Running) -> None:
    """The analytics proto: the per-person rows already held for a person who objected are deleted by
    the next consent sweep at the latest, so unique-people figures leave them out from then on, even
    if no event of theirs arrives afterwards."""
    api, programme = running.api, running.programme
    objector = next(
        person
        for person, department in programme.department.items()
        if department == "Sales"
        and person not in programme.forgotten
        and "phishing.clicked" in {e.type for e in programme.events if e.person == person}
    )
    api.withdraw(objector, "analytics")
    programme.forgotten.add(objector)
    campaign = next(
        e.dimensions["campaign_id"]
        for e in programme.events
        if e.person == objector and e.type in STAGE_OF_TYPE
    )
    sent = expected_funnels(programme)[campaign].stage_people[Stage.FUNNEL_STAGE_SENT]
    deadline = time.monotonic() + 15
    got = -1
    while time.monotonic() < deadline and got != sent:
        got = {s.stage: s.people for s in api.funnel(campaign).stages}[Stage.FUNNEL_STAGE_SENT]
        time.sleep(0.5)
    assert got == sent, (
        f"{campaign}: {got} people sent 15 s after the objection, {sent} expected: the objector's "
        "per-person rows were not deleted by the consent sweep"
    )
    assert_everything(api, programme)
