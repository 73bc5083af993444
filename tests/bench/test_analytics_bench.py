"""bench/analytics.py: the programme it folds, and a tiny run's table and JSON (their shape, not speed)."""

from __future__ import annotations

import json
import random
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bench import analytics

NOW = datetime(2026, 12, 6, 12, tzinfo=UTC)


def test_the_programme_has_every_campaign_sent_to_everyone_and_fills_up_with_background() -> None:
    planned = analytics.programme(events=60_000, subjects=400, now=NOW)
    assert len(planned) == 60_000
    assert [fact.occurred_us for fact in planned] == sorted(fact.occurred_us for fact in planned)
    types = Counter(fact.type for fact in planned)
    assert types["phishing.email_sent"] == analytics.CAMPAIGNS * 400
    assert types["phishing.email_opened"] > types["phishing.clicked"] > types["phishing.submitted_data"] > 0
    assert types["phishing.reported"] > 0
    assert types["training.assigned"] == len(analytics.MODULES) * 400
    assert types["training.completed"] > types["training.overdue"] > 0
    assert types["login.failed"] > types["mfa.disabled"] > 0
    campaigns = {fact.dimensions["campaign_id"] for fact in planned if fact.type.startswith("phishing.")}
    assert len(campaigns) == analytics.CAMPAIGNS
    assert {fact.person for fact in planned} == set(range(400))
    assert any(fact.violation for fact in planned) and any(fact.risk is not None for fact in planned)
    # Thirteen weeks up to now, never in the future.
    span_days = (planned[-1].occurred_us - planned[0].occurred_us) / analytics.DAY_US
    assert 80 < span_days <= analytics.WEEKS * 7
    assert planned[-1].occurred_us < NOW.timestamp() * 1_000_000


def test_departments_are_skewed_with_two_below_k() -> None:
    departments = analytics.departments_of(5000, random.Random(3))
    sizes = Counter(departments)
    assert len(departments) == 5000
    assert len(sizes) == analytics.DEPARTMENTS
    assert sorted(sizes.values())[:2] == [analytics.SMALL_DEPARTMENT] * 2
    assert max(sizes.values()) > 5 * sorted(sizes.values())[len(sizes) // 2]


def test_cold_batches_end_with_the_last_first_sight() -> None:
    planned = analytics.programme(events=5_000, subjects=100, now=NOW)
    cold = analytics.cold_batches(planned, batch=500)
    seen_before = {fact.person for fact in planned[: (cold - 1) * 500]}
    assert len(seen_before) < 100
    assert {fact.person for fact in planned[: cold * 500]} == set(range(100))


def test_a_tiny_run_prints_every_row_with_its_figures_and_writes_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Shape only: speed is for `make bench-analytics` to report, never for a test to assert.
    argv = ["--events", "2000", "--subjects", "50", "--queries", "20", "--list-calls", "5"]
    assert analytics.main([*argv, "--out-dir", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("analytics benchmark, ") and " cores" in lines[0]
    assert "2,000 facts about 50 people" in lines[1]
    assert "folded 2,000, duplicates 0, excluded 0" in lines[1]
    rows = [line for line in lines if line.startswith("| ") and not line.startswith("| measure")]
    measures = [row.split(" | ")[0].lstrip("| ") for row in rows if not row.startswith("| ---")]
    for expected in (
        "fold rate, cold",
        "fold rate, warm",
        "fold rate, all: 2,000 facts in 4 batches",
        "RecordEvents (500/batch), all, p50 / p99 ms",
        "GetSubjectRisk, cold (first call per pseudonym), p50 / p99 ms",
        "GetSubjectRisk, warm (second call), requests/s",
        "ListSubjectRisks, first page of 50, p50 / p99 ms",
        "weekly report ",
    ):
        assert any(measure.startswith(expected) for measure in measures), expected
    reports = [row for row in rows if row.startswith("| weekly report")]
    assert [", html, " in reports[0], ", pdf, " in reports[1]] == [True, True]
    for row in rows[1:]:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert len(cells) == 6
        assert cells[1] not in {"", "nan", "nan / nan"}
    written = json.loads(next(tmp_path.glob("analytics-*.json")).read_text())
    assert written["events"] == 2000 and written["fold_counts"]["folded"] == 2000
    assert {step["name"] for step in written["steps"]} >= {"fold, all", "plain INSERT, all", "health check"}
    assert [report["format"] for report in written["reports"]] == ["html", "pdf"]
    assert all(report["size_bytes"] > 0 for report in written["reports"])
