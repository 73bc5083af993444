"""Live quality figures (services/scoring/domain/quality.py) and how model health picks its scores
(services/scoring/health.py live_quality), against hand-computed values."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sklearn.metrics import brier_score_loss, f1_score, precision_score, recall_score

from services.scoring.domain.quality import CALIBRATION_BINS, quality
from services.scoring.health import LabelledEvent, live_quality
from services.scoring.repository import ShadowPair

NOW = datetime(2026, 12, 6, 12, tzinfo=UTC)


def test_counts_and_rates_at_the_threshold_match_scikit_learn() -> None:
    scores = [0.9, 0.8, 0.5, 0.49, 0.2, 0.7, 0.1, 0.95, 0.3, 0.6]
    labels = [1, 0, 1, 1, 0, 1, 0, 1, 0, 0]
    figures = quality(scores, labels, threshold=0.5)
    predicted = [int(s >= 0.5) for s in scores]
    assert (figures.true_positives, figures.false_positives) == (4, 2)
    assert (figures.true_negatives, figures.false_negatives) == (3, 1)
    assert figures.precision == pytest.approx(precision_score(labels, predicted), abs=1e-12)
    assert figures.recall == pytest.approx(recall_score(labels, predicted), abs=1e-12)
    assert figures.f1 == pytest.approx(f1_score(labels, predicted), abs=1e-12)
    assert figures.brier_score == pytest.approx(brier_score_loss(labels, scores), abs=1e-12)


def test_the_reliability_curve_bins_scores_by_tenths_with_one_in_the_last_bin() -> None:
    figures = quality([0.05, 0.07, 0.55, 1.0, 0.999], [0, 1, 1, 1, 0], threshold=0.5)
    assert len(figures.calibration) == CALIBRATION_BINS
    first, sixth, last = figures.calibration[0], figures.calibration[5], figures.calibration[-1]
    assert (first.events, first.observed_rate) == (2, 0.5)
    assert first.mean_score == pytest.approx(0.06)
    assert (sixth.events, sixth.observed_rate) == (1, 1.0)
    assert (last.lower, last.upper, last.events, last.observed_rate) == (0.9, 1.0, 2, 0.5)
    assert sum(b.events for b in figures.calibration) == 5


def test_nothing_labelled_or_nothing_predicted_gives_zeros_not_errors() -> None:
    empty = quality([], [], threshold=0.5)
    assert (empty.labelled_events, empty.precision, empty.recall, empty.f1, empty.brier_score) == (
        0,
        0,
        0,
        0,
        0,
    )
    none_predicted = quality([0.1, 0.2], [1, 0], threshold=0.5)
    assert (none_predicted.precision, none_predicted.recall, none_predicted.f1) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError):
        quality([0.1], [1, 0], threshold=0.5)


def labelled(
    event_id: str, *, days_ago: float, label: int, score: float | None, version: str
) -> LabelledEvent:
    occurred = NOW - timedelta(days=days_ago)
    return LabelledEvent(
        event_id=event_id,
        pseudonym=f"psn_{event_id}",
        occurred_us=int(occurred.timestamp() * 1_000_000),
        label=label,
        label_us=int(NOW.timestamp() * 1_000_000),
        served_score=score,
        served_version=version if score is not None else "",
    )


def test_the_model_is_measured_on_what_it_served_and_the_challenger_on_the_same_events() -> None:
    events = [
        labelled("a", days_ago=1, label=1, score=0.9, version="champ"),
        labelled("b", days_ago=2, label=0, score=0.7, version="champ"),
        labelled("c", days_ago=10, label=1, score=0.2, version="champ"),  # 30d only
        labelled("d", days_ago=3, label=1, score=0.8, version="older"),  # served by another model
        labelled("e", days_ago=3, label=0, score=None, version=""),  # never scored
    ]
    shadows = [
        ShadowPair("a", "champ", "chall", 0.6, 10),
        ShadowPair("b", "champ", "chall", 0.3, 11),
        ShadowPair("c", "champ", "chall", 0.9, 12),
        ShadowPair("a", "champ", "stale", 0.1, 1),  # an earlier challenger: not the newest
        ShadowPair("d", "older", "champ", 0.4, 5),  # the model's own shadow score, as challenger then
    ]
    rows = {
        (r.window, r.challenger): r
        for r in live_quality(events, shadows, version="champ", threshold=0.5, now=NOW)
    }
    own_7d = rows[("7d", False)].figures
    assert own_7d.labelled_events == 3  # a, b served; d scored in shadow
    assert (own_7d.true_positives, own_7d.false_positives, own_7d.false_negatives) == (1, 1, 1)
    own_30d = rows[("30d", False)].figures
    assert own_30d.labelled_events == 4 and own_30d.false_negatives == 2
    challenger_7d = rows[("7d", True)]
    assert challenger_7d.model_version == "chall"
    assert challenger_7d.figures.labelled_events == 2  # the events champ served in the window
    assert (challenger_7d.figures.true_positives, challenger_7d.figures.true_negatives) == (1, 1)
    assert rows[("30d", True)].figures.recall == 1.0  # c: 0.9 from the challenger


def test_a_model_without_a_challenger_beside_it_has_its_own_rows_only() -> None:
    events = [labelled("a", days_ago=1, label=1, score=0.9, version="champ")]
    rows = live_quality(events, [], version="champ", threshold=0.5, now=NOW)
    assert [(r.window, r.challenger) for r in rows] == [("7d", False), ("30d", False)]
