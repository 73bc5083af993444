from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from services.scoring.domain import training
from services.scoring.domain.errors import ParityError, TrainingDataError
from services.scoring.domain.features import FEATURE_NAMES, build_features
from services.scoring.domain.generator import GeneratorConfig, SyntheticDataset, generate
from services.scoring.domain.training import TrainingResult, rule_based_baseline, train
from tests.scoring.conftest import TEST_CONFIG, TEST_FOLDS

pytestmark = pytest.mark.slow

TINY = GeneratorConfig(people=60, days=21, seed=5)


def test_held_out_quality_parity_and_baseline(trained: TrainingResult) -> None:
    assert trained.parity_max_abs_difference <= 1e-5
    assert trained.metrics.roc_auc >= 0.90
    assert trained.metrics.f1 > trained.baseline.f1
    assert trained.algorithm in {"RandomForestClassifier", "GradientBoostingClassifier"}
    assert 0.0 < trained.cv_mean <= 1.0 and trained.cv_std >= 0.0


def test_model_card_is_json_and_describes_the_artifact(trained: TrainingResult) -> None:
    card = json.loads(json.dumps(trained.model_card))
    assert card["onnx"]["sha256"] == hashlib.sha256(trained.onnx_bytes).hexdigest() == trained.sha256
    assert card["features"] == list(FEATURE_NAMES)
    assert card["data_card_version"] == "synthetic-v1"
    assert card["seed"] == TEST_CONFIG.seed
    assert card["algorithm"] == trained.algorithm
    assert card["metrics"]["roc_auc"] == trained.metrics.roc_auc
    assert card["baseline"]["f1"] == trained.baseline.f1
    assert card["cross_validation"]["folds"] == TEST_FOLDS
    assert {"scikit-learn", "onnxruntime"} <= set(card["versions"])
    assert card["created_at"]
    importances = [entry["importance"] for entry in card["feature_importances"]]
    assert {entry["feature"] for entry in card["feature_importances"]} == set(FEATURE_NAMES)
    assert sum(importances) == pytest.approx(1.0, abs=1e-3)
    assert importances == sorted(importances, reverse=True)


def test_training_twice_with_the_same_seed_gives_the_same_model(
    dataset: SyntheticDataset, trained: TrainingResult
) -> None:
    again = train(events=dataset.inputs, labels=dataset.labels, seed=TEST_CONFIG.seed, folds=TEST_FOLDS)
    assert again.metrics == trained.metrics
    assert again.baseline == trained.baseline
    assert again.params == trained.params
    assert (again.cv_mean, again.cv_std) == (trained.cv_mean, trained.cv_std)
    assert again.sha256 == trained.sha256


def test_analyst_labelled_examples_join_the_training_split_only() -> None:
    base = generate(TINY)
    extra = generate(GeneratorConfig(people=10, days=7, seed=99))
    plain = train(events=base.inputs, labels=base.labels, seed=TINY.seed, folds=2)
    enriched = train(
        events=base.inputs,
        labels=base.labels,
        seed=TINY.seed,
        folds=2,
        extra_events=extra.inputs,
        extra_labels=extra.labels,
    )
    plain_rows, enriched_rows = plain.model_card["rows"], enriched.model_card["rows"]
    assert isinstance(plain_rows, dict) and isinstance(enriched_rows, dict)
    assert enriched_rows["train"] == plain_rows["train"] + len(extra.inputs)
    assert enriched_rows["test"] == plain_rows["test"]
    assert enriched_rows["analyst_labelled"] == len(extra.inputs)
    assert np.array_equal(enriched.test_features, plain.test_features)


def test_parity_failure_makes_the_model_unregistrable(monkeypatch: pytest.MonkeyPatch) -> None:
    real = training.onnx_probabilities

    def drifting_runtime(onnx_bytes: bytes, features: np.ndarray) -> np.ndarray:
        return real(onnx_bytes, features) + np.float32(1e-3)

    monkeypatch.setattr(training, "onnx_probabilities", drifting_runtime)
    tiny = generate(TINY)
    with pytest.raises(ParityError) as caught:
        train(events=tiny.inputs, labels=tiny.labels, seed=TINY.seed, folds=2)
    assert caught.value.max_abs_difference == pytest.approx(1e-3, rel=1e-2)
    assert caught.value.reason == "ONNX_PARITY_FAILED"


def test_unusable_training_data_is_refused() -> None:
    tiny = generate(TINY)
    with pytest.raises(TrainingDataError, match="labels"):
        train(events=tiny.inputs, labels=tiny.labels[:-1], seed=1)
    with pytest.raises(TrainingDataError, match="each class"):
        train(events=tiny.inputs, labels=[0] * len(tiny.inputs), seed=1)
    with pytest.raises(TrainingDataError, match="0 or 1"):
        train(events=tiny.inputs, labels=[2] * len(tiny.inputs), seed=1)


def test_rule_baseline_flags_what_it_says(dataset: SyntheticDataset) -> None:
    features = build_features(dataset.inputs)
    flagged = rule_based_baseline(features)
    column = {name: index for index, name in enumerate(FEATURE_NAMES)}
    high_severity = features[:, column["severity"]] >= 4
    assert flagged[high_severity].all()
    quiet = (
        (features[:, column["severity"]] <= 1)
        & (features[:, column["outside_working_hours"]] == 0)
        & (features[:, column["failed_logins_24h"]] == 0)
    )
    assert quiet.any() and not flagged[quiet].any()
