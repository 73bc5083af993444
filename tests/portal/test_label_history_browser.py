"""An event's label and triage history on its portal page, in a real Chromium against the real suite
(`awareness up` on PostgreSQL and Redis).

An analyst labels one event twice, with different triage states; a policy author's forged label
form is refused by ingest (and recorded as refused). An auditor then finds both changes on the event
page, newest first, with who made them, and not the refused one; the analyst, whose role may not
read access records, is told where the history is instead. axe-core checks the page.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import datetime

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from tests.portal.browser import accessible, append_events, sign_in
from tests.support.suite import Backend, UpSuite, awareness_up

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SMALL_MODEL = {
    # A model trained on a small synthetic set, so the suite is quick to start beside the test.
    "AWARENESS_SCORING_SYNTHETIC_PEOPLE": "60",
    "AWARENESS_SCORING_SYNTHETIC_DAYS": "21",
}
NOTE = "spoke with the person on the phone"
# Access records reach the log in batches off the request path.
RECORD_SECONDS = 30.0
WHEN = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2} UTC$")


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory, backend: Backend) -> Iterator[UpSuite]:
    data_dir = tmp_path_factory.mktemp("portal-history")
    with awareness_up(data_dir, backend, extra_env=SMALL_MODEL) as running:
        yield running


def _principal(key: str) -> str:
    return f"apikey:{key.split('_')[1]}"


def _label(page: Page, label: str, triage: str, note: str = "") -> None:
    page.get_by_label("Label", exact=True).select_option(label)
    page.get_by_label("Triage", exact=True).select_option(triage)
    page.get_by_label("Note", exact=True).fill(note)
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("status")).to_have_text("Saved.")


def _records(suite: UpSuite, event_id: str) -> list[dict[str, object]]:
    """The event's ``event.label`` access records through the gateway, once three have arrived."""
    auditor = suite.create_key("auditor", name="records")
    params = {"action": "event.label", "resource": f"events/{event_id}"}
    deadline = time.monotonic() + RECORD_SECONDS
    records: list[dict[str, object]] = []
    with httpx.Client(
        base_url=suite.url, headers={"authorization": f"Bearer {auditor}"}, timeout=30
    ) as client:
        while time.monotonic() < deadline:
            response = client.get("/v1/accessRecords", params=params)
            assert response.status_code == 200, response.text
            records = response.json().get("accessRecords", [])
            if len(records) >= 3:
                return records
            time.sleep(0.5)
    raise AssertionError(f"expected 3 event.label records within {RECORD_SECONDS:g} s, found {records}")


def test_the_auditor_sees_each_change_newest_first(browser: Browser, suite: UpSuite) -> None:
    (event_id,) = append_events(
        suite,
        [
            {
                "type": "phishing.clicked",
                "source": "gophish",
                "subject": "history@example.org",
                "occurredAt": "2026-12-04T10:00:00Z",
                "summary": "label history test",
            }
        ],
    )
    event_page = f"/portal/events/{event_id}"

    # A role that may not label: its forged form is refused by ingest, which records the refusal.
    author = browser.new_context().new_page()
    sign_in(author, suite, suite.create_key("policy_author", name="author"), then=event_page)
    token = author.locator("input[name=csrf_token]").first.input_value()
    forged = author.request.post(
        f"{suite.url}{event_page}:label", form={"label": "true_positive", "csrf_token": token}
    )
    assert forged.status == 403
    author.context.close()

    analyst_key = suite.create_key("analyst", name="ana")
    analyst = browser.new_context().new_page()
    sign_in(analyst, suite, analyst_key, then=event_page)
    _label(analyst, "true_positive", "in_review", NOTE)
    _label(analyst, "false_positive", "closed")
    expect(analyst.locator("#current-label")).to_have_text("false positive")
    expect(analyst.locator("#current-triage")).to_have_text("closed")
    # The analyst's role may not read access records: the page says so instead of a table.
    expect(analyst.locator("#label-history")).to_have_count(0)
    expect(analyst.locator("#history-withheld")).to_contain_text("gdpr:audit")
    analyst.context.close()

    # The log holds the refusal beside the two changes; the page shows the changes alone.
    records = _records(suite, event_id)
    assert sorted(str(record["outcome"]) for record in records) == ["OK", "OK", "PERMISSION_DENIED"]

    auditor = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    sign_in(auditor, suite, suite.create_key("auditor", name="auditor"), then=event_page)
    rows = auditor.locator("#label-history tbody tr")
    expect(rows).to_have_count(2)
    analyst_principal = _principal(analyst_key)
    expect(rows.nth(0).locator("td")).to_have_text([WHEN, analyst_principal, "false positive", "closed"])
    expect(rows.nth(1).locator("td")).to_have_text([WHEN, analyst_principal, "true positive", "in review"])
    newer, older = (
        datetime.fromisoformat(rows.nth(row).locator("time").get_attribute("datetime") or "")
        for row in (0, 1)
    )
    assert newer > older
    # Notes are personal free text: never in the records, so never in the history.
    expect(auditor.locator("#label-history")).not_to_contain_text(NOTE)
    accessible(auditor, "event-history")
    auditor.context.close()
