from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx
import pytest

from services.scoring.domain.contract import METADATA_FEATURE_SCHEMA
from services.scoring.domain.errors import InvalidFeaturesError, ModelIntegrityError, ModelLoadError
from services.scoring.domain.features import FEATURE_NAMES, build_features
from services.scoring.domain.generator import SyntheticDataset
from services.scoring.domain.model import OnnxScorer, risk_level
from services.scoring.domain.training import TrainingResult

pytestmark = pytest.mark.slow


def scorer_for(result: TrainingResult) -> OnnxScorer:
    return OnnxScorer(onnx_bytes=result.onnx_bytes, expected_sha256=result.sha256)


@pytest.mark.parametrize("position", [0, 1000, -1])
def test_a_flipped_byte_is_refused(trained: TrainingResult, position: int) -> None:
    tampered = bytearray(trained.onnx_bytes)
    tampered[position] ^= 0x01
    with pytest.raises(ModelIntegrityError):
        OnnxScorer(onnx_bytes=bytes(tampered), expected_sha256=trained.sha256)


def test_a_wrong_expected_hash_is_refused(trained: TrainingResult) -> None:
    with pytest.raises(ModelIntegrityError):
        OnnxScorer(onnx_bytes=trained.onnx_bytes, expected_sha256="0" * 64)


def test_intact_bytes_that_are_not_a_model_are_refused() -> None:
    garbage = b"not an onnx model"
    with pytest.raises(ModelLoadError):
        OnnxScorer(onnx_bytes=garbage, expected_sha256=hashlib.sha256(garbage).hexdigest())


def test_a_model_built_for_another_feature_schema_is_refused(trained: TrainingResult) -> None:
    model = onnx.load_from_string(trained.onnx_bytes)
    for prop in model.metadata_props:
        if prop.key == METADATA_FEATURE_SCHEMA:
            prop.value = "features-v0"
    other = model.SerializeToString()
    with pytest.raises(ModelLoadError, match="feature schema"):
        OnnxScorer(onnx_bytes=other, expected_sha256=hashlib.sha256(other).hexdigest())


def test_two_scorers_from_the_same_bytes_give_identical_scores(trained: TrainingResult) -> None:
    first, second = scorer_for(trained), scorer_for(trained)
    scores = first.score(trained.test_features)
    assert scores.shape == (trained.test_features.shape[0],)
    assert scores.dtype == np.float32
    assert np.array_equal(scores, second.score(trained.test_features))
    assert np.array_equal(scores, first.score(trained.test_features))
    # Row by row gives the batch result: a score does not depend on its neighbours.
    singles = np.concatenate([first.score(trained.test_features[i : i + 1]) for i in range(50)])
    assert np.array_equal(singles, scores[:50])
    assert ((scores >= 0) & (scores <= 1)).all()


def test_scores_match_the_sklearn_pipeline(trained: TrainingResult) -> None:
    expected = trained.estimator.predict_proba(trained.test_features)[:, 1]
    assert np.max(np.abs(scorer_for(trained).score(trained.test_features) - expected)) <= 1e-5


def test_concurrent_scoring_is_consistent(trained: TrainingResult) -> None:
    scorer = scorer_for(trained)
    expected = scorer.score(trained.test_features)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: scorer.score(trained.test_features), range(8)))
    assert all(np.array_equal(result, expected) for result in results)


def test_score_inputs_builds_the_features_itself(trained: TrainingResult, dataset: SyntheticDataset) -> None:
    scorer = scorer_for(trained)
    sample = dataset.inputs[:20]
    assert np.array_equal(scorer.score_inputs(sample), scorer.score(build_features(sample)))


def test_malformed_feature_matrices_are_refused(trained: TrainingResult) -> None:
    scorer = scorer_for(trained)
    with pytest.raises(InvalidFeaturesError):
        scorer.score(np.zeros((3, len(FEATURE_NAMES) - 1), dtype=np.float32))
    with pytest.raises(InvalidFeaturesError):
        scorer.score(np.zeros(len(FEATURE_NAMES), dtype=np.float32))
    bad = np.zeros((1, len(FEATURE_NAMES)), dtype=np.float32)
    bad[0, 3] = np.nan
    with pytest.raises(InvalidFeaturesError):
        scorer.score(bad)
    assert scorer.score(np.zeros((0, len(FEATURE_NAMES)), dtype=np.float32)).shape == (0,)


@pytest.mark.parametrize(
    ("score", "level"),
    [
        (0.0, "low"),
        (0.2499, "low"),
        (0.25, "moderate"),
        (0.4999, "moderate"),
        (0.5, "high"),
        (0.7999, "high"),
        (0.8, "critical"),
        (1.0, "critical"),
    ],
)
def test_risk_levels(score: float, level: str) -> None:
    assert risk_level(score) == level
    assert OnnxScorer.risk_level(score) == level


@pytest.mark.parametrize("score", [-0.01, 1.01, float("nan")])
def test_risk_level_refuses_non_probabilities(score: float) -> None:
    with pytest.raises(InvalidFeaturesError):
        risk_level(score)
