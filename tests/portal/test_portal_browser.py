"""The portal in a real Chromium against the real suite (`awareness up` on PostgreSQL and Redis).

Each test walks one person's flow as they would: signing in with the key `awareness keys create`
printed, clicking through pages, submitting forms. Screenshots of the main pages land in
var/screenshots; axe-core checks each main page against WCAG 2.2 AA.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, Route, expect

from tests.portal.browser import accessible, append_events, csp_reports, sign_in, wait_checkpointed
from tests.support.idp import IdentityProvider
from tests.support.oidc import OidcProvider, running_provider
from tests.support.suite import Backend, UpSuite, awareness_up

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TYPES = ("phishing.clicked", "phishing.reported", "training.completed", "mfa.disabled")


@pytest.fixture(scope="module")
def provider() -> Iterator[OidcProvider]:
    with running_provider() as running:
        yield running


@pytest.fixture(scope="module")
def suite(
    tmp_path_factory: pytest.TempPathFactory, backend: Backend, idp: IdentityProvider, provider: OidcProvider
) -> Iterator[UpSuite]:
    data_dir = tmp_path_factory.mktemp("portal")
    # A small synthetic population: the bootstrap model is trained in seconds, so events get scores.
    small_model = {"AWARENESS_SCORING_SYNTHETIC_PEOPLE": "60", "AWARENESS_SCORING_SYNTHETIC_DAYS": "21"}
    env = {**idp.gateway_env(data_dir), **provider.env(), **small_model}
    with awareness_up(data_dir, backend, extra_env=env) as running:
        yield running


@pytest.fixture(scope="module")
def events(suite: UpSuite) -> list[str]:
    """Twelve events about four people, appended by an integration and checkpointed."""
    ids = append_events(
        suite,
        [
            {
                "type": TYPES[number % len(TYPES)],
                "source": "gophish",
                "subject": f"person{number % 4}@example.org",
                "occurredAt": f"2026-12-0{number % 5 + 1}T09:{number:02d}:00Z",
                "summary": f"portal test event {number}",
                "details": {"location": "spring-office"},
            }
            for number in range(12)
        ],
    )
    wait_checkpointed(suite, ids[-1])
    return ids


def test_analyst_triages_labels_and_verifies_an_event(page: Page, suite: UpSuite, events: list[str]) -> None:
    blocked = csp_reports(page)
    sign_in(page, suite, suite.create_key("analyst", name="ana"))
    expect(page.get_by_role("heading", name="Home")).to_be_visible()
    # Charts are drawn, each with a text alternative that carries its figures.
    per_day = page.get_by_role("img", name=re.compile("^Events per day, by type"))
    expect(per_day).to_be_visible()
    expect(per_day.locator("desc")).to_contain_text("phishing.clicked 3")

    page.get_by_role("link", name="Events", exact=True).click()
    expect(page.locator("tbody tr")).to_have_count(12)
    page.get_by_label("Type", exact=True).fill("mfa.disabled")
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("tbody tr")).to_have_count(3)
    assert "type=mfa.disabled" in page.url

    page.locator("tbody tr").first.get_by_role("link").click()
    expect(page.get_by_role("heading", name="mfa.disabled")).to_be_visible()
    expect(page.get_by_text(re.compile(r"person\d@example\.org"))).to_be_visible()
    # The browser checked the proof and the checkpoint's signature itself.
    evidence = page.locator("[data-evidence]")
    expect(evidence).to_have_attribute("data-verified", "true")
    expect(evidence.locator(".check-fail")).to_have_count(0)

    page.get_by_label("Label", exact=True).select_option("true_positive")
    page.get_by_label("Triage", exact=True).select_option("closed")
    page.get_by_label("Note", exact=True).fill("confirmed with the person")
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("status")).to_have_text("Saved.")
    expect(page.locator("#current-label")).to_have_text("true positive")
    expect(page.locator("#current-triage")).to_have_text("closed")
    expect(page.get_by_text("confirmed with the person")).to_be_visible()
    # The page came back through htmx: its proof is checked again, and still holds.
    expect(evidence).to_have_attribute("data-verified", "true")
    assert blocked == []


def test_main_pages_meet_wcag_2_2_aa(page: Page, suite: UpSuite, events: list[str]) -> None:
    # axe-core injects its own styles, which the CSP blocks and reports: these pages are checked
    # here, apart from the flows that assert no CSP report.
    page.goto(f"{suite.url}/portal/sign-in")
    accessible(page, "sign-in")
    sign_in(page, suite, suite.create_key("analyst", name="axe"))
    accessible(page, "home")
    page.goto(f"{suite.url}/portal/events")
    accessible(page, "events")
    page.goto(f"{suite.url}/portal/events/{events[3]}")
    expect(page.locator("[data-evidence]")).to_have_attribute("data-verified", "true")
    accessible(page, "event")
    page.set_viewport_size({"width": 390, "height": 844})  # a phone
    page.goto(f"{suite.url}/portal/events")
    accessible(page, "events-phone")
    page.emulate_media(color_scheme="dark")
    page.goto(f"{suite.url}/portal/")
    accessible(page, "home-dark")


def test_bulk_triage_from_the_queue(page: Page, suite: UpSuite, events: list[str]) -> None:
    sign_in(
        page, suite, suite.create_key("analyst", name="bulk"), then="/portal/events?type=phishing.reported"
    )
    rows = page.locator("tbody tr")
    expect(rows).to_have_count(3)
    rows.nth(0).get_by_role("checkbox").check()
    rows.nth(1).get_by_role("checkbox").check()
    page.locator("#bulk").get_by_label("Label", exact=True).select_option("false_positive")
    page.locator("#bulk").get_by_label("Triage", exact=True).select_option("in_review")
    page.get_by_label("Note for each selected event").fill("the whole batch was a drill")
    page.get_by_role("button", name="Apply to selected").click()
    expect(page.get_by_role("status")).to_have_text("Updated 2 events.")
    assert "type=phishing.reported" in page.url  # back on the same filtered queue
    expect(page.locator("tbody tr", has_text="in review")).to_have_count(2)
    page.locator("tbody tr", has_text="in review").first.get_by_role("link").click()
    expect(page.locator("#current-label")).to_have_text("false positive")
    expect(page.get_by_text("the whole batch was a drill")).to_be_visible()


def test_a_tampered_proof_turns_the_check_red(page: Page, suite: UpSuite, events: list[str]) -> None:
    sign_in(page, suite, suite.create_key("auditor", name="tamper"))

    def tamper(route: Route) -> None:
        response = route.fetch()
        body = response.text()
        match = re.search(r'"proof":\["([A-Za-z0-9+/]{4})', body)
        assert match is not None, "the page carries no proof to tamper with"
        flipped = ("B" if match.group(1)[0] == "A" else "A") + match.group(1)[1:]
        route.fulfill(response=response, body=body.replace(match.group(0), match.group(0)[:-4] + flipped, 1))

    page.route(re.compile(r".*/portal/events/[0-9a-f-]+$"), tamper)
    page.goto(f"{suite.url}/portal/events/{events[0]}")
    evidence = page.locator("[data-evidence]")
    expect(evidence).to_have_attribute("data-verified", "false")
    expect(evidence.locator(".check-fail").first).to_be_visible()


def test_a_form_without_the_csrf_token_is_refused(page: Page, suite: UpSuite, events: list[str]) -> None:
    sign_in(page, suite, suite.create_key("analyst", name="csrf"))
    target = f"{suite.url}/portal/events/{events[1]}:label"
    forged = page.request.post(target, form={"label": "false_positive", "csrf_token": "guessed"})
    assert forged.status == 403
    assert "This form has expired" in forged.text()
    missing = page.request.post(target, form={"label": "false_positive"})
    assert missing.status == 403
    page.goto(f"{suite.url}/portal/events/{events[1]}")
    expect(page.locator("#current-label")).to_have_text("none")


def test_sign_out_ends_the_session_on_the_server(page: Page, suite: UpSuite) -> None:
    sign_in(page, suite, suite.create_key("analyst", name="leaving"))
    cookie = next(c for c in page.context.cookies() if c["name"] == "awareness_portal")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax" and cookie["path"] == "/portal"
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_text("You are signed out.")).to_be_visible()
    # The old cookie, replayed, signs nobody in: the session is gone from the store.
    replay = httpx.get(
        f"{suite.url}/portal/events", cookies={"awareness_portal": cookie["value"]}, follow_redirects=False
    )
    assert replay.status_code == 303
    assert replay.headers["location"].startswith("/portal/sign-in")


def test_a_role_without_the_permission_sees_no_button_and_is_refused(
    page: Page, suite: UpSuite, events: list[str]
) -> None:
    sign_in(page, suite, suite.create_key("policy_author", name="author"))
    page.goto(f"{suite.url}/portal/events/{events[2]}")
    expect(page.get_by_role("heading", level=1)).to_be_visible()
    expect(page.get_by_role("button", name="Save")).to_have_count(0)
    expect(page.locator("tbody input[type=checkbox]")).to_have_count(0)
    # A forged form with a valid CSRF token still meets ingest's own permission check.
    token = page.locator("input[name=csrf_token]").first.input_value()
    forged = page.request.post(
        f"{suite.url}/portal/events/{events[2]}:label", form={"label": "true_positive", "csrf_token": token}
    )
    assert forged.status == 403
    assert "Your role does not allow this" in forged.text()


def test_a_person_without_a_role_is_refused(page: Page, suite: UpSuite, idp: IdentityProvider) -> None:
    sign_in(page, suite, idp.token(sub="nobody", roles=[]))
    expect(page.get_by_role("alert")).to_contain_text("no role")
    assert page.url.endswith("/portal/sign-in")
    page.goto(f"{suite.url}/portal/")
    assert "/portal/sign-in" in page.url


def test_a_wrong_key_is_refused(page: Page, suite: UpSuite) -> None:
    sign_in(page, suite, f"awk_{uuid.uuid4().hex[:16]}_{'x' * 43}")
    expect(page.get_by_role("alert")).to_have_text("That API key is not valid.")


def test_pages_carry_the_security_headers(suite: UpSuite) -> None:
    for path in ("/portal/sign-in", "/portal/static/portal.css"):
        response = httpx.get(f"{suite.url}{path}")
        assert response.status_code == 200
        policy = response.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "unsafe-inline" not in policy
        assert "frame-ancestors 'none'" in policy
        assert response.headers["x-content-type-options"] == "nosniff"
    page = httpx.get(f"{suite.url}/portal/sign-in")
    assert page.headers["cache-control"] == "no-store"
    assert "<script>" not in page.text and " style=" not in page.text
    assert httpx.get(f"{suite.url}/").headers["location"] == "/portal/"


def test_sign_in_with_the_organisations_identity_provider(
    page: Page, suite: UpSuite, provider: OidcProvider
) -> None:
    provider.user = {"sub": "olga", "roles": ["analyst"], "email": "olga@example.org"}
    page.goto(f"{suite.url}/portal/events")
    page.get_by_role("button", name="Sign in with your organisation").click()
    page.wait_for_load_state("networkidle")
    # Through the provider and back, with PKCE: the provider checked the verifier against the challenge.
    assert page.url == f"{suite.url}/portal/events"
    expect(page.get_by_role("heading", name="Events")).to_be_visible()
    expect(page.locator("footer")).to_contain_text("oidc:olga")
    assert len(provider.redeemed) == 1 and len(provider.redeemed[0]) >= 43
    assert provider.refused == []
    cookie = next(c for c in page.context.cookies() if c["name"] == "awareness_portal")
    assert cookie["httpOnly"]
    assert not [c for c in page.context.cookies() if c["name"] == "awareness_portal_oidc"]  # used up


def test_a_callback_this_browser_did_not_start_is_refused(
    page: Page, suite: UpSuite, provider: OidcProvider
) -> None:
    # An attacker's own authorization code, sent to a victim: no matching state cookie here.
    provider.user = {"sub": "mallory", "roles": ["admin"]}
    page.goto(f"{suite.url}/portal/oidc/callback?code=stolen&state=forged")
    expect(page.get_by_role("alert")).to_contain_text("not started here")
    page.goto(f"{suite.url}/portal/")
    assert "/portal/sign-in" in page.url


def test_an_identity_without_a_role_gets_no_session(
    page: Page, suite: UpSuite, provider: OidcProvider
) -> None:
    provider.user = {"sub": "visitor", "roles": []}
    page.goto(f"{suite.url}/portal/sign-in")
    page.get_by_role("button", name="Sign in with your organisation").click()
    expect(page.get_by_role("alert")).to_contain_text("no role")
    page.goto(f"{suite.url}/portal/")
    assert "/portal/sign-in" in page.url


def test_home_shows_the_work_of_each_role(page: Page, suite: UpSuite, events: list[str]) -> None:
    sign_in(page, suite, suite.create_key("auditor", "ml_engineer", "policy_approver", name="many hats"))
    cards = page.get_by_role("region", name="Your work")
    expect(cards.locator("article", has_text="Latest checkpoint")).to_contain_text(re.compile(r"\d+ leaves"))
    expect(cards.locator("article", has_text="Champion model")).to_contain_text("challenger waiting")
    expect(cards.locator("article", has_text="Policies waiting for review")).to_contain_text(
        re.compile(r"\d")
    )
    expect(cards.locator("article", has_text="Policy drafts")).to_have_count(0)  # not an author
    expect(cards.locator("article", has_text="unavailable")).to_have_count(0)


def test_the_queue_puts_the_riskiest_first(page: Page, suite: UpSuite, events: list[str]) -> None:
    key = suite.create_key("analyst", name="risk")
    headers = {"authorization": f"Bearer {key}"}
    deadline = time.monotonic() + 120
    riskiest: list[dict[str, Any]] = []
    while len(riskiest) < len(events) and time.monotonic() < deadline:  # until every event is scored
        answer = httpx.get(
            f"{suite.url}/v1/events", params={"orderBy": "risk_score desc", "pageSize": 100}, headers=headers
        )
        riskiest = answer.json().get("events", [])
        time.sleep(0.5)
    assert len(riskiest) == len(events)
    scores = [event["metadata"]["riskScore"] for event in riskiest]
    assert scores == sorted(scores, reverse=True)
    sign_in(page, suite, key, then="/portal/events")
    page.get_by_label("Order", exact=True).select_option("riskiest")
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("table caption")).to_have_text("Events, riskiest first")  # the new list is in
    expect(page.locator("tbody tr")).to_have_count(len(events))
    shown = [link.get_attribute("href") for link in page.locator("tbody tr td:nth-child(2) a").all()]
    assert shown == [f"/portal/events/{event['eventId']}" for event in riskiest]
    # The riskiest event's page shows what the model saw.
    page.locator("tbody tr").first.get_by_role("link").click()
    page.get_by_text("What the model saw").click()
    features = riskiest[0]["metadata"]["features"]
    assert features
    expect(page.locator("#features tbody tr")).to_have_count(len(features))
