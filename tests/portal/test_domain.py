"""The portal's pure rules: queue filters, charts, redirects after sign-in, the JSON a page embeds."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from awareness.ingest.v1 import ingest_pb2

from services.portal.app import _json_script
from services.portal.domain import charts, queue
from services.portal.domain.sessions import csrf_matches, safe_next


def test_filters_become_a_list_request_with_the_whole_last_day() -> None:
    filters = queue.parse_filters(
        {
            "type": " phishing.clicked ",
            "since": "2026-12-01",
            "until": "2026-12-03",
            "risk": "high",
            "triage": "new",
        }
    )
    assert filters.violations == ()
    request = queue.list_request(filters)
    assert request.type == "phishing.clicked"
    assert request.start_time.ToDatetime(tzinfo=UTC) == datetime(2026, 12, 1, tzinfo=UTC)
    assert request.end_time.ToDatetime(tzinfo=UTC) == datetime(2026, 12, 4, tzinfo=UTC)
    assert request.min_risk_level == ingest_pb2.RISK_LEVEL_HIGH
    assert request.triage_state == ingest_pb2.TRIAGE_STATE_NEW
    assert request.page_size == queue.PAGE_SIZE
    assert request.order_by == ""
    assert queue.list_request(queue.parse_filters({"order": "riskiest"})).order_by == "risk_score desc"


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"since": "yesterday"}, "since"),
        ({"risk": "extreme"}, "risk"),
        ({"label": "maybe"}, "label"),
        ({"triage": "open"}, "triage"),
        ({"order": "oldest"}, "order"),
        ({"type": "x" * 201}, "type"),
        ({"since": "2026-12-05", "until": "2026-12-01"}, "until"),
    ],
)
def test_filters_that_do_not_parse_are_named_and_dropped(params: dict[str, str], field: str) -> None:
    filters = queue.parse_filters(params)
    assert [violation.field for violation in filters.violations] == [field]
    assert getattr(filters, field) == ""
    queue.list_request(filters)  # what remains still makes a valid request


def test_filter_links_keep_the_filters_and_drop_empty_ones() -> None:
    filters = queue.parse_filters({"type": "mfa.disabled", "page_token": "abc"})
    assert filters.query() == {"type": "mfa.disabled", "page_token": "abc"}
    assert filters.query(page_token="") == {"type": "mfa.disabled"}
    assert filters.active and not queue.parse_filters({}).active


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/portal/events?type=x", "/portal/events?type=x"),
        ("https://evil.example/portal", "/portal/"),
        ("//evil.example/portal", "/portal/"),
        ("/portal\\@evil.example", "/portal/"),
        ("/v1/events", "/portal/"),
        ("/portal/\r\nSet-Cookie: x", "/portal/"),
        (None, "/portal/"),
    ],
)
def test_sign_in_returns_only_to_portal_pages(target: str | None, expected: str) -> None:
    assert safe_next(target, default="/portal/") == expected


def test_csrf_tokens_must_match_exactly() -> None:
    assert csrf_matches("abc", "abc")
    assert not csrf_matches("abc", "abd")
    assert not csrf_matches("abc", None)
    assert not csrf_matches("", "")


def test_stacked_chart_keeps_the_largest_series_and_sums_the_rest() -> None:
    days = [f"2026-12-0{day}" for day in range(1, 4)]
    points = [("2026-12-01", f"type{number}") for number in range(8) for _ in range(8 - number)]
    chart = charts.stacked_by_day("Per day", days, points)
    legend = [entry.label for entry in chart.legend]
    assert legend == ["type0", "type1", "type2", "type3", "type4", "other"]
    assert len(chart.rects) == 6  # one day has events: one segment per legend entry
    tallest = max(rect.y + rect.height for rect in chart.rects) - min(rect.y for rect in chart.rects)
    assert tallest == pytest.approx((charts.HEIGHT - charts.MARGIN_BOTTOM - charts.MARGIN_TOP) * 36 / 50)
    assert "2026-12-01: 36" in chart.summary and "2026-12-02: 0" in chart.summary


def test_bar_chart_scales_to_a_round_top_and_says_when_empty() -> None:
    chart = charts.bar_chart("Risk", [("low", 3), ("high", 7)])
    assert [tick.label for tick in chart.ticks] == ["0", "5", "10"]
    assert "high: 7 events" in chart.summary
    assert charts.bar_chart("Risk", [("low", 0)]).empty


def test_embedded_json_cannot_close_its_script_element() -> None:
    text = str(_json_script({"note": "</script><script>alert(1)</script>", "amp": "&"}))
    assert "</script" not in text and "<" not in text and "&" not in text
    assert json.loads(text) == {"note": "</script><script>alert(1)</script>", "amp": "&"}
