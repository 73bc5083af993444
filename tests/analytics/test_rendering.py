"""The weekly report's rendering (services/analytics/rendering.py) and its data model: a realistic
sample (12 campaigns, 2,000 people) drawn as HTML, CSV and PDF, read back and checked against
the model's own figures. The PDF is read with poppler's ``pdftotext`` (.ci/run installs it)."""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import random
import re
import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from html.parser import HTMLParser
from pathlib import Path

import pytest

from services.analytics import rendering
from services.analytics.domain.report import (
    DepartmentRow,
    FunnelRow,
    LiveQualityRow,
    LogState,
    ModelHealth,
    RiskRow,
    TrainingRow,
    ViolationRow,
    WeeklyRate,
    WeeklyReport,
    iso_week,
    parse_iso_week,
)

HOSTILE = "<script>alert('x')</script>"
WEEK = "2026-W48"
PEOPLE = 2000

CAMPAIGNS = (
    "invoice-overdue",
    "parcel-delivery-failed",
    "hr-benefits-update",
    "password-expiry",
    "ceo-gift-cards",
    "shared-document",
    "payroll-correction",
    "vpn-client-upgrade",
    "teams-voicemail",
    "mfa-security-alert",
    "expense-rejected",
    "holiday-schedule",
)
DEPARTMENTS = (
    "Accounts Payable",
    "Accounts Receivable",
    "Audit",
    "Board Office",
    "Business Intelligence",
    "Communications",
    "Customer Success",
    "Customer Support",
    "Data Protection",
    "Engineering",
    "Facilities",
    "Finance",
    "Human Resources",
    "Infrastructure",
    "Internal Sales",
    "IT Service Desk",
    "Legal",
    "Logistics",
    "Marketing",
    "Procurement",
    "Product",
    "Quality Assurance",
    "Research",
    "Risk and Compliance",
    "Sales EMEA",
    "Sales Americas",
    "Security Operations",
    "Strategy",
    "Training",
    "Treasury",
)
SUPPRESSED = {"Board Office", "Strategy", "Treasury"}  # fewer than k = 5 people each
MODULES = (
    "Phishing basics",
    "Reporting a suspicious e-mail",
    "Passwords and passkeys",
    "MFA fatigue attacks",
    "Safe file sharing",
    "Clean desk and screen lock",
    "Travelling with devices",
    "Social engineering by phone",
    "Handling personal data",
    "Incident reporting",
)
POLICIES = (
    ("mfa-required", "MFA switched off on an account", "CRITICAL"),
    ("usb-storage-blocked", "USB storage device inserted", "HIGH"),
    ("external-upload", "Upload to an unapproved cloud service", "HIGH"),
    ("credentials-submitted", "Credentials submitted to a phishing page", "CRITICAL"),
    ("unusual-location", "Sign-in from an unusual country", "MEDIUM"),
    ("repeat-clicker", "Third phishing click within 30 days", "HIGH"),
    ("training-overdue-30d", "Mandatory training overdue by 30 days", "MEDIUM"),
    ("password-reuse", "Password reset to a recently used password", "MEDIUM"),
    ("shared-account", "Sign-in to a shared account", "LOW"),
    ("after-hours-export", "Large export outside working hours", "MEDIUM"),
    ("failed-logins", "Ten failed sign-ins in an hour", "LOW"),
    ("policy-not-acknowledged", "Acceptable-use policy not acknowledged", "LOW"),
    ("mail-forwarding-rule", "Auto-forwarding to an external address", "HIGH"),
    ("screen-lock-disabled", "Screen lock disabled on a laptop", "MEDIUM"),
    ("personal-email-upload", "Work file sent to a personal mailbox", "HIGH"),
    ("macro-enabled", "Office macros enabled from an e-mail attachment", "HIGH"),
    ("legacy-auth", "Legacy authentication protocol used", "MEDIUM"),
    ("unmanaged-device", "Sign-in from an unmanaged device", "LOW"),
    ("password-in-ticket", "Password pasted into a support ticket", "MEDIUM"),
    ("data-label-removed", "Confidential label removed from a document", "HIGH"),
)
FACTORS = (
    "clicked 3 phishing links in 30 days",
    "submitted credentials on 2026-11-24",
    "MFA switched off",
    "mandatory training overdue",
    "USB storage inserted twice",
    "upload to an unapproved service",
    "sign-ins from 2 new countries",
)
GENERATED_AT = datetime(2026, 11, 30, 6, 0, tzinfo=UTC)


def sample_report(seed: int = 48) -> WeeklyReport:
    """A realistic week of a programme of 2,000 people: 12 campaigns that sent one e-mail to each
    person, the four weeks before improving, 30 departments (3 smaller than k), 10 modules,
    20 policies violated and the 25 riskiest pseudonyms."""
    rng = random.Random(seed)
    share = [PEOPLE // len(CAMPAIGNS)] * len(CAMPAIGNS)
    share[0] += PEOPLE - sum(share)
    funnels = []
    for campaign, sent in zip(CAMPAIGNS, share, strict=True):
        opened = round(sent * rng.uniform(0.52, 0.74))
        clicked = round(sent * rng.uniform(0.06, 0.21))
        submitted = round(clicked * rng.uniform(0.2, 0.5))
        reported = round(sent * rng.uniform(0.18, 0.42))
        funnels.append(FunnelRow(f"2026-11-{campaign}", sent, opened, clicked, submitted, reported))
    this_week = WeeklyRate(
        WEEK, sum(f.sent for f in funnels), sum(f.clicked for f in funnels), sum(f.reported for f in funnels)
    )
    monday, _ = parse_iso_week(WEEK)
    before = []
    # Click rate falling and report rate rising over the four weeks before this one.
    earlier = ((0.198, 0.164), (0.181, 0.192), (0.166, 0.221), (0.149, 0.246))
    for weeks_back, (click, report) in zip(range(4, 0, -1), earlier, strict=True):
        sent = PEOPLE - rng.randrange(0, 40)
        week = iso_week(monday - timedelta(weeks=weeks_back))
        before.append(WeeklyRate(week, sent, round(sent * click), round(sent * report)))
    sizes = [rng.randrange(1, 5) if name in SUPPRESSED else rng.randrange(25, 110) for name in DEPARTMENTS]
    sizes[DEPARTMENTS.index("Engineering")] += PEOPLE - sum(sizes)
    departments = tuple(
        DepartmentRow(name, people, 0.0, 0.0, 0.0, True)
        if name in SUPPRESSED
        else DepartmentRow(
            name, people, rng.uniform(0.04, 0.26), rng.uniform(0.12, 0.48), rng.uniform(0.55, 0.99), False
        )
        for name, people in zip(DEPARTMENTS, sizes, strict=True)
    )
    training = []
    for module in MODULES:
        assigned = rng.randrange(300, PEOPLE + 1)
        completed = round(assigned * rng.uniform(0.6, 0.97))
        training.append(
            TrainingRow(module, assigned, completed, round((assigned - completed) * rng.uniform(0.2, 0.7)))
        )
    violations = tuple(
        ViolationRow(policy, severity, events)
        for (policy, _title, severity), events in ((p, rng.randrange(1, 90)) for p in POLICIES)
    )
    scores = sorted((rng.uniform(55, 99) for _ in range(25)), reverse=True)
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    riskiest = tuple(
        RiskRow(
            "psn_" + "".join(rng.choice(alphabet) for _ in range(26)),
            round(score, 1),
            "CRITICAL" if score >= 90 else "HIGH" if score >= 70 else "MEDIUM",
            rng.choice(FACTORS),
        )
        for score in scores
    )
    return WeeklyReport.for_week(
        WEEK,
        generated_at=GENERATED_AT,
        k=5,
        funnels=tuple(funnels),
        trend=(*before, this_week),
        departments=departments,
        training=tuple(training),
        violations=violations,
        riskiest=riskiest,
        log_state=LogState(
            size=1_284_312,
            checkpoint_size=1_284_096,
            checkpoint_time=datetime(2026, 11, 30, 5, 58, 12, tzinfo=UTC),
            root_hash_hex=rng.randbytes(32).hex(),
            verified=True,
            note="every leaf up to the checkpoint re-hashed to its signed root",
        ),
        model=ModelHealth(
            "2026.11.30-gb-3f9c1a2b4d5e",
            "live quality on analysts' labels and input drift over the last day",
            card_f1=0.861,
            live=(
                LiveQualityRow("7d", "2026.11.30-gb-3f9c1a2b4d5e", False, 212, 0.83, 0.79, 0.8095),
                LiveQualityRow("7d", "2026.12.05-gb-77a0c3e9f112", True, 180, 0.85, 0.81, 0.8295),
                LiveQualityRow("30d", "2026.11.30-gb-3f9c1a2b4d5e", False, 941, 0.84, 0.8, 0.8195),
                LiveQualityRow("30d", "2026.12.05-gb-77a0c3e9f112", True, 702, 0.86, 0.8, 0.8289),
            ),
            drift_psi=0.142,
            drift_on="hour_of_day",
            drift_level="watch",
        ),
    )


def empty_report() -> WeeklyReport:
    """A programme's first week: nothing sent, no directory, no checkpoint."""
    return WeeklyReport.for_week(
        "2027-W01",
        generated_at=datetime(2027, 1, 11, 7, 30, tzinfo=timezone(timedelta(hours=1))),
        k=5,
        funnels=(),
        trend=(),
        departments=(),
        training=(),
        violations=(),
        riskiest=(),
        log_state=LogState(0, 0, None, "", False, "the log is empty"),
        model=ModelHealth("", "No model is registered."),
    )


@pytest.fixture(scope="module")
def report() -> WeeklyReport:
    return sample_report()


@pytest.fixture(scope="module")
def html(report: WeeklyReport) -> str:
    return rendering.render_html(report).decode("utf-8")


@pytest.fixture(scope="module")
def pdf(report: WeeklyReport) -> bytes:
    return rendering.render_pdf(report)


def _tool(name: str) -> str:
    """The path of a poppler tool; a failure under AWARENESS_REQUIRE_SERVICES=1, else a skip."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("AWARENESS_REQUIRE_SERVICES") == "1":
            pytest.fail(f"{name} is required (AWARENESS_REQUIRE_SERVICES=1): apt-get install poppler-utils")
        pytest.skip(f"{name} not installed (poppler-utils)")
    return path


def _pdftotext(pdf: bytes, tmp_path: Path) -> str:
    source = tmp_path / "report.pdf"
    source.write_bytes(pdf)
    result = subprocess.run(
        [_tool("pdftotext"), "-layout", "-enc", "UTF-8", str(source), "-"],
        capture_output=True,
        check=True,
        timeout=60,
    )
    return result.stdout.decode("utf-8")


def _csv_sections(data: bytes) -> dict[str, list[dict[str, str]]]:
    """Rows by section, each a dict keyed by its section's header row."""
    sections: dict[str, list[dict[str, str]]] = {}
    header: list[str] = []
    for row in csv.reader(io.StringIO(data.decode("utf-8"), newline="")):
        if row[0] == "section":
            header = row[1:]
            continue
        sections.setdefault(row[0], []).append(dict(zip(header, row[1:], strict=True)))
    return sections


# --- the ISO week and the model ---------------------------------------------------------------


def test_an_iso_week_runs_monday_to_sunday() -> None:
    assert parse_iso_week("2026-W48") == (date(2026, 11, 23), date(2026, 11, 29))
    # Week 1 is the week of the year's first Thursday: it may start in December.
    assert parse_iso_week("2025-W01") == (date(2024, 12, 30), date(2025, 1, 5))
    assert parse_iso_week("2021-W01") == (date(2021, 1, 4), date(2021, 1, 10))


def test_only_some_years_have_a_week_53() -> None:
    # 2020 is a leap year starting on a Wednesday, 2026 starts on a Thursday: both have 53 weeks.
    assert parse_iso_week("2020-W53") == (date(2020, 12, 28), date(2021, 1, 3))
    assert parse_iso_week("2026-W53") == (date(2026, 12, 28), date(2027, 1, 3))
    for label in ("2025-W53", "2027-W53", "2021-W53"):
        with pytest.raises(ValueError, match="has no ISO week 53"):
            parse_iso_week(label)


@pytest.mark.parametrize(
    "label",
    ["2026-W00", "2026-W54", "2026-w48", "2026W48", "2026-W5", "26-W48", " 2026-W48", "2026-W48\n", ""],
)
def test_a_malformed_week_label_is_refused(label: str) -> None:
    with pytest.raises(ValueError):
        parse_iso_week(label)


def test_iso_week_labels_a_day_in_its_iso_year() -> None:
    assert iso_week(date(2026, 11, 26)) == "2026-W48"
    assert iso_week(date(2021, 1, 3)) == "2020-W53"
    assert iso_week(date(2024, 12, 30)) == "2025-W01"
    for label in ("2020-W53", "2026-W01", "2026-W48"):
        assert iso_week(parse_iso_week(label)[0]) == label


def test_rates_are_shares_of_the_whole_and_zero_when_nothing_was_sent() -> None:
    row = FunnelRow("c", sent=200, opened=120, clicked=30, submitted=10, reported=50)
    assert (row.open_rate, row.click_rate, row.submit_rate, row.report_rate) == (0.6, 0.15, 0.05, 0.25)
    empty = FunnelRow("c", 0, 0, 0, 0, 0)
    assert (empty.click_rate, empty.submit_rate, empty.report_rate) == (0.0, 0.0, 0.0)
    assert WeeklyRate("2026-W48", 0, 0, 0).click_rate == 0.0
    assert TrainingRow("m", 40, 30, 4).completion_rate == 0.75
    assert TrainingRow("m", 40, 30, 4).overdue_rate == 0.1
    assert TrainingRow("m", 0, 0, 0).overdue_rate == 0.0


def test_a_report_is_refused_when_its_week_dates_or_trend_disagree() -> None:
    report = sample_report()
    with pytest.raises(ValueError, match="runs"):
        dataclasses.replace(report, start=report.start + timedelta(days=1))
    with pytest.raises(ValueError, match="time zone"):
        dataclasses.replace(report, generated_at=datetime(2026, 11, 30, 6, 0))
    with pytest.raises(ValueError, match="end with"):
        dataclasses.replace(report, trend=report.trend[:-1])
    with pytest.raises(ValueError, match="oldest first"):
        dataclasses.replace(report, trend=(report.trend[1], report.trend[0], *report.trend[2:]))
    with pytest.raises(ValueError, match="k must"):
        dataclasses.replace(report, k=0)


# --- HTML -------------------------------------------------------------------------------------


class _Outline(HTMLParser):
    """Section ids in order, column headers without a scope, images without alt, external URLs."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.unscoped: list[str] = []
        self.images: list[dict[str, str | None]] = []
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag in ("section", "header") and values.get("id"):
            self.sections.append(str(values["id"]))
        if tag == "th" and values.get("scope") not in ("col", "row"):
            self.unscoped.append(repr(self.getpos()))
        if tag == "img":
            self.images.append(values)
        for name in ("src", "href"):
            if values.get(name) and not str(values[name]).startswith("data:"):
                self.urls.append(str(values[name]))
        if tag in ("link", "script"):
            self.urls.append(tag)


def test_the_html_has_every_section_in_order_and_needs_nothing_from_outside(html: str) -> None:
    outline = _Outline()
    outline.feed(html)
    assert outline.sections == [
        "summary",
        "funnels",
        "trend",
        "departments",
        "training",
        "violations",
        "risk",
        "model",
        "log",
    ]
    assert outline.urls == []
    assert outline.unscoped == []
    assert len(outline.images) == 2
    for image in outline.images:
        assert str(image["src"]).startswith("data:image/svg+xml;base64,")
        assert len(str(image["alt"])) > 40
    for heading in (
        "Weekly report",
        "Campaign funnels",
        "Report and click rates: this week and the four before",
        "Departments ranked by click rate",
        "Training completion",
        "Policy violations",
        "Riskiest people",
        ">Model<",
        "Event log",
    ):
        assert heading in html
    assert "2026-W48" in html and "Mon 23 Nov 2026 \u2013 Sun 29 Nov 2026" in html
    assert "2026-11-30 06:00 UTC" in html
    assert "Identifiers are never printed" in html


def test_the_html_shows_each_campaigns_figures(report: WeeklyReport, html: str) -> None:
    for row in report.funnels:
        cells = re.search(rf">{re.escape(row.campaign_id)}</th>(.*?)</tr>", html, re.S)
        assert cells is not None
        figures = re.findall(r'<td class="num">([^<]*)</td>', cells.group(1))
        assert figures == [
            f"{row.sent:,}",
            f"{row.opened:,}",
            f"{row.clicked:,}",
            f"{row.submitted:,}",
            f"{row.reported:,}",
            f"{row.click_rate * 100:.1f}%",
            f"{row.report_rate * 100:.1f}%",
        ]


def test_a_hostile_campaign_id_is_escaped_everywhere(report: WeeklyReport) -> None:
    funnels = (
        dataclasses.replace(report.funnels[0], campaign_id=HOSTILE, clicked=report.funnels[0].sent),
        *report.funnels[1:],
    )
    hostile = dataclasses.replace(report, funnels=funnels)
    html = rendering.render_html(hostile).decode("utf-8")
    assert "<script" not in html
    # In the table and in the chart's alt text (this campaign has the highest click rate).
    assert html.count("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;") == 2


def test_suppressed_departments_come_last_and_show_no_figure(report: WeeklyReport, html: str) -> None:
    row = r'<tr( class="suppressed")?>\s*<td class="num">[^<]*</td>\s*<th scope="row">([^<]*)</th>(.*?)</tr>'
    rows = re.findall(row, html, re.S)
    names = [name for _, name, _ in rows]
    assert names[-3:] == sorted(SUPPRESSED)
    shown = {row.department: row for row in report.departments if not row.suppressed}
    assert names[:-3] == sorted(shown, key=lambda name: -shown[name].click_rate)
    for suppressed, name, cells in rows[-3:]:
        assert suppressed
        text = re.sub(r"<[^>]+>", " ", cells)
        assert text.split() == ["Fewer", "than", "5", "people:", "not", "shown"]
        size = next(row.people for row in report.departments if row.department == name)
        assert f">{size}<" not in cells


def test_the_change_from_last_week_is_told_in_points_and_judged(report: WeeklyReport, html: str) -> None:
    this_week, previous = report.trend[-1], report.trend[-2]
    click = round((this_week.click_rate - previous.click_rate) * 100, 1)
    sign = "+" if click > 0 else "\u2212"
    tone = "bad" if click > 0 else "good"
    assert f'<span class="kpi-note {tone}">{sign}{abs(click):.1f} pp from {previous.week}</span>' in html


def test_an_empty_week_renders_in_every_format_without_charts(tmp_path: Path) -> None:
    report = empty_report()
    html = rendering.render_html(report).decode("utf-8")
    assert "<img" not in html
    assert "No campaign sent e-mail this week." in html
    assert "none yet" in html and "Not verified" in html
    assert "2027-01-11 06:30 UTC" in html  # generated at 07:30 +01:00
    sections = _csv_sections(rendering.render_csv(report))
    assert sections["report"] == [
        {
            "week": "2027-W01",
            "start": "2027-01-04",
            "end": "2027-01-10",
            "generated_at": "2027-01-11T06:30:00Z",
            "k": "5",
        }
    ]
    assert "funnel" not in sections
    assert sections["log"][0]["checkpoint_time"] == ""
    text = _pdftotext(rendering.render_pdf(report), tmp_path)
    assert "2027-W01" in text


# --- CSV --------------------------------------------------------------------------------------


def test_the_csv_reads_back_to_the_models_figures(report: WeeklyReport) -> None:
    sections = _csv_sections(rendering.render_csv(report))
    assert list(sections) == [
        "report",
        "funnel",
        "trend",
        "department",
        "training",
        "violation",
        "risk",
        "model",
        "log",
    ]
    funnel = sections["funnel"]
    assert [row["campaign_id"] for row in funnel] == [row.campaign_id for row in report.funnels]
    for parsed, row in zip(funnel, report.funnels, strict=True):
        assert [int(parsed[name]) for name in ("sent", "opened", "clicked", "submitted", "reported")] == [
            row.sent,
            row.opened,
            row.clicked,
            row.submitted,
            row.reported,
        ]
        assert parsed["click_rate"] == f"{row.click_rate:.4f}"
        assert abs(float(parsed["report_rate"]) - row.report_rate) <= 0.00005
        assert re.fullmatch(r"0\.\d{4}", parsed["submit_rate"])
    assert [row["week"] for row in sections["trend"]] == [
        "2026-W44",
        "2026-W45",
        "2026-W46",
        "2026-W47",
        "2026-W48",
    ]
    assert int(sections["trend"][-1]["sent"]) == sum(row.sent for row in report.funnels) == PEOPLE
    assert (
        len(sections["training"]) == 10 and len(sections["violation"]) == 20 and len(sections["risk"]) == 25
    )
    assert [row["severity"] for row in sections["violation"]][:2] == ["CRITICAL", "CRITICAL"]
    assert sections["log"][0]["size"] == "1284312" and sections["log"][0]["verified"] == "true"
    assert sections["log"][0]["checkpoint_time"] == "2026-11-30T05:58:12Z"
    model = sections["model"]
    assert (model[0]["card_f1"], model[0]["drift_psi"], model[0]["drift_on"]) == (
        "0.8610",
        "0.1420",
        "hour_of_day",
    )
    live = [(row["window"], row["scores_of"], row["labelled"], row["f1"]) for row in model[1:]]
    assert live == [
        (
            r.window,
            f"{r.model_version} (challenger)" if r.challenger else r.model_version,
            str(r.labelled),
            f"{r.f1:.4f}",
        )
        for r in report.model.live
    ]


def test_the_html_shows_the_models_live_quality_and_drift(report: WeeklyReport, html: str) -> None:
    section = html[html.index('<section id="model"') : html.index('<section id="log"')]
    assert "0.861" in section and "0.142 on hour_of_day (watch)" in section
    for row in report.model.live:
        assert f"{row.f1:.3f}" in section and f"{row.labelled}" in section
    assert section.count("(challenger, same events)") == 2


def test_the_csv_leaves_suppressed_departments_without_figures(report: WeeklyReport) -> None:
    departments = _csv_sections(rendering.render_csv(report))["department"]
    assert len(departments) == 30
    hidden = [row for row in departments if row["suppressed"] == "true"]
    assert [row["department"] for row in hidden] == sorted(SUPPRESSED)
    for row in hidden:
        assert row["rank"] == row["people"] == row["click_rate"] == row["report_rate"] == ""
        assert row["training_completion"] == ""
    assert [row["rank"] for row in departments[:27]] == [str(n) for n in range(1, 28)]


def test_the_csv_defuses_spreadsheet_formulas(report: WeeklyReport) -> None:
    formula = '=HYPERLINK("http://evil.example","x")'
    funnels = (dataclasses.replace(report.funnels[0], campaign_id=formula), *report.funnels[1:])
    funnel = _csv_sections(rendering.render_csv(dataclasses.replace(report, funnels=funnels)))["funnel"]
    assert funnel[0]["campaign_id"] == "'" + formula
    hostile = (dataclasses.replace(report.funnels[0], campaign_id=HOSTILE), *report.funnels[1:])
    funnel = _csv_sections(rendering.render_csv(dataclasses.replace(report, funnels=hostile)))["funnel"]
    assert funnel[0]["campaign_id"] == HOSTILE  # plain text in a CSV: quoted as needed, not escaped


# --- PDF and determinism ----------------------------------------------------------------------


def test_pdftotext_finds_the_week_and_every_campaigns_funnel(
    report: WeeklyReport, pdf: bytes, tmp_path: Path
) -> None:
    assert pdf.startswith(b"%PDF-")
    text = _pdftotext(pdf, tmp_path)
    assert "2026-W48" in text
    assert "Mon 23 Nov 2026 \u2013 Sun 29 Nov 2026" in text
    lines = text.splitlines()
    for row in report.funnels:
        line = next(line for line in lines if row.campaign_id in line)
        expected = [
            f"{row.sent:,}",
            f"{row.opened:,}",
            f"{row.clicked:,}",
            f"{row.submitted:,}",
            f"{row.reported:,}",
            f"{row.click_rate * 100:.1f}%",
            f"{row.report_rate * 100:.1f}%",
        ]
        assert line.split()[1:] == expected
    for name in SUPPRESSED:
        line = next(line for line in lines if name in line)
        assert line.split() == ["\u2013", *name.split(), "Fewer", "than", "5", "people:", "not", "shown"]
    for risk in report.riskiest:
        assert risk.pseudonym in text
    assert "Page 1 of" in text


def test_the_pdf_carries_the_reports_title_and_creation_date(pdf: bytes, tmp_path: Path) -> None:
    source = tmp_path / "report.pdf"
    source.write_bytes(pdf)
    info = subprocess.run(
        [_tool("pdfinfo"), "-isodates", str(source)], capture_output=True, check=True, timeout=60
    ).stdout.decode("utf-8")
    assert re.search(r"^Title:\s+Awareness weekly report 2026-W48$", info, re.M)
    assert re.search(r"^CreationDate:\s+2026-11-30T06:00:00(Z|\+00)", info, re.M)
    assert re.search(r"^Tagged:\s+yes$", info, re.M)
    assert re.search(r"^Page size:\s+595\.\d+ x 841\.\d+ pts \(A4\)$", info, re.M)


def test_the_same_report_renders_to_the_same_bytes(report: WeeklyReport, html: str, pdf: bytes) -> None:
    again = sample_report()
    assert again == report and again is not report
    assert rendering.render_html(again).decode("utf-8") == html
    assert rendering.render_csv(again) == rendering.render_csv(report)
    assert rendering.render_pdf(again) == pdf
    # ... and a different report does not.
    other = dataclasses.replace(
        report, funnels=(dataclasses.replace(report.funnels[0], clicked=1), *report.funnels[1:])
    )
    assert rendering.render_pdf(other) != pdf


def test_render_dispatches_by_format(report: WeeklyReport, html: str) -> None:
    assert rendering.REPORT_FORMATS == ("html", "pdf", "csv")
    assert rendering.render(report, "html").decode("utf-8") == html
    assert rendering.render(report, "csv") == rendering.render_csv(report)
    assert rendering.media_type("pdf") == "application/pdf"
    assert rendering.media_type("html") == "text/html; charset=utf-8"
    assert rendering.media_type("csv") == "text/csv; charset=utf-8"
    assert rendering.file_name(report, "pdf") == "awareness-report-2026-W48.pdf"
    for bad in ("xlsx", "PDF", ""):
        with pytest.raises(ValueError, match="unknown report format"):
            rendering.render(report, bad)


def _svg_charts(html: str) -> Iterator[bytes]:
    import base64

    for encoded in re.findall(r'src="data:image/svg\+xml;base64,([^"]+)"', html):
        yield base64.b64decode(encoded)


def test_charts_are_svg_without_dates_or_text_to_parse(html: str) -> None:
    charts = list(_svg_charts(html))
    assert len(charts) == 2
    for svg in charts:
        assert b"<svg" in svg and b"<dc:date>" not in svg and b"<script" not in svg
    # A "$" is a character, not mathtext: a campaign named "$$" still renders.
    dollars = dataclasses.replace(
        sample_report(), funnels=(FunnelRow("$x^{2$", 10, 5, 2, 1, 3), *sample_report().funnels[1:])
    )
    assert rendering.render_html(dollars)


def test_the_html_passes_axe_in_chromium(html: str) -> None:
    """WCAG 2.2 AA as axe-core checks it (contrast, table headers, image alternatives, landmarks),
    in the Chromium the portal's browser tests use."""
    from axe_playwright_python.sync_playwright import Axe
    from playwright.sync_api import sync_playwright

    from tests.conftest import _missing
    from tests.portal.browser import WCAG_TAGS
    from tests.portal.conftest import CHROMIUM_ARGS, chromium_path

    path = chromium_path()
    if path is None:
        _missing("a Chromium browser (apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=path, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            # Offline: the document must need nothing from outside, and routing refuses all else.
            page.route("**/*", lambda route: route.abort())
            page.set_content(html, wait_until="load")
            assert page.evaluate("Array.from(document.images).every(image => image.naturalWidth > 0)")
            results = Axe().run(page, options={"runOnly": {"type": "tag", "values": WCAG_TAGS}})
            assert not results.response["violations"], results.generate_report()
        finally:
            browser.close()
