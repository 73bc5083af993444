"""The data protection pages in a real Chromium against the real suite (`awareness up` on
PostgreSQL and Redis): a DPO looks a person up, exports and erases them, changes consent and
retention, and checks the gdpr audit trail; a role without a gdpr permission is kept out.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.portal.browser import accessible, append_events, csp_reports, sign_in, sign_out, wait_checkpointed
from tests.support.suite import Backend, UpSuite, awareness_up

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ERIN = "erin.privacy@example.org"  # erased by the main flow
FRANK = "frank.privacy@example.org"  # looked at by the accessibility check; never erased
TYPES = ("phishing.clicked", "phishing.reported", "training.completed")


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory, backend: Backend) -> Iterator[UpSuite]:
    data_dir = tmp_path_factory.mktemp("privacy")
    # No model is needed here: scoring's start-up training would only compete for the CPU.
    with awareness_up(data_dir, backend, extra_env={"AWARENESS_SCORING_BOOTSTRAP_MODEL": "0"}) as running:
        yield running


@pytest.fixture(scope="module")
def people(suite: UpSuite) -> dict[str, list[str]]:
    """Five events about Erin and three about Frank, checkpointed: each person's event ids."""
    subjects = [ERIN] * 5 + [FRANK] * 3
    ids = append_events(
        suite,
        [
            {
                "type": TYPES[number % len(TYPES)],
                "source": "gophish",
                "subject": subject,
                "occurredAt": f"2026-12-0{number % 5 + 1}T10:{number:02d}:00Z",
                "summary": f"privacy test event {number}",
                "details": {"location": "autumn-office"},
            }
            for number, subject in enumerate(subjects)
        ],
    )
    wait_checkpointed(suite, ids[-1])
    return {ERIN: ids[:5], FRANK: ids[5:]}


def look_up(page: Page, identifier: str) -> str:
    """Look ``identifier`` up from the Data protection page; the pseudonym the page shows."""
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Data protection").click()
    # The link swaps the page in (htmx): filled before the swap lands, the form would be replaced.
    page.wait_for_load_state("networkidle")
    page.get_by_label("Identifier").fill(identifier)
    page.get_by_role("button", name="Look up").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("Person")
    return page.locator("#subject-pseudonym").inner_text()


def test_a_dpo_looks_up_exports_and_erases_a_person(
    page: Page, suite: UpSuite, people: dict[str, list[str]], tmp_path: Path
) -> None:
    blocked = csp_reports(page)
    sign_in(page, suite, suite.create_key("dpo", name="dora"))
    pseudonym = look_up(page, ERIN)
    assert re.fullmatch(r"psn_[a-z2-7]+", pseudonym)
    # The identifier went in the POST body: no address the browser keeps holds it.
    assert "erin" not in page.url and page.url.endswith("/portal/privacy/lookup")
    expect(page.locator("#event-count")).to_have_text("5")
    expect(page.locator("td[data-consent=profiling]")).to_contain_text("allowed (default)")
    expect(page.locator("td[data-consent=training_data]")).to_contain_text("not allowed")
    links = page.locator("main a[href*='/portal/privacy/subjects/']")
    expect(links.first).to_have_attribute("href", f"/portal/privacy/subjects/{pseudonym}")

    # The export arrives as a file named by pseudonym, holding Erin's events and nobody else's.
    with page.expect_download() as download_info:
        page.get_by_label("Reason (optional").fill("Art. 15 request, ticket DPO-124")
        page.get_by_role("button", name="Download export (JSON)").click()
    download = download_info.value
    assert download.suggested_filename == f"export-{pseudonym}.json"
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    document = json.loads(saved.read_text(encoding="utf-8"))
    assert document["subject"]["pseudonym"] == pseudonym
    exported = {event["event_id"]: event for event in document["events"]}
    assert set(people[ERIN]) <= set(exported)
    assert not set(people[FRANK]) & set(exported)
    assert {exported[event_id]["subject"] for event_id in people[ERIN]} == {ERIN}

    # Erin objects to profiling.
    page.get_by_role("button", name="Withdraw consent for profiling").click()
    expect(page.get_by_role("status")).to_have_text("Consent for profiling withdrawn.")
    expect(page.locator("td[data-consent=profiling]")).to_contain_text("not allowed")
    assert "erin" not in page.url

    # A confirmation that is not Erin's pseudonym erases nothing.
    page.get_by_label("Reason", exact=True).fill("Art. 17 request, ticket DPO-123")
    page.get_by_label("To confirm, type the person's pseudonym").fill("ERASE")
    page.get_by_role("button", name="Erase this person").click()
    expect(page.locator("#erase-confirmation-error")).to_contain_text("not the person's pseudonym")
    expect(page.locator("#event-count")).to_have_text("5")
    expect(page.get_by_label("Reason", exact=True)).to_have_value("Art. 17 request, ticket DPO-123")

    page.get_by_label("To confirm, type the person's pseudonym").fill(pseudonym)
    page.get_by_role("button", name="Erase this person").click()
    expect(page.get_by_role("status")).to_contain_text("The person was erased.")
    assert re.search(r"/portal/privacy/erasures/[^/?]+\?done=erased$", page.url)
    expect(page.get_by_role("heading", level=1)).to_have_text(f"Erasure of {pseudonym}")
    expect(page.get_by_text("Art. 17 request, ticket DPO-123")).to_be_visible()
    # The erasure's own entry in the signed log.
    page.get_by_role("link", name=re.compile(r"^event [0-9a-f]{8}$")).click()
    expect(page.get_by_role("heading", level=1)).to_have_text("gdpr.erasure")
    expect(page.get_by_text(re.compile(r"^erasures/"))).to_be_visible()

    # The identifier now leads nowhere; the records list and the pseudonym's page say erased.
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Data protection").click()
    page.get_by_label("Identifier").fill(ERIN)
    page.get_by_role("button", name="Look up").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("No one found")
    page.get_by_role("link", name="erasure records", exact=True).click()
    expect(page.locator("tbody tr", has_text=pseudonym)).to_contain_text("DPO-123")
    page.goto(f"{suite.url}/portal/privacy/subjects/{pseudonym}")
    expect(page.locator("#erasure-status")).to_contain_text("Erased")
    assert blocked == []

    # An analyst, who may read personal data, sees "erased", and the proof still verifies.
    sign_out(page)
    sign_in(page, suite, suite.create_key("analyst", name="ana"), then=f"/portal/events/{people[ERIN][0]}")
    expect(page.locator("strong.erased")).to_have_text("erased")
    evidence = page.locator("[data-evidence]")
    expect(evidence).to_have_attribute("data-verified", "true")
    expect(evidence.locator(".check-fail")).to_have_count(0)


def test_a_dpo_sets_retention_and_sees_the_audit_trail_hold(page: Page, suite: UpSuite) -> None:
    sign_in(page, suite, suite.create_key("dpo", name="rita"), then="/portal/privacy/retention")
    page.get_by_label("Event type").fill("phishing.reported")
    page.get_by_label("Days").fill("400")
    page.get_by_label("Reason", exact=True).fill("works council agreement")
    page.get_by_role("button", name="Save rule").click()
    expect(page.get_by_role("status")).to_have_text("Rule saved.")
    expect(page.locator("tbody tr", has_text="phishing.reported")).to_contain_text("400 days")

    # A dry run first; only then is the real run offered.
    expect(page.get_by_role("button", name="Apply retention now")).to_have_count(0)
    page.get_by_role("button", name="Dry run").click()
    expect(page.get_by_role("status")).to_contain_text("Nothing was changed.")
    would_shred = int(page.locator("#would-shred").inner_text())
    page.get_by_label("Reason for applying now").fill("quarterly review")
    page.get_by_role("button", name="Apply retention now").click()
    expect(page.get_by_role("status")).to_contain_text("Retention applied:")
    assert f"shredded={would_shred}" in page.url

    page.get_by_role("navigation", name="Data protection").get_by_role("link", name="Audit trail").click()
    expect(page.locator("#chain-state")).to_have_attribute("data-intact", "true")
    expect(page.locator("#chain-state")).to_contain_text("back to the first record")
    expect(page.locator("tbody tr", has_text="retention.set_rule")).not_to_have_count(0)
    expect(page.locator(".check-fail")).to_have_count(0)


def test_a_role_without_a_gdpr_permission_is_kept_out(
    page: Page, suite: UpSuite, people: dict[str, list[str]]
) -> None:
    sign_in(page, suite, suite.create_key("policy_author", name="paul"))
    main_nav = page.get_by_role("navigation", name="Main")
    expect(main_nav.get_by_role("link", name="Events")).to_be_visible()
    expect(main_nav.get_by_role("link", name="Data protection")).to_have_count(0)
    response = page.goto(f"{suite.url}/portal/privacy")
    assert response is not None and response.status == 403
    expect(page.get_by_role("heading", level=1)).to_have_text("Your role does not allow this")
    # A forged lookup, with a valid CSRF token, meets the services' own permission checks.
    page.goto(f"{suite.url}/portal/")
    token = page.locator("input[name=csrf_token]").first.input_value()
    for action, form in (
        ("lookup", {"subject": FRANK}),
        ("export", {"subject": FRANK}),
        ("consent", {"subject": FRANK, "purpose": "analytics", "action": "withdraw"}),
    ):
        forged = page.request.post(f"{suite.url}/portal/privacy/{action}", form={**form, "csrf_token": token})
        assert forged.status == 403, (action, forged.status)
        assert "Your role does not allow this" in forged.text()
    assert page.request.get(f"{suite.url}/portal/privacy/erasures").status == 403


def test_the_data_protection_pages_meet_wcag_2_2_aa(
    page: Page, suite: UpSuite, people: dict[str, list[str]]
) -> None:
    sign_in(page, suite, suite.create_key("dpo", name="axe"), then="/portal/privacy")
    accessible(page, "privacy-lookup")
    look_up(page, FRANK)
    expect(page.locator("#event-count")).to_have_text("3")
    # The person page as a refused erasure leaves it: the messages beside their fields.
    page.get_by_label("Reason", exact=True).fill("ticket DPO-9")
    page.get_by_label("To confirm, type the person's pseudonym").fill("ERASE")
    page.get_by_role("button", name="Erase this person").click()
    expect(page.locator("#erase-confirmation-error")).to_be_visible()
    accessible(page, "privacy-person")
    page.goto(f"{suite.url}/portal/privacy/erasures")
    accessible(page, "privacy-erasures")
    page.goto(f"{suite.url}/portal/privacy/retention")
    accessible(page, "privacy-retention")
    page.goto(f"{suite.url}/portal/privacy/audit")
    accessible(page, "privacy-audit")
    page.set_viewport_size({"width": 390, "height": 844})  # a phone, in the dark
    page.emulate_media(color_scheme="dark")
    look_up(page, FRANK)
    accessible(page, "privacy-person-phone-dark")
