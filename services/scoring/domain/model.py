"""Serving side: an integrity-checked ONNX model that turns feature matrices into risk probabilities."""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Sequence
from typing import Final

import numpy as np
import numpy.typing as npt
import onnxruntime

from services.runtime.risk_levels import RISK_LEVEL_THRESHOLDS as SHARED_RISK_LEVEL_THRESHOLDS
from services.scoring.domain.contract import INPUT_NAME, METADATA_FEATURE_SCHEMA, PROBABILITY_OUTPUT_NAME
from services.scoring.domain.errors import InvalidFeaturesError, ModelIntegrityError, ModelLoadError
from services.scoring.domain.features import (
    FEATURE_NAMES,
    FEATURE_SCHEMA_VERSION,
    FeatureInput,
    build_features,
)

# Risk levels by score: one table for the suite (analytics grades each person's score by it too).
RISK_LEVEL_THRESHOLDS: Final = SHARED_RISK_LEVEL_THRESHOLDS


def risk_level(score: float) -> str:
    """Name of the risk level for a probability in [0, 1] (see RISK_LEVEL_THRESHOLDS)."""
    if math.isnan(score) or not 0.0 <= score <= 1.0:
        raise InvalidFeaturesError(f"a risk score must be in [0, 1], got {score}")
    for lower_bound, name in RISK_LEVEL_THRESHOLDS:
        if score >= lower_bound:
            return name
    raise AssertionError("unreachable: the last threshold is 0.0")


class OnnxScorer:
    """One model version, loaded once: verifies the bytes, then scores from one shared session.

    `score` may be called from many threads at once: onnxruntime's `InferenceSession.run` is thread-safe.
    """

    def __init__(self, *, onnx_bytes: bytes, expected_sha256: str, intra_op_threads: int = 1) -> None:
        actual_sha256 = hashlib.sha256(onnx_bytes).hexdigest()
        if not hmac.compare_digest(actual_sha256, expected_sha256.lower()):
            raise ModelIntegrityError(
                f"model bytes hash to sha256 {actual_sha256}, expected {expected_sha256}; model refused"
            )
        options = onnxruntime.SessionOptions()
        # One thread per request keeps single-event latency low and leaves the cores to concurrent calls.
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        try:
            self._session = onnxruntime.InferenceSession(
                onnx_bytes, sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as error:  # onnxruntime raises its own untyped exceptions for bad graphs
            raise ModelLoadError(f"not a loadable ONNX model: {error}") from error
        self._check_signature()
        self.sha256 = actual_sha256

    def _check_signature(self) -> None:
        inputs = self._session.get_inputs()
        if len(inputs) != 1 or inputs[0].name != INPUT_NAME or inputs[0].type != "tensor(float)":
            raise ModelLoadError(f'the model must take one float tensor named "{INPUT_NAME}"')
        width = inputs[0].shape[-1] if inputs[0].shape else None
        if width != len(FEATURE_NAMES):
            raise ModelLoadError(f"the model takes {width} features, this code builds {len(FEATURE_NAMES)}")
        if PROBABILITY_OUTPUT_NAME not in {output.name for output in self._session.get_outputs()}:
            raise ModelLoadError(f'the model has no "{PROBABILITY_OUTPUT_NAME}" output')
        schema = self._session.get_modelmeta().custom_metadata_map.get(METADATA_FEATURE_SCHEMA)
        if schema != FEATURE_SCHEMA_VERSION:
            raise ModelLoadError(
                f"the model was built for feature schema {schema}, this code builds {FEATURE_SCHEMA_VERSION}"
            )

    def score(self, features: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """Risk probability of each row of a (n, len(FEATURE_NAMES)) matrix from `build_features`."""
        matrix = np.ascontiguousarray(features, dtype=np.float32)
        if matrix.ndim != 2 or matrix.shape[1] != len(FEATURE_NAMES):
            raise InvalidFeaturesError(
                f"expected a matrix of shape (n, {len(FEATURE_NAMES)}), got {tuple(matrix.shape)}"
            )
        if matrix.shape[0] == 0:
            return np.empty((0,), dtype=np.float32)
        if not np.isfinite(matrix).all():
            raise InvalidFeaturesError("features must be finite")
        (probabilities,) = self._session.run([PROBABILITY_OUTPUT_NAME], {INPUT_NAME: matrix})
        return np.asarray(probabilities[:, 1], dtype=np.float32)

    def score_inputs(self, inputs: Sequence[FeatureInput]) -> npt.NDArray[np.float32]:
        """Risk probabilities straight from feature inputs."""
        return self.score(build_features(inputs))

    @staticmethod
    def risk_level(score: float) -> str:
        """Risk level name for a score (see RISK_LEVEL_THRESHOLDS)."""
        return risk_level(score)
