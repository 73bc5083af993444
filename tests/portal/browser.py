"""What the portal's browser tests share: signing in as a person would, the accessibility check
with a screenshot, and Content Security Policy reports."""

from __future__ import annotations

import time

import httpx
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Page, expect

from tests.portal.conftest import SCREENSHOTS
from tests.support.suite import UpSuite

WCAG_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa"]


def sign_in(page: Page, suite: UpSuite, key: str, *, then: str = "/portal/") -> None:
    """Sign in on the sign-in page with ``key``, as a person pastes it, and land on ``then``."""
    page.goto(f"{suite.url}/portal/sign-in?next={then}")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in", exact=True).click()
    page.wait_for_load_state("networkidle")


def sign_out(page: Page) -> None:
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_text("You are signed out.")).to_be_visible()


def accessible(page: Page, name: str) -> None:
    """No WCAG 2.2 AA violation axe-core can find on this page; a screenshot in var/screenshots.

    axe injects styles the CSP blocks (and reports): keep this out of tests that assert no report.
    """
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
    results = Axe().run(page, options={"runOnly": {"type": "tag", "values": WCAG_TAGS}})
    assert not results.response["violations"], results.generate_report()


def csp_reports(page: Page) -> list[str]:
    """The Content Security Policy reports the page logs from now on (the list fills as it runs)."""
    found: list[str] = []
    page.on(
        "console",
        lambda message: found.append(message.text) if "Content Security Policy" in message.text else None,
    )
    return found


def append_events(suite: UpSuite, events: list[dict[str, object]]) -> list[str]:
    """Append events through the gateway as an integration; their ids."""
    key = suite.create_key("integration", name="loader")
    ids = []
    with httpx.Client(base_url=suite.url, headers={"authorization": f"Bearer {key}"}, timeout=30) as client:
        for event in events:
            response = client.post("/v1/events", json=event)
            assert response.status_code == 200, response.text
            ids.append(response.json()["receipt"]["eventId"])
    return ids


def wait_checkpointed(suite: UpSuite, event_id: str, *, timeout: float = 60.0) -> None:
    """Until the event is in a signed checkpoint (its proof can then be checked)."""
    key = suite.create_key("auditor", name="waiter")
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=suite.url, headers={"authorization": f"Bearer {key}"}, timeout=30) as client:
        while time.monotonic() < deadline:
            if client.get(f"/v1/events/{event_id}/receipt").json().get("state") == "STATE_CHECKPOINTED":
                return
            time.sleep(0.5)
    raise AssertionError(f"event {event_id} was not checkpointed within {timeout:g} s")
