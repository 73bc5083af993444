"""The models pages' pure rules: the model card read, feature importances charted, shadow scores
compared, and the training and promotion forms checked."""

from __future__ import annotations

import json
import uuid
from typing import TypeAlias

import pytest
from awareness.scoring.v1 import scoring_pb2

from services.portal.domain import models
from services.runtime.errors import InvalidArgumentError

LOW, MODERATE, HIGH, CRITICAL = (
    scoring_pb2.RISK_LEVEL_LOW,
    scoring_pb2.RISK_LEVEL_MODERATE,
    scoring_pb2.RISK_LEVEL_HIGH,
    scoring_pb2.RISK_LEVEL_CRITICAL,
)


def _card(**overrides: object) -> str:
    card: dict[str, object] = {
        "feature_importances": [
            {"feature": "severity", "importance": 0.1},
            {"feature": "detail_count", "importance": 0.6},
            {"feature": "hour_of_day", "importance": 0.3},
        ],
        "onnx": {"parity_max_abs_difference": 2e-7, "parity_tolerance": 1e-5},
        "baseline": {"rule": "severity >= 4"},
        "analyst_labels": {"used": 3, "note": "analyst labels from ingest"},
        "rows": {"train": 700, "test": 198},
        "decision_threshold": 0.5,
        "seed": 2,
        "training_seconds": 1.5,
        "versions": {"onnx": "1.17"},
    }
    card.update(overrides)
    return json.dumps(card)


def test_a_card_lists_importances_strongest_first_with_its_parity_tolerance() -> None:
    card = models.read_card(_card())
    assert card.readable
    assert card.importances == (("detail_count", 0.6), ("hour_of_day", 0.3), ("severity", 0.1))
    assert card.parity_tolerance == 1e-5
    assert card.analyst_used == 3
    assert card.rows == {"train": 700, "test": 198}
    assert card.seed == 2
    parity = models.parity({"parity_max_abs_difference": 2e-7}, card)
    assert parity.within is True
    assert models.parity({"parity_max_abs_difference": 1e-3}, card).within is False
    assert models.parity({}, card).within is None


@pytest.mark.parametrize("text", ["", "not json", "[1, 2]", '"a string"'])
def test_an_unreadable_card_shows_nothing_rather_than_failing(text: str) -> None:
    card = models.read_card(text)
    assert not card.readable
    assert card.importances == ()


def test_malformed_parts_of_a_card_are_left_out() -> None:
    card = models.read_card(
        _card(
            feature_importances=[
                {"feature": "ok", "importance": 0.5},
                {"feature": "flag", "importance": True},  # a bool is no number
                {"importance": 0.2},
                "junk",
            ],
            onnx="not a section",
            seed="7",
        )
    )
    assert card.readable
    assert card.importances == (("ok", 0.5),)
    assert card.parity_tolerance is None
    assert card.seed is None


def test_the_importance_chart_shows_the_strongest_features_in_percent() -> None:
    importances = [(f"feature_{index:02d}", index / 100) for index in range(12)]
    chart = models.importance_chart(importances)
    assert len(chart.rects) == models.CHART_FEATURES
    assert [axis.label for axis in chart.axis][:2] == ["feature_11", "feature_10"]
    assert chart.summary.startswith("feature_11: 11 %; feature_10: 10 %")
    assert chart.title == f"Feature importance (%), the strongest {models.CHART_FEATURES}"


def test_held_out_metrics_sit_beside_the_baseline() -> None:
    rows = models.metric_rows({"f1": 0.91, "precision": 0.959, "baseline_f1": 0.795, "roc_auc": 0.949})
    by_label = {row.label: row for row in rows}
    assert by_label["F1"].model == "0.910"
    assert by_label["F1"].baseline == "0.795"
    assert by_label["Precision"].baseline == "—"  # the baseline has one, this model's metrics lack it
    assert by_label["ROC AUC"].baseline == ""  # the baseline has none
    assert by_label["Recall"].model == "—"
    assert models.key_metrics({"roc_auc": 0.5}) == [("ROC AUC", "0.500"), ("PR AUC", "—"), ("F1", "—")]


def test_cross_validation_is_found_whatever_its_scoring() -> None:
    metrics = {"cv_average_precision_mean": 0.88, "cv_average_precision_std": 0.01}
    assert models.cross_validation(metrics) == ("average precision", "0.880", "0.010")
    assert models.cross_validation({"f1": 0.5}) is None


Level: TypeAlias = scoring_pb2.RiskLevel.ValueType


def _shadow(
    champion: float, champion_level: Level, challenger: float, challenger_level: Level
) -> scoring_pb2.ShadowScore:
    return scoring_pb2.ShadowScore(
        event_id=str(uuid.uuid4()),
        champion_model_version="champ",
        champion_score=champion,
        champion_level=champion_level,
        challenger_score=challenger,
        challenger_level=challenger_level,
    )


def test_shadow_scores_compare_level_by_level() -> None:
    scores = [
        _shadow(0.1, LOW, 0.2, LOW),  # agree
        _shadow(0.6, HIGH, 0.9, CRITICAL),  # challenger higher
        _shadow(0.3, MODERATE, 0.1, LOW),  # challenger lower
        _shadow(0.85, CRITICAL, 0.95, CRITICAL),  # agree
        _shadow(0.0, scoring_pb2.RISK_LEVEL_UNSPECIFIED, 0.5, HIGH),  # not a scored pair
    ]
    comparison = models.compare_shadow(scores)
    assert comparison.count == 4
    assert comparison.agreement_rate == pytest.approx(0.5)
    assert comparison.mean_absolute_difference == pytest.approx((0.1 + 0.3 + 0.2 + 0.1) / 4)
    assert (comparison.challenger_higher, comparison.challenger_lower) == (1, 1)
    rows = {row.level: row for row in comparison.levels}
    assert [row.level for row in comparison.levels] == ["low", "moderate", "high", "critical"]
    assert (rows["low"].champion, rows["low"].challenger, rows["low"].agreed) == (1, 2, 1)
    assert (rows["critical"].champion, rows["critical"].challenger, rows["critical"].agreed) == (1, 2, 1)
    assert (rows["high"].champion, rows["high"].challenger) == (1, 0)
    assert comparison.champion_versions == ("champ",)
    assert models.percent(comparison.agreement_rate) == "50.0 %"


def test_no_shadow_scores_compare_to_nothing() -> None:
    comparison = models.compare_shadow([])
    assert comparison.empty
    assert comparison.agreement_rate is None
    assert models.percent(None) == "—"


def test_the_training_form_becomes_a_train_request() -> None:
    request_id = str(uuid.uuid4())
    request = models.train_request(
        {
            "algorithm": ["gradient_boosting", "random_forest"],
            "cv_folds": ["3"],
            "seed": ["0"],
            "request_id": [request_id],
        }
    )
    assert list(request.algorithms) == ["random_forest", "gradient_boosting"]
    assert request.cv_folds == 3
    assert request.HasField("seed") and request.seed == 0
    assert request.request_id == request_id


def test_an_empty_training_form_takes_the_service_defaults() -> None:
    request = models.train_request({"cv_folds": [""], "seed": [""], "request_id": [str(uuid.uuid4())]})
    assert list(request.algorithms) == []
    assert request.cv_folds == 0
    assert not request.HasField("seed")


def test_a_training_form_the_page_never_offers_is_refused_field_by_field() -> None:
    with pytest.raises(InvalidArgumentError) as raised:
        models.train_request(
            {"algorithm": ["deep_learning"], "cv_folds": ["1"], "seed": ["-1"], "request_id": ["x"]}
        )
    assert {violation.field for violation in raised.value.violations} == {
        "algorithm",
        "cv_folds",
        "seed",
        "request_id",
    }


def test_a_promotion_needs_its_confirmation() -> None:
    request_id = str(uuid.uuid4())
    request = models.promote_request("2026.01.06-gb-abc", {"confirm": ["yes"], "request_id": [request_id]})
    assert request.name == "models/2026.01.06-gb-abc"
    assert request.request_id == request_id
    with pytest.raises(InvalidArgumentError) as raised:
        models.promote_request("v", {"request_id": [request_id]})
    assert [violation.field for violation in raised.value.violations] == ["confirm"]


def test_states_are_named() -> None:
    assert models.status_name(scoring_pb2.Model.STATUS_CHALLENGER) == "challenger"
    assert models.status_name(99) == "unknown"
