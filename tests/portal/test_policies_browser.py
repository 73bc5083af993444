"""The policies pages in a real Chromium against the real suite (`awareness up` on PostgreSQL and Redis).

An author drafts a policy while the policy service checks its rule as it is typed, submits it, and
cannot approve it; a second person approves it; a revision then shows as a diff. axe-core checks the
list, a policy's page and the editor against WCAG 2.2 AA.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.portal.browser import accessible, csp_reports, sign_in, sign_out
from tests.support.suite import Backend, UpSuite, awareness_up

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

FIRST_RULE = 'event.type == "phishing.clicked"'
SECOND_RULE = 'event.type == "phishing.clicked" &&\n  event.outside_hours'


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory, backend: Backend) -> Iterator[UpSuite]:
    data_dir = tmp_path_factory.mktemp("portal-policies")
    # No model is needed here: scoring's start-up training would only compete for the CPU.
    with awareness_up(data_dir, backend, extra_env={"AWARENESS_SCORING_BOOTSTRAP_MODEL": "0"}) as running:
        yield running


@dataclass(frozen=True)
class Keys:
    """Two people: an author who also holds the approver's role, and an approver."""

    author: str
    approver: str


@pytest.fixture(scope="module")
def keys(suite: UpSuite) -> Keys:
    # The author may approve policies: only the four-eyes rule stands between her and Approve.
    return Keys(
        author=suite.create_key("policy_author", "policy_approver", name="alice"),
        approver=suite.create_key("policy_approver", name="carol"),
    )


def _signed_in_as(page: Page) -> str:
    """The subject the footer names: what the policy service records as author and approver."""
    return page.locator("footer code").first.inner_text()


def test_an_author_drafts_with_a_live_check_and_someone_else_approves(
    page: Page, suite: UpSuite, keys: Keys
) -> None:
    blocked = csp_reports(page)
    sign_in(page, suite, keys.author, then="/portal/policies")
    author = _signed_in_as(page)
    expect(page.get_by_role("heading", name="Policies", level=1)).to_be_visible()
    page.get_by_role("button", name="New policy").click()
    page.get_by_label("Id", exact=True).fill("after-hours")
    page.get_by_label("Title", exact=True).fill("Phishing click after hours")
    page.get_by_label("Severity", exact=True).select_option("high")

    # The policy service checks the rule as it is typed: first the compiler's message and position...
    rule = page.get_by_label("Rule (CEL)")
    verdict = page.get_by_role("status")
    rule.press_sequentially("event.type == 1")
    expect(verdict).to_contain_text("Line 1, column 12: found no matching overload for '_==_'")
    expect(verdict.locator(".rule-excerpt")).to_contain_text("^")
    # ...then, once the rule is right, that it compiles.
    rule.fill("")
    rule.press_sequentially(FIRST_RULE)
    expect(verdict).to_have_text("✓ Rule compiles.")
    page.get_by_role("button", name="Create the draft").click()
    expect(page.get_by_role("status")).to_contain_text("Draft created.")
    expect(page.locator(".policy-rule")).to_have_text(FIRST_RULE)
    page.get_by_role("button", name="Submit version 1 for review").click()
    expect(page.get_by_role("status")).to_contain_text("Submitted for review.")
    expect(page.locator("#policy-state")).to_have_text("review")

    # She may approve policies, but not one she wrote: no button, and the page says why.
    expect(page.get_by_role("button", name=re.compile("^Approve"))).to_have_count(0)
    expect(page.locator("#approval-barrier")).to_have_text(
        "You wrote this version, so someone else approves it."
    )
    # A forged approval, with the page's own CSRF token, meets the policy service's refusal.
    token = page.locator("input[name=csrf_token]").first.input_value()
    forged = page.request.post(f"{suite.url}/portal/policies/after-hours:approve", form={"csrf_token": token})
    assert forged.status == 403
    assert "You cannot approve this version" in forged.text()
    assert "so someone else approves it" in forged.text()
    assert "SEPARATION_OF_DUTIES" in forged.text()
    page.reload()
    expect(page.locator("#policy-state")).to_have_text("review")
    sign_out(page)

    sign_in(page, suite, keys.approver, then="/portal/policies/after-hours")
    approver = _signed_in_as(page)
    expect(page.locator("#approval-barrier")).to_have_count(0)
    page.get_by_role("button", name="Approve version 1").click()
    expect(page.get_by_role("status")).to_contain_text("Approved")
    expect(page.locator("#policy-state")).to_have_text("active")
    history = page.locator("#history")
    expect(history.locator("li", has_text="submitted version 1")).to_contain_text(author)
    expect(history.locator("li", has_text="approved version 1")).to_contain_text(approver)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Policies").click()
    expect(page.locator("tbody tr", has_text="after-hours")).to_contain_text("active")
    sign_out(page)

    # A revision makes version 2; the diff shows the rule's removed and added lines.
    sign_in(page, suite, keys.author, then="/portal/policies/after-hours")
    page.get_by_role("button", name="Start a revision").click()
    expect(page.get_by_role("status").filter(has_text="Revision started")).to_be_visible()
    page.get_by_label("Rule (CEL)").fill(SECOND_RULE)
    page.get_by_role("button", name="Save the draft").click()
    expect(page.get_by_role("status")).to_contain_text("Draft saved.")
    page.get_by_label("From version").select_option("1")
    page.get_by_label("To version").select_option("2")
    page.get_by_role("button", name="Compare").click()
    expect(page.get_by_role("heading", name="Version 1 → version 2")).to_be_visible()
    removed, added = page.locator(".rule-diff .diff-removed"), page.locator(".rule-diff .diff-added")
    expect(removed).to_have_count(1)
    expect(removed).to_contain_text(FIRST_RULE)
    expect(removed.locator(".diff-marker")).to_have_text("-")
    expect(added).to_have_count(2)
    expect(added.nth(1)).to_contain_text("event.outside_hours")
    expect(added.locator(".diff-marker")).to_have_text(["+", "+"])
    expect(page.locator("#diff-summary")).to_have_text("2 lines added (+), 1 removed (-).")
    assert blocked == []


def test_a_plain_form_with_an_invalid_rule_shows_the_violation(
    page: Page, suite: UpSuite, keys: Keys
) -> None:
    sign_in(page, suite, keys.author, then="/portal/policies:new")
    page.get_by_label("Id", exact=True).fill("usb-at-night")
    page.get_by_label("Title", exact=True).fill("USB at night")
    page.get_by_label("Severity", exact=True).select_option("medium")
    page.get_by_label("Rule (CEL)").fill("event.nope")  # fill() presses no key: no live check runs
    with page.expect_response(re.compile(r"/portal/policies$")) as answer:
        page.get_by_role("button", name="Create the draft").click()
    assert answer.value.status == 400
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("policy.rule")
    expect(alert).to_contain_text("undeclared reference to 'event.nope'")
    expect(page.get_by_label("Rule (CEL)")).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_label("Title", exact=True)).to_have_value("USB at night")
    # The "Check the rule" button is the live check for a browser without JavaScript: a full page.
    page.get_by_label("Rule (CEL)").fill('event.type == "usb.inserted" && event.outside_hours')
    page.get_by_role("button", name="Check the rule").click()
    expect(page.get_by_role("status")).to_have_text("✓ Rule compiles.")
    page.goto(f"{suite.url}/portal/policies/usb-at-night")
    assert "Not found" in page.content(), "a refused or checked draft stores nothing"


def _api(suite: UpSuite, key: str) -> httpx.Client:
    return httpx.Client(base_url=suite.url, headers={"authorization": f"Bearer {key}"}, timeout=30)


def test_the_policies_pages_meet_wcag_2_2_aa(page: Page, suite: UpSuite, keys: Keys) -> None:
    # An active version 1 and a drafted version 2, made through the JSON API.
    with _api(suite, keys.author) as author, _api(suite, keys.approver) as approver:
        created = author.post(
            "/v1/policies",
            params={"policy_id": "mfa-off"},
            json={
                "title": "MFA switched off",
                "rule": 'event.type == "mfa.disabled"',
                "severity": "SEVERITY_HIGH",
            },
        )
        assert created.status_code == 200, created.text
        assert author.post("/v1/policies/mfa-off:submit", json={}).status_code == 200
        assert approver.post("/v1/policies/mfa-off:approve", json={}).status_code == 200
        assert author.post("/v1/policies/mfa-off:revise", json={}).status_code == 200
        edited = author.patch(
            "/v1/policies/mfa-off",
            params={"update_mask": "rule,description"},
            json={
                "rule": 'event.type == "mfa.disabled" &&\n  !event.outside_hours',
                "description": "Daytime only",
            },
        )
        assert edited.status_code == 200, edited.text

    sign_in(page, suite, keys.author, then="/portal/policies")
    expect(page.locator("tbody tr", has_text="mfa-off")).to_have_count(2)  # active v1, draft v2
    accessible(page, "policies")
    page.goto(f"{suite.url}/portal/policies/mfa-off?from=1&to=2")
    expect(page.locator(".rule-diff .diff-added")).to_have_count(2)
    accessible(page, "policy")
    page.goto(f"{suite.url}/portal/policies/mfa-off/edit")
    page.get_by_label("Rule (CEL)").fill("")
    page.get_by_label("Rule (CEL)").press_sequentially("event.hour >")
    expect(page.get_by_role("status")).to_contain_text("Syntax error")
    page.get_by_role("button", name="Save the draft").click()
    expect(page.get_by_role("alert")).to_contain_text("policy.rule")
    accessible(page, "policy-editor")
