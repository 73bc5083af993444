"""The model health page's pure rules: live figures ordered and charted beside the card's, the
reliability curve placed on the unit square, drift ranked and scaled with its thresholds, and the
promotion decisions worded; and the page rendered from them, part by part."""

from __future__ import annotations

import pytest
from awareness.scoring.v1 import scoring_pb2

from services.portal.app import templates
from services.portal.domain import charts, display, model_health

LiveQuality = scoring_pb2.LiveQuality
MODEL, CHALLENGER = LiveQuality.SCORER_MODEL, LiveQuality.SCORER_CHALLENGER
PLOT_HEIGHT = charts.HEIGHT - charts.MARGIN_BOTTOM - charts.MARGIN_TOP


def _live(
    window: str, scorer: LiveQuality.Scorer.ValueType, *, labelled: int = 40, precision: float = 0.8
) -> LiveQuality:
    return LiveQuality(
        window=window,
        scorer=scorer,
        model_version="v-challenger" if scorer == CHALLENGER else "v-model",
        figures=scoring_pb2.QualityFigures(
            labelled_events=labelled,
            true_positives=8,
            false_positives=2,
            true_negatives=28,
            false_negatives=2,
            precision=precision,
            recall=0.8,
            f1=0.8,
            brier_score=0.12,
        ),
    )


CARD = scoring_pb2.QualityFigures(precision=0.9, recall=0.6, f1=0.72)


def test_live_rows_come_shortest_window_first_and_the_model_before_the_challenger() -> None:
    rows = model_health.quality_rows(
        [_live("30d", CHALLENGER), _live("30d", MODEL), _live("7d", CHALLENGER), _live("7d", MODEL)]
    )
    assert [row.label for row in rows] == ["7d model", "7d challenger", "30d model", "30d challenger"]
    assert rows[1].model_version == "v-challenger"
    assert (rows[0].true_positives, rows[0].false_negatives, rows[0].brier_score) == (8, 2, 0.12)


def test_the_quality_chart_groups_precision_recall_and_f1_with_the_card_last() -> None:
    rows = model_health.quality_rows([_live("7d", MODEL, precision=0.5), _live("30d", MODEL)])
    chart = model_health.quality_chart(rows, CARD)
    assert [label.label for label in chart.axis] == ["7d model", "30d model", model_health.CARD_GROUP]
    assert len(chart.rects) == 9  # three bars per group
    assert [rect.css_class for rect in chart.rects[:3]] == ["series-0", "series-1", "series-2"]
    # On a fixed 0 to 1 scale: a precision of 0.5 is half the plot's height.
    assert chart.rects[0].height == pytest.approx(PLOT_HEIGHT * 0.5)
    assert chart.rects[0].tooltip == "7d model Precision: 0.500"
    assert [tick.label for tick in chart.ticks] == ["0", "0.5", "1"]
    assert [entry.label for entry in chart.legend] == ["Precision", "Recall", "F1"]
    assert "card (held-out): Precision 0.900, Recall 0.600, F1 0.720" in chart.summary
    assert not chart.empty


def test_a_window_without_labels_draws_no_bars_and_says_so() -> None:
    rows = model_health.quality_rows([_live("7d", MODEL, labelled=0), _live("30d", MODEL)])
    chart = model_health.quality_chart(rows, CARD)
    assert len(chart.rects) == 6
    assert "7d model: none (no labelled events)" in chart.summary
    # No live label at all: the card's bars alone are nothing to chart.
    nothing = model_health.quality_chart(model_health.quality_rows([_live("7d", MODEL, labelled=0)]), CARD)
    assert nothing.empty


def _bins(*filled: tuple[int, float, float]) -> list[scoring_pb2.CalibrationBin]:
    """Ten equal-width bins, the ``filled`` ones (index, mean score, observed rate) with 5 events."""
    by_index = {index: (mean, rate) for index, mean, rate in filled}
    return [
        scoring_pb2.CalibrationBin(
            lower=index / 10,
            upper=(index + 1) / 10,
            events=5 if index in by_index else 0,
            mean_score=by_index.get(index, (0.0, 0.0))[0],
            observed_rate=by_index.get(index, (0.0, 0.0))[1],
        )
        for index in range(10)
    ]


def test_the_reliability_curve_places_filled_bins_on_the_unit_square() -> None:
    rows = model_health.calibration_rows(_bins((1, 0.15, 0.0), (8, 0.85, 1.0)))
    assert len(rows) == 10
    assert rows[0].mean_score is None and rows[0].events == 0
    chart = model_health.reliability_chart(rows)
    low, high = chart.points
    plot = chart.plot_size
    # x grows with the mean score, y downwards as the observed rate grows (SVG's y points down).
    assert (low.x, low.y) == pytest.approx((chart.left + 0.15 * plot, chart.bottom))
    assert (high.x, high.y) == pytest.approx((chart.left + 0.85 * plot, chart.top))
    assert chart.path == f"{low.x:.1f},{low.y:.1f} {high.x:.1f},{high.y:.1f}"
    assert "scores 0.8 to 0.9: 5 events, mean score 0.850, observed rate 1.000" in chart.summary
    assert not chart.empty
    assert model_health.reliability_chart(model_health.calibration_rows(_bins())).empty


def test_calibration_is_the_models_own_over_30_days() -> None:
    own = _live("30d", MODEL)
    own.figures.calibration.extend(_bins((5, 0.55, 0.6)))
    other = _live("30d", CHALLENGER)
    other.figures.calibration.extend(_bins((2, 0.25, 0.2)))
    rows = model_health.calibration_of([_live("7d", MODEL), other, own])
    assert [row.mean_score for row in rows if row.events] == [0.55]
    unlabelled = _live("30d", MODEL, labelled=0)
    unlabelled.figures.calibration.extend(_bins())
    assert model_health.calibration_of([unlabelled]) == []


def _window(window: str, events: int, score: float | None, **psi: float | None) -> scoring_pb2.DriftWindow:
    reading = scoring_pb2.DriftWindow(window=window, events=events)
    if score is not None:
        reading.score_psi = score
        reading.score_level = model_health.level_of(score)
    for feature, value in psi.items():
        drift = reading.features.add(feature=feature)
        if value is not None:
            drift.psi = value
            drift.level = model_health.level_of(value)
    return reading


@pytest.mark.parametrize(
    ("psi", "level"), [(0.0, "stable"), (0.0999, "stable"), (0.1, "watch"), (0.2499, "watch"), (0.25, "act")]
)
def test_levels_follow_the_watch_and_act_thresholds(psi: float, level: str) -> None:
    assert model_health.level_of(psi) == level


def test_drift_ranks_features_largest_first_with_their_levels_and_thresholds() -> None:
    views = model_health.drift_views(
        [
            _window("1h", 40, None, severity=None, hour_of_day=None),
            _window("24h", 900, 0.04, severity=0.02, hour_of_day=2.6, event_type_index=0.3, is_weekend=0.15),
        ]
    )
    assert [view.window for view in views] == ["24h", "1h"]
    day, hour = views
    assert [row.feature for row in day.features] == [
        "hour_of_day",
        "event_type_index",
        "is_weekend",
        "severity",
    ]
    assert (day.score_psi, day.score_level) == (0.04, "stable")
    assert day.chart is not None and day.measured
    bars = day.chart.bars
    assert [bar.value_text for bar in bars] == ["2.600 act", "0.300 act", "0.150 watch", "0.020 stable"]
    assert [bar.css_class for bar in bars] == ["risk-critical", "risk-critical", "risk-moderate", "series-2"]
    # The axis ends at 1 so the thresholds stay apart: a longer bar is cut there, its value beside it.
    assert [tick.label for tick in day.chart.ticks] == ["0", "0.5", "1+"]
    plot = day.chart.right - day.chart.left
    assert [bar.width for bar in bars[:2]] == pytest.approx([plot, plot * 0.3])
    watch, act = day.chart.thresholds
    assert (watch.label, act.label) == ("0.1 watch", "0.25 act")
    assert act.x - day.chart.left == pytest.approx(plot * 0.25)
    assert [bar.y for bar in bars] == sorted(bar.y for bar in bars)
    assert day.chart.height == day.chart.top + 4 * day.chart.row + model_health.PSI_BOTTOM
    # The last hour had too few events: no chart, and a sentence why.
    assert not hour.measured and hour.chart is None
    assert model_health.unmeasured_reason(hour) == (
        "No reading over the last hour: 40 events scored, and a PSI needs at least 100 "
        "(with fewer it is mostly sampling noise)."
    )


def test_small_drift_still_shows_both_thresholds() -> None:
    (view,) = model_health.drift_views([_window("24h", 500, 0.01, severity=0.02, hour_of_day=0.05)])
    assert view.chart is not None
    assert [tick.label for tick in view.chart.ticks] == ["0", "0.25", "0.5"]
    plot = view.chart.right - view.chart.left
    assert view.chart.bars[0].width == pytest.approx(plot * 0.05 / 0.5)
    assert all(view.chart.left < threshold.x < view.chart.right for threshold in view.chart.thresholds)


def test_no_drift_says_why() -> None:
    challenger = model_health.no_drift_reason(scoring_pb2.Model.STATUS_CHALLENGER)
    assert "only for the champion" in challenger
    champion = model_health.no_drift_reason(scoring_pb2.Model.STATUS_CHAMPION)
    assert "no training distribution" in champion


def test_decisions_read_with_their_figures() -> None:
    promoted = scoring_pb2.PromotionDecision(
        outcome=scoring_pb2.PromotionDecision.OUTCOME_PROMOTED,
        reason="beats the champion",
        champion_version="v-old",
        labelled_events=198,
        champion_f1=0.778,
        challenger_f1=0.9,
        f1_difference_lower=0.005,
        f1_difference_upper=0.25,
        decider="system:nightly",
    )
    undecided = scoring_pb2.PromotionDecision(
        outcome=scoring_pb2.PromotionDecision.OUTCOME_KEPT, reason="fewer than 30 labelled events"
    )
    first, second = model_health.decision_rows([promoted, undecided])
    assert (first.outcome, first.champion_version, first.labelled) == ("promoted", "v-old", 198)
    assert (first.challenger_f1, first.champion_f1, first.interval) == ("0.900", "0.778", "[+0.005, +0.250]")
    assert (second.outcome, second.challenger_f1, second.interval) == ("kept", "—", "—")


# --- the page, rendered -----------------------------------------------------------------------------


def _render(context: dict[str, object]) -> str:
    page = templates().get_template("model_health.html")
    return page.render(
        {"person": None, "csrf_token": "", "path": "/portal/models/v-model/health", "display": display}
        | context
        | {"domain": model_health}
    )


def _full_health() -> scoring_pb2.ModelHealth:
    health = scoring_pb2.ModelHealth(
        name="models/v-model/health",
        status=scoring_pb2.Model.STATUS_CHAMPION,
        decision_threshold=0.5,
        card=CARD,
        live_quality=[_live("7d", MODEL), _live("30d", MODEL), _live("30d", CHALLENGER, precision=0.7)],
        drift=[
            _window("24h", 900, 0.04, severity=0.02, hour_of_day=2.6),
            _window("1h", 40, None, severity=None, hour_of_day=None),
        ],
    )
    health.live_quality[1].figures.calibration.extend(_bins((1, 0.15, 0.2), (8, 0.85, 0.9)))
    health.compute_time.FromSeconds(1_796_000_000)
    return health


def test_the_page_shows_every_part_with_its_chart_and_table() -> None:
    decided = scoring_pb2.ListPromotionDecisionsResponse(
        promotion_decisions=[
            scoring_pb2.PromotionDecision(
                outcome=scoring_pb2.PromotionDecision.OUTCOME_KEPT,
                reason="the interval includes zero",
                champion_version="v-old",
            )
        ]
    )
    html = _render(model_health.page("v-model", _full_health(), decided))
    assert html.count('role="img"') == 3  # quality, reliability, drift over 24 hours
    assert 'id="quality-30d-challenger"' in html
    assert '<td class="numeric" data-figure="precision">0.700</td>' in html
    assert '<td class="numeric" data-figure="f1">0.720</td>' in html  # the card's
    assert html.count("<circle") == 2
    assert "No reading over the last hour: 40 events scored" in html
    assert "2.600 act" in html
    assert "the interval includes zero" in html and "v-old" in html
    assert "unavailable" not in html


def test_a_page_whose_calls_fail_says_so_part_by_part() -> None:
    html = _render(model_health.page("v-model", "unavailable (UNAVAILABLE)", "unavailable (UNAVAILABLE)"))
    for part in ("Live quality", "Calibration", "Input drift", "Promotion decisions"):
        assert f"{part} unavailable (UNAVAILABLE)" in html
    assert 'role="img"' not in html


def test_a_challenger_without_labels_or_drift_says_why() -> None:
    health = scoring_pb2.ModelHealth(
        status=scoring_pb2.Model.STATUS_CHALLENGER,
        decision_threshold=0.5,
        card=CARD,
        live_quality=[_live("7d", MODEL, labelled=0), _live("30d", MODEL, labelled=0)],
    )
    html = _render(model_health.page("v-model", health, scoring_pb2.ListPromotionDecisionsResponse()))
    assert 'role="img"' not in html
    assert "No labelled event in the last 30 days" in html
    assert "only for the champion" in html
    assert "None about this model" in html
