"""The portal's programme pages in a real Chromium against the real suite (`awareness up` on
PostgreSQL and Redis).

A DPO imports a directory (six people in Finance, two in Legal: fewer than k = 5), an integration
appends one phishing campaign and some training through the gateway, and ingest feeds analytics as it
does after every append. Then an analyst reads the campaign's funnel with the figures computed here
from the appended events, the week's rates and the training on the trends page, and the people at
risk by pseudonym, never by identifier; an auditor, who may read aggregates but not per-person risk,
gets no People-at-risk link and 403 on its addresses. axe-core checks each page (WCAG 2.2 AA).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.portal.browser import accessible, csp_reports, sign_in
from tests.support.suite import Backend, UpSuite, awareness_up

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CAMPAIGN = "winter-parcel-2026"
MODULE = "phishing-basics"
PEOPLE = [f"person{index}@example.org" for index in range(8)]
FINANCE, LEGAL = PEOPLE[:6], PEOPLE[6:]
OPENED = (0, 1, 2, 3, 4)
# person index -> seconds from the e-mail to each click (person 0 clicks twice: two events, one person)
CLICKS = {0: (45, 400), 1: (300,), 2: (80,)}
SUBMITTED = (1,)
REPORTED = {5: 600, 6: 1200}
COMPLETED, OVERDUE = (0, 1, 2), (5,)
FOLD_SECONDS = 60.0
CHAMPION_SECONDS = 240.0
SMALL_MODEL = {
    # The default model is trained on a small synthetic set (seconds, not a minute), and the events are
    # appended once it is the champion: each is scored, and its fact reaches analytics with its risk.
    "AWARENESS_SCORING_SYNTHETIC_PEOPLE": "60",
    "AWARENESS_SCORING_SYNTHETIC_DAYS": "21",
    "AWARENESS_INGEST_ANALYTICS_INTERVAL_MS": "100",
}


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory, backend: Backend) -> Iterator[UpSuite]:
    data_dir = tmp_path_factory.mktemp("portal-programme")
    with awareness_up(data_dir, backend, extra_env=SMALL_MODEL) as running:
        yield running


def _ok(response: httpx.Response) -> Any:
    assert response.status_code == 200, f"{response.request.method} {response.request.url}: {response.text}"
    return response.json()


def _sent_at(now: datetime) -> datetime:
    """When the campaign's e-mails went out: 20 minutes ago, or before this ISO week began when that
    would straddle two weeks (the trends page counts per week)."""
    sent = now - timedelta(minutes=20)
    monday = (now - timedelta(days=now.isoweekday() - 1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return sent if sent >= monday else monday - timedelta(minutes=30)


def _events(sent: datetime) -> list[dict[str, Any]]:
    def event(kind: str, person: int, seconds: int, details: dict[str, str]) -> dict[str, Any]:
        return {
            "type": kind,
            "source": "lms" if kind.startswith("training.") else "gophish",
            "subject": PEOPLE[person],
            "occurredAt": (sent + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z"),
            "summary": f"{kind} in the portal's programme test",
            "details": details,
        }

    campaign = {"campaign_id": CAMPAIGN}
    training = {"training_module": MODULE}
    events = [event("phishing.email_sent", person, 0, campaign) for person in range(len(PEOPLE))]
    events += [event("phishing.email_opened", person, 20, campaign) for person in OPENED]
    events += [
        event("phishing.clicked", person, seconds, campaign)
        for person, times in CLICKS.items()
        for seconds in times
    ]
    events += [event("phishing.submitted_data", person, 500, campaign) for person in SUBMITTED]
    events += [event("phishing.reported", person, seconds, campaign) for person, seconds in REPORTED.items()]
    events += [event("training.assigned", person, 30, training) for person in range(len(FINANCE))]
    events += [event("training.completed", person, 700, training) for person in COMPLETED]
    events += [event("training.overdue", person, 800, training) for person in OVERDUE]
    return events


@pytest.fixture(scope="module")
def analyst_key(suite: UpSuite) -> str:
    """The programme appended and folded; an analyst's key to read it with."""
    dpo = suite.create_key("dpo", name="dora")
    integration = suite.create_key("integration", name="loader")
    analyst = suite.create_key("analyst", name="anna")
    with httpx.Client(base_url=suite.url, timeout=60) as client:
        deadline = time.monotonic() + CHAMPION_SECONDS
        while not _ok(
            client.get(
                "/v1/models",
                params={"status": "STATUS_CHAMPION"},
                headers={"authorization": f"Bearer {analyst}"},
            )
        ).get("models"):
            assert time.monotonic() < deadline, "no champion model to score the events with"
            time.sleep(1.0)
        directory = [{"subject": person, "department": "Finance"} for person in FINANCE]
        directory += [{"subject": person, "department": "Legal"} for person in LEGAL]
        _ok(
            client.post(
                "/v1/directory:import",
                json={"entries": directory},
                headers={"authorization": f"Bearer {dpo}"},
            )
        )
        events = _events(_sent_at(datetime.now(UTC)))
        results = _ok(
            client.post(
                "/v1/events:batchAppend",
                json={"events": events},
                headers={"authorization": f"Bearer {integration}"},
            )
        )["results"]
        assert all("receipt" in result for result in results), results
        # Ingest feeds analytics after each append; wait until every fact is folded.
        deadline = time.monotonic() + FOLD_SECONDS
        wanted_events = len(PEOPLE) + len(REPORTED)
        while True:
            response = client.get(
                f"/v1/analytics/campaigns/{CAMPAIGN}/funnel", headers={"authorization": f"Bearer {analyst}"}
            )
            if response.status_code == 200:
                stages = {s["stage"]: int(s.get("events", 0)) for s in response.json().get("stages", [])}
                folded = stages.get("FUNNEL_STAGE_SENT", 0) + stages.get("FUNNEL_STAGE_REPORTED", 0)
                if folded == wanted_events:
                    break
            assert time.monotonic() < deadline, f"analytics did not fold the campaign: {response.text}"
            time.sleep(0.5)
    return analyst


def _row(page: Page, table: str, header: str) -> list[str]:
    row = page.locator(f"#{table} tr", has=page.get_by_role("rowheader", name=header, exact=True))
    return [cell.strip() for cell in row.locator("td").all_inner_texts()]


def test_an_analyst_reads_the_funnel_trends_and_people_at_risk(
    page: Page, suite: UpSuite, analyst_key: str
) -> None:
    blocked = csp_reports(page)
    sign_in(page, suite, analyst_key, then="/portal/")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Programme").click()
    expect(page.get_by_role("heading", name="Phishing campaigns")).to_be_visible()
    campaigns = page.locator("#campaigns tbody tr")
    expect(campaigns).to_have_count(1)
    expect(campaigns.first).to_contain_text(f"{CAMPAIGN}")
    expect(campaigns.first.locator("td").last).to_have_text(str(len(PEOPLE)))
    assert blocked == []
    accessible(page, "programme-campaigns")

    # The campaign's funnel: people and events per stage, rates against the people sent.
    page.get_by_role("link", name=CAMPAIGN).click()
    expect(page.get_by_role("heading", level=1)).to_have_text(f"Campaign {CAMPAIGN}")
    clicked_people = len(CLICKS)
    click_events = sum(len(times) for times in CLICKS.values())
    assert _row(page, "funnel", "sent") == [str(len(PEOPLE)), str(len(PEOPLE)), "—"]
    assert _row(page, "funnel", "opened") == [str(len(OPENED)), str(len(OPENED)), "62.5 %"]
    assert _row(page, "funnel", "clicked") == [str(clicked_people), str(click_events), "37.5 %"]
    assert _row(page, "funnel", "submitted data") == ["1", "1", "12.5 %"]
    assert _row(page, "funnel", "reported") == ["2", "2", "25.0 %"]
    expect(page.locator("#click-rate")).to_have_text("37.5 %")
    expect(page.locator("#report-rate")).to_have_text("25.0 %")
    expect(page.get_by_role("img", name=re.compile("^People per stage"))).to_be_visible()
    # Each person's first click: 45, 300 and 80 s (median 80 s); reports at 600 and 1200 s (median 900 s).
    assert _row(page, "times", "click")[0] == "1 min 20 s"
    assert _row(page, "times", "click")[2] == "3"
    assert _row(page, "times", "report")[0] == "15 min"
    # Finance (six people) has its figures; Legal (two, fewer than k) has none at all.
    finance = _row(page, "departments", "Finance")
    assert finance[:5] == ["6", "5", "3", "1", "1"], finance
    assert finance[5:] == ["50.0 %", "16.7 %"], finance
    assert _row(page, "departments", "Legal") == ["fewer than k people"]
    assert blocked == []
    accessible(page, "programme-campaign")

    # Trends: this week's e-mails, clicks (events: person 0 clicked twice) and reports; the training.
    page.get_by_role("navigation", name="Programme").get_by_role("link", name="Trends").click()
    expect(page.get_by_role("heading", name="Click and report rates")).to_be_visible()
    expect(page.locator("#rates tbody tr")).to_have_count(12)
    weeks = [row for row in page.locator("#rates tbody tr").all_inner_texts() if "\t8\t" in row]
    assert len(weeks) == 1, page.locator("#rates").inner_text()
    assert weeks[0].split("\t")[1:] == ["8", "4", "2", "50.0 %", "25.0 %"], weeks
    expect(page.get_by_role("img", name=re.compile("^Click and report rates per ISO week"))).to_be_visible()
    assert _row(page, "training", MODULE) == ["6", "3", "1", "50.0 %", "16.7 %"]
    assert _row(page, "training-departments", "Finance") == ["6", "50.0 %", "16.7 %"]
    expect(page.locator("#violations")).to_be_visible()
    assert blocked == []
    accessible(page, "programme-trends")

    # People at risk: pseudonyms only, riskiest first; a pseudonym's page never names the person.
    page.get_by_role("navigation", name="Programme").get_by_role("link", name="People at risk").click()
    expect(page.get_by_role("heading", name="People at risk")).to_be_visible()
    listed = page.locator("#risks tbody tr")
    expect(listed.first.get_by_role("link")).to_have_text(re.compile(r"^psn_"))
    assert listed.count() == len(PEOPLE)
    scores = [float(text) for text in page.locator("#risks tbody td:nth-child(2)").all_inner_texts()]
    assert scores == sorted(scores, reverse=True)
    assert "example.org" not in page.content()
    accessible(page, "programme-risks")

    assert scores[0] > 0, scores

    pseudonym = listed.first.get_by_role("link").inner_text()
    listed.first.get_by_role("link").click()
    expect(page.get_by_role("heading", level=1)).to_have_text(f"Risk of {pseudonym}")
    expect(page.locator("#risk-score")).to_have_text(f"{scores[0]:.1f}")
    expect(page.locator("#trend tbody tr")).to_have_count(12)
    expect(
        page.get_by_role("img", name=re.compile("^Risk score at the end of each ISO week"))
    ).to_be_visible()
    expect(page.locator("#factors tbody tr")).not_to_have_count(0)
    assert "example.org" not in page.content()
    assert blocked == []
    accessible(page, "programme-risk")

    # A contributing event opens on its own page.
    top = page.locator("#top-events tbody tr").first.get_by_role("link")
    kind = top.inner_text()
    top.click()
    expect(page).to_have_url(re.compile(r"/portal/events/[0-9a-f-]{36}$"))
    expect(page.get_by_role("main")).to_contain_text(kind)


def test_an_auditor_reads_aggregates_but_not_people_at_risk(
    page: Page, suite: UpSuite, analyst_key: str
) -> None:
    auditor = suite.create_key("auditor", name="audrey")
    sign_in(page, suite, auditor, then="/portal/programme")
    expect(page.get_by_role("heading", name="Phishing campaigns")).to_be_visible()
    expect(page.get_by_role("link", name=CAMPAIGN)).to_be_visible()
    programme_nav = page.get_by_role("navigation", name="Programme")
    expect(programme_nav.get_by_role("link", name="Trends")).to_be_visible()
    expect(programme_nav.get_by_role("link", name="People at risk")).to_have_count(0)
    expect(page.get_by_role("link", name="People at risk")).to_have_count(0)

    for address in ("/portal/programme/risks", "/portal/programme/risks/psn_anyone"):
        response = page.goto(f"{suite.url}{address}")
        assert response is not None and response.status == 403, address
        expect(page.get_by_role("heading", level=1)).to_have_text("Your role does not allow this")

    # Without analytics:read at all (an ML engineer), no Programme item and 403 on its pages.
    engineer = suite.create_key("ml_engineer", name="mel")
    page.context.clear_cookies()
    sign_in(page, suite, engineer, then="/portal/")
    expect(page.get_by_role("navigation", name="Main").get_by_role("link", name="Programme")).to_have_count(0)
    response = page.goto(f"{suite.url}/portal/programme/trends")
    assert response is not None and response.status == 403
