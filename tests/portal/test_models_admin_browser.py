"""The portal's models and admin areas in a real Chromium against the real suite (`awareness up` on
PostgreSQL and Redis).

An ML engineer trains a challenger, compares its shadow scores with the champion's and promotes it;
an administrator creates an API key, sees it once, watches it sign in and revokes it; an analyst
finds neither the admin area nor a way around it. axe-core checks each main page (WCAG 2.2 AA).

The suite trains no default model (it takes a minute here) and trains on a small synthetic set,
so each TrainModel call takes seconds; the champion is trained and promoted through the API.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from tests.portal.browser import accessible, csp_reports, sign_in
from tests.support.suite import Backend, UpSuite, awareness_up

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SMALL_TRAINING = {
    "AWARENESS_SCORING_BOOTSTRAP_MODEL": "0",
    "AWARENESS_SCORING_SYNTHETIC_PEOPLE": "60",
    "AWARENESS_SCORING_SYNTHETIC_DAYS": "21",
}
TRAINING_SECONDS = 180.0
# The gateway trusts a verified key this long (AWARENESS_GATEWAY_KEY_CACHE_SECONDS), plus slack.
REVOCATION_SECONDS = 6.5


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory, backend: Backend) -> Iterator[UpSuite]:
    data_dir = tmp_path_factory.mktemp("portal-models-admin")
    with awareness_up(data_dir, backend, extra_env=SMALL_TRAINING) as running:
        yield running


def _ok(response: httpx.Response) -> Any:
    assert response.status_code == 200, f"{response.request.method} {response.request.url}: {response.text}"
    return response.json()


@pytest.fixture(scope="module")
def ml_key(suite: UpSuite) -> str:
    return suite.create_key("ml_engineer", name="mel")


@pytest.fixture(scope="module")
def champion(suite: UpSuite, ml_key: str) -> str:
    """A model trained and promoted through the API: the champion the challenger meets."""
    headers = {"authorization": f"Bearer {ml_key}"}
    with httpx.Client(base_url=suite.url, headers=headers, timeout=TRAINING_SECONDS) as client:
        model = _ok(client.post("/v1/models:train", json={"algorithms": ["gradient_boosting"], "cvFolds": 2}))
        _ok(client.post(f"/v1/{model['name']}:promote", json={}))
    return str(model["version"])


def _wait_for_shadow_scores(suite: UpSuite, ml_key: str, version: str, *, timeout: float = 60.0) -> None:
    """Append events until the challenger has scored some in shadow (the scoring replica loads a new
    challenger within seconds; what it scored before that has no shadow score)."""
    integration = suite.create_key("integration", name="loader")
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=suite.url, timeout=30) as client:
        while time.monotonic() < deadline:
            for number in range(3):
                event = {
                    "type": "login.failed" if number else "phishing.clicked",
                    "source": "gophish",
                    "subject": f"person{number}@example.org",
                    "occurredAt": f"2026-12-01T0{number}:15:00Z",
                    "summary": "shadow scoring test",
                }
                _ok(client.post("/v1/events", json=event, headers={"authorization": f"Bearer {integration}"}))
            time.sleep(1.0)
            shadow = _ok(
                client.get(
                    f"/v1/models/{version}/shadowScores", headers={"authorization": f"Bearer {ml_key}"}
                )
            )
            if shadow.get("shadowScores"):
                return
    raise AssertionError(f"no shadow scores of {version} within {timeout:g} s")


def test_an_ml_engineer_trains_compares_and_promotes_a_challenger(
    page: Page, suite: UpSuite, ml_key: str, champion: str
) -> None:
    blocked = csp_reports(page)
    sign_in(page, suite, ml_key, then="/portal/models")
    expect(page.get_by_role("heading", name="Models", exact=True)).to_be_visible()
    expect(page.locator("#current-champion")).to_contain_text(champion)
    expect(page.locator("#train-note")).to_contain_text("This takes minutes")

    # Train a challenger through the form: one algorithm, two folds, another seed than the champion's.
    page.get_by_label("Gradient boosting").check()
    page.get_by_label("Cross-validation folds").fill("2")
    page.get_by_label("Random seed").fill("11")
    started = time.monotonic()
    page.get_by_role("button", name=re.compile("^Train")).click()
    expect(page.get_by_role("status")).to_contain_text(
        "Trained and registered", timeout=TRAINING_SECONDS * 1000
    )
    trained_in = time.monotonic() - started
    expect(page.locator("#model-state")).to_have_text("challenger")
    challenger = page.url.rsplit("/", 1)[1].split("?", 1)[0]
    assert challenger != champion, f"trained in {trained_in:.1f} s"
    # The card: metrics beside the baseline, parity, and the feature importances as a chart.
    expect(page.locator("#metrics")).to_contain_text("ROC AUC")
    expect(page.locator("#parity")).to_contain_text("within")
    chart = page.get_by_role("img", name=re.compile("^Feature importance"))
    expect(chart).to_be_visible()
    expect(page.locator("#importances tbody tr")).to_have_count(18)
    expect(page.locator("#shadow-summary")).to_contain_text("No shadow scores yet")

    _wait_for_shadow_scores(suite, ml_key, challenger)
    page.reload()
    expect(page.locator("#agreement-rate")).to_contain_text(re.compile(r"^\d+\.\d %$"))
    expect(page.locator("#mean-difference")).to_contain_text(re.compile(r"^0\.\d{3}$"))
    expect(page.locator("#shadow-levels tbody tr")).to_have_count(4)

    # Promote, through the confirmation page.
    page.get_by_role("button", name="Promote to champion…").click()
    expect(page.get_by_role("heading", level=1)).to_have_text(f"Promote {challenger} over {champion}?")
    page.get_by_role("button", name="Confirm: promote").click()
    expect(page.get_by_role("status")).to_contain_text(f"Promoted {challenger}")
    expect(page.locator("#current-champion")).to_contain_text(challenger)
    registry = page.locator("#registry tbody")
    expect(registry.locator("tr", has_text=challenger)).to_contain_text("champion")
    expect(registry.locator("tr", has_text=champion)).to_contain_text("retired")
    assert blocked == []


def test_an_admin_creates_a_key_that_signs_in_and_revokes_it(
    page: Page, browser: Browser, suite: UpSuite
) -> None:
    blocked = csp_reports(page)
    admin_key = suite.create_key("admin", name="ada")
    sign_in(page, suite, admin_key, then="/portal/admin")
    expect(page.get_by_role("heading", name="API keys")).to_be_visible()
    page.get_by_label("Name").fill("temporary analyst")
    page.get_by_label("analyst", exact=True).check()
    page.get_by_label("Expires after (days)").fill("2")
    form = page.locator("#create-key")
    sent = {name: form.locator(f"input[name={name}]").input_value() for name in ("csrf_token", "form_id")}
    page.get_by_role("button", name="Create key").click()
    expect(page.get_by_role("heading", name="Key created")).to_be_visible()
    expect(page.locator("#once-warning")).to_contain_text("shown only this once")
    token = page.get_by_label("The new API key").input_value()
    key_id = token.split("_")[1]
    assert token.startswith("awk_")
    # Once: a reload shows the list, not the key.
    page.reload()
    expect(page.get_by_role("heading", name="API keys")).to_be_visible()
    expect(page.locator(f"#key-{key_id}")).to_contain_text("active")
    assert token not in page.content()
    # Without JavaScript a reload sends the form again: it creates no second key and shows none.
    resent = page.request.post(
        f"{suite.url}/portal/admin/keys", form={**sent, "name": "temporary analyst", "roles": "analyst"}
    )
    assert resent.status == 409
    assert key_id in resent.text() and token not in resent.text()
    page.reload()
    expect(page.locator("#keys tbody tr", has_text="temporary analyst")).to_have_count(1)

    holder = browser.new_context()
    try:
        other = holder.new_page()
        sign_in(other, suite, token)
        expect(other.get_by_role("heading", name="Home")).to_be_visible()

        page.locator(f"#key-{key_id}").get_by_role("link", name=re.compile("^Revoke")).click()
        expect(page.get_by_role("heading", level=1)).to_have_text(f"Revoke key {key_id}?")
        page.get_by_role("button", name="Confirm: revoke").click()
        revoked_at = time.monotonic()
        expect(page.get_by_role("status")).to_contain_text(f"Revoked key {key_id}")
        expect(page.locator(f"#key-{key_id}")).to_contain_text("revoked")

        # The holder's next page after the key cache's lifetime lands on the sign-in page.
        while "/portal/sign-in" not in other.url and time.monotonic() - revoked_at < REVOCATION_SECONDS + 5:
            time.sleep(0.5)
            other.goto(f"{suite.url}/portal/")
        ended_after = time.monotonic() - revoked_at
        assert "/portal/sign-in" in other.url
        assert ended_after < REVOCATION_SECONDS, f"the session outlived the revocation by {ended_after:.1f} s"
        expect(other.get_by_text("The API key you signed in with was revoked.")).to_be_visible()
    finally:
        holder.close()

    # Both changes are in the audit trail, under the administrator's name.
    auditor = suite.create_key("auditor", name="watcher")
    admin_principal = f"apikey:{admin_key.split('_')[1]}"
    deadline = time.monotonic() + 30
    found: dict[str, str] = {}
    with httpx.Client(
        base_url=suite.url, headers={"authorization": f"Bearer {auditor}"}, timeout=30
    ) as client:
        while len(found) < 2 and time.monotonic() < deadline:
            records = _ok(client.get("/v1/accessRecords", params={"resource": f"apiKeys/{key_id}"}))
            found = {record["action"]: record["principal"] for record in records.get("accessRecords", [])}
            time.sleep(0.5)
    assert found == {"api_key.create": admin_principal, "api_key.revoke": admin_principal}
    assert blocked == []


def test_an_analyst_finds_no_admin_area_and_no_way_around_it(
    page: Page, suite: UpSuite, champion: str
) -> None:
    sign_in(page, suite, suite.create_key("analyst", name="ana"))
    expect(page.get_by_role("link", name="Models")).to_be_visible()
    expect(page.get_by_role("link", name="Admin")).to_have_count(0)
    refused = page.goto(f"{suite.url}/portal/admin")
    assert refused is not None and refused.status == 403
    token = page.locator("input[name=csrf_token]").first.input_value()
    name = f"forged-{uuid.uuid4().hex[:8]}"
    forged = page.request.post(
        f"{suite.url}/portal/admin/keys",
        form={"csrf_token": token, "name": name, "roles": "admin", "form_id": str(uuid.uuid4())},
    )
    assert forged.status == 403
    assert "Your role does not allow this" in forged.text()
    listed = suite.cli("keys", "list")
    assert listed.returncode == 0 and name not in listed.stdout

    # Models: the registry reads, but neither training nor promotion is offered, and the scoring
    # service refuses a forged promotion itself.
    page.goto(f"{suite.url}/portal/models")
    expect(page.get_by_role("heading", name="Registry")).to_be_visible()
    expect(page.get_by_role("button", name=re.compile("^Train"))).to_have_count(0)
    page.goto(f"{suite.url}/portal/models/{champion}")
    expect(page.get_by_role("button", name="Promote to champion…")).to_have_count(0)
    promoted = page.request.post(
        f"{suite.url}/portal/models/{champion}:promote",
        form={"csrf_token": token, "confirm": "yes", "request_id": str(uuid.uuid4())},
    )
    assert promoted.status == 403
    assert "Your role does not allow this" in promoted.text()


def test_models_and_admin_pages_meet_wcag_2_2_aa(page: Page, suite: UpSuite, champion: str) -> None:
    # axe-core injects its own styles, which the CSP blocks and reports: checked apart from the flows.
    sign_in(page, suite, suite.create_key("admin", name="axe"), then="/portal/models")
    accessible(page, "models")
    page.locator("#registry tbody tr").first.get_by_role("link").click()
    expect(page.get_by_role("img", name=re.compile("^Feature importance"))).to_be_visible()
    accessible(page, "model-card")
    page.set_viewport_size({"width": 390, "height": 844})  # a phone
    accessible(page, "model-card-phone")
    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto(f"{suite.url}/portal/models/{champion}")  # retired by now, or the champion if run alone
    accessible(page, "model-card-other")
    page.goto(f"{suite.url}/portal/admin")
    expect(page.locator("#keys tbody tr").first).to_be_visible()
    accessible(page, "admin-keys")
    page.goto(f"{suite.url}/portal/admin/health")
    expect(page.locator("#health tbody tr")).to_have_count(8)
    expect(page.locator("#health")).not_to_contain_text("needs attention")
    accessible(page, "admin-health")
