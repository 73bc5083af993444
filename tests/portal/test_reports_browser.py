"""The programme's Reports page in a real Chromium against the real suite (`awareness up` on
PostgreSQL and Redis, analytics and signing among it).

An auditor, who may read reports but not issue them, sees the Reports tab without the issue form,
and a crafted POST is refused by the analytics service. An analyst (whose role holds
``reports:create``) is told a malformed week beside the input, issues an HTML and a CSV report with
the form (a form sent twice issues one), downloads each file, whose SHA-256 is the one the list
shows, and its evidence, which ``awareness verify --report`` accepts. axe-core checks the page
(WCAG 2.2 AA).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Locator, Page, expect

from services.portal.domain.reports import last_complete_week
from tests.portal.browser import accessible, csp_reports, sign_in
from tests.support.suite import Backend, UpSuite, awareness_up

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPORTS = "/portal/programme/reports"
EVIDENCE_SECONDS = 60.0
SMALL_MODEL = {
    # The default model trains on a small synthetic set, so the suite is quick to start beside the test.
    "AWARENESS_SCORING_SYNTHETIC_PEOPLE": "60",
    "AWARENESS_SCORING_SYNTHETIC_DAYS": "21",
}


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory, backend: Backend) -> Iterator[UpSuite]:
    data_dir = tmp_path_factory.mktemp("portal-reports")
    with awareness_up(data_dir, backend, extra_env=SMALL_MODEL) as running:
        yield running


def _open_reports(page: Page) -> None:
    page.get_by_role("navigation", name="Programme").get_by_role("link", name="Reports").click()
    expect(page.get_by_role("heading", name="Weekly reports")).to_be_visible()


def _csrf_token(page: Page) -> str:
    token = page.locator("form[action='/portal/sign-out'] input[name=csrf_token]").get_attribute("value")
    assert token
    return token


def _issue(page: Page, week: str, file_format: str) -> None:
    form = page.locator("#issue-form")
    form.get_by_label("ISO week").fill(week)
    form.get_by_role("radio", name=file_format.upper()).check()
    form.get_by_role("button", name="Issue the report").click()


def _full_sha256(row: Locator) -> str:
    """The digest as a person reads it: the short form, opened to the full one."""
    row.locator("details.sha256 summary").click()
    full = row.locator("details.sha256 code.digest")
    expect(full).to_be_visible()
    return full.inner_text().strip()


def _evidence_ready(page: Page, href: str) -> None:
    """Until a signed checkpoint covers the report's event; before that the page says so (409)."""
    deadline = time.monotonic() + EVIDENCE_SECONDS
    while True:
        response = page.request.get(href)
        if response.ok:
            return
        assert response.status == 409, response.text()
        assert "The evidence is not ready yet" in response.text()
        assert time.monotonic() < deadline, f"no checkpoint covered {href}"
        time.sleep(0.5)


def _keys(suite: UpSuite, tmp_path: Path) -> Path:
    """The published keys (signing keys and the TSA's CA), as an auditor fetches them."""
    auditor = suite.create_key("auditor", name="keys")
    response = httpx.get(f"{suite.url}/v1/keys", headers={"authorization": f"Bearer {auditor}"}, timeout=30)
    assert response.status_code == 200, response.text
    keys = tmp_path / "keys.json"
    keys.write_text(response.text)
    return keys


def test_an_auditor_reads_reports_but_is_offered_no_form_and_cannot_issue(page: Page, suite: UpSuite) -> None:
    auditor = suite.create_key("auditor", name="audrey")
    sign_in(page, suite, auditor, then="/portal/programme")
    _open_reports(page)
    expect(page.locator("#reports")).to_be_visible()
    expect(page.get_by_role("heading", name="Issue a report")).to_have_count(0)
    expect(page.locator("#issue-form")).to_have_count(0)

    # A POST crafted without the form is refused: the role may not issue reports.
    listed = page.locator("#reports tbody tr[data-report]")
    before = listed.count()
    refused = page.request.post(
        f"{suite.url}{REPORTS}",
        form={
            "csrf_token": _csrf_token(page),
            "week": "",
            "format": "csv",
            "request_id": "7b0e3c55-0f8b-4d7e-9c57-1f1b8a7f4e10",
        },
    )
    assert refused.status == 403, refused.text()
    assert "Your role does not allow this" in refused.text()
    page.reload()
    expect(listed).to_have_count(before)
    # And a POST without the session's CSRF token is refused by the portal itself.
    forged = page.request.post(f"{suite.url}{REPORTS}", form={"csrf_token": "forged", "format": "csv"})
    assert forged.status == 403 and "This form has expired" in forged.text()


def test_an_analyst_issues_downloads_and_verifies_reports(page: Page, suite: UpSuite, tmp_path: Path) -> None:
    analyst = suite.create_key("analyst", name="anna")
    blocked = csp_reports(page)
    sign_in(page, suite, analyst, then="/portal/programme")
    before = last_complete_week(datetime.now(UTC).date())
    _open_reports(page)
    after = last_complete_week(datetime.now(UTC).date())
    form = page.locator("#issue-form")
    week = form.get_by_label("ISO week").input_value()
    assert week in (before, after)
    expect(form.get_by_role("radio", name="PDF")).to_be_checked()
    rows = page.locator("#reports tbody tr[data-report]")
    expect(rows).to_have_count(0)
    expect(page.locator("#reports tbody")).to_contain_text("No report has been issued yet")
    expect(page.locator("#reports tbody")).to_contain_text("Issue one with the form below")

    # A week that does not exist: the service's field violation, under the input; nothing issued.
    _issue(page, "2026-W60", "html")
    week_input = page.locator("#issue-form").get_by_label("ISO week")
    expect(page.locator("#issue-week-error")).to_contain_text("ISO week")
    expect(week_input).to_have_attribute("aria-invalid", "true")
    expect(week_input).to_have_value("2026-W60")
    expect(rows).to_have_count(0)

    # HTML, remembering the form as sent: sent again (a double click), it issues nothing more.
    form.get_by_label("ISO week").fill(week)
    request_id = form.locator("input[name=request_id]").get_attribute("value")
    assert request_id
    _issue(page, week, "html")
    expect(page.locator("#issued-notice")).to_contain_text(f"Issued the html report of {week}")
    expect(rows).to_have_count(1)
    again = page.request.post(
        f"{suite.url}{REPORTS}",
        form={"csrf_token": _csrf_token(page), "week": week, "format": "html", "request_id": request_id},
    )
    assert again.ok, again.text()
    page.reload()
    expect(rows).to_have_count(1)

    _issue(page, week, "csv")
    expect(page.locator("#issued-notice")).to_contain_text(f"Issued the csv report of {week}")
    expect(rows).to_have_count(2)
    # Newest first: the CSV, then the HTML.
    assert [rows.nth(index).locator("td").first.inner_text() for index in range(2)] == ["csv", "html"]
    for index in range(2):
        expect(rows.nth(index).get_by_role("rowheader")).to_have_text(week)
        expect(rows.nth(index)).to_contain_text("apikey:")
    assert blocked == []
    accessible(page, "programme-reports")

    keys = _keys(suite, tmp_path)
    for index, file_format in enumerate(("csv", "html")):
        row = rows.nth(index)
        listed_sha256 = _full_sha256(row)
        expect(row.locator("details.sha256 summary code")).to_have_attribute("title", listed_sha256)
        file_name = f"awareness-report-{week}.{file_format}"
        with page.expect_download() as downloading:
            row.get_by_role("link", name=file_name).click()
        assert downloading.value.suggested_filename == file_name
        report = tmp_path / file_format / file_name
        report.parent.mkdir()
        downloading.value.save_as(report)
        assert hashlib.sha256(report.read_bytes()).hexdigest() == listed_sha256

        evidence_link = row.get_by_role("link", name="evidence")
        href = evidence_link.get_attribute("href")
        assert href
        _evidence_ready(page, f"{suite.url}{href}")
        with page.expect_download() as downloading:
            evidence_link.click()
        assert downloading.value.suggested_filename == f"{file_name}.evidence.json"
        evidence = tmp_path / file_format / f"{file_name}.evidence.json"
        downloading.value.save_as(evidence)

        verified = suite.cli(
            "verify", "--report", str(report), "--evidence", str(evidence), "--keys", str(keys)
        )
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert "FAIL" not in verified.stdout, verified.stdout
        # A changed copy is refused with the same evidence.
        changed = tmp_path / file_format / f"changed-{file_name}"
        changed.write_bytes(report.read_bytes() + b"\n")
        refused = suite.cli(
            "verify", "--report", str(changed), "--evidence", str(evidence), "--keys", str(keys)
        )
        assert refused.returncode == 1 and "FAIL" in refused.stdout, refused.stdout

    # The refused week once more, for axe to check the form with its error.
    _issue(page, "2026-W60", "pdf")
    expect(page.locator("#issue-week-error")).to_be_visible()
    accessible(page, "programme-reports-invalid")

    # An unknown report: "Not found", not a failure behind the portal.
    missing = page.request.get(f"{suite.url}{REPORTS}/00000000-0000-4000-8000-000000000000/evidence")
    assert missing.status == 404, missing.text()
