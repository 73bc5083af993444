"""Domain errors of the scoring service.

One root (`ScoringError`) with a machine-readable `reason` per subclass, so the transport layer can map
each to a `google.rpc.ErrorInfo` reason without string matching.
"""

from __future__ import annotations

from typing import ClassVar

from services.runtime.errors import AwarenessError


class ScoringError(AwarenessError):
    """Root of every error raised by the scoring domain."""

    grpc_code_name: ClassVar[str] = "INTERNAL"
    reason: str = "SCORING_ERROR"


class InvalidFeatureInputError(ScoringError):
    """A feature input is out of range (severity, negative counts, naive timestamp...)."""

    grpc_code_name: ClassVar[str] = "INVALID_ARGUMENT"
    reason: str = "INVALID_FEATURE_INPUT"


class InvalidFeaturesError(ScoringError):
    """A feature matrix handed to a scorer has the wrong shape or contains non-finite values."""

    grpc_code_name: ClassVar[str] = "INVALID_ARGUMENT"
    reason: str = "INVALID_FEATURES"


class TrainingDataError(ScoringError):
    """The training data cannot produce a model (length mismatch, one class, too few positives)."""

    grpc_code_name: ClassVar[str] = "FAILED_PRECONDITION"
    reason: str = "INVALID_TRAINING_DATA"


class ParityError(ScoringError):
    """The exported ONNX graph does not reproduce the sklearn pipeline: the model is not registrable."""

    grpc_code_name: ClassVar[str] = "FAILED_PRECONDITION"
    reason: str = "ONNX_PARITY_FAILED"

    def __init__(self, *, max_abs_difference: float, tolerance: float) -> None:
        super().__init__(
            f"ONNX and sklearn probabilities differ by up to {max_abs_difference:.3g} "
            f"(tolerance {tolerance:.1g}); the model is not registrable"
        )
        self.max_abs_difference = max_abs_difference
        self.tolerance = tolerance


class ModelIntegrityError(ScoringError):
    """The model bytes do not match the sha256 recorded for them: the model is refused."""

    grpc_code_name: ClassVar[str] = "DATA_LOSS"
    reason: str = "MODEL_INTEGRITY_FAILED"


class ModelLoadError(ScoringError):
    """The bytes are intact but are not a usable scoring model (bad ONNX, wrong inputs or feature schema)."""

    grpc_code_name: ClassVar[str] = "FAILED_PRECONDITION"
    reason: str = "MODEL_LOAD_FAILED"


class ModelNotFoundError(ScoringError):
    """No model with that name in the registry."""

    grpc_code_name: ClassVar[str] = "NOT_FOUND"
    reason: str = "MODEL_NOT_FOUND"


class NoChampionModelError(ScoringError):
    """No champion model is loaded yet (first start still training, or every candidate was refused)."""

    grpc_code_name: ClassVar[str] = "FAILED_PRECONDITION"
    reason: str = "NO_CHAMPION_MODEL"


class ModelStatusError(ScoringError):
    """The model is not in a state that allows the operation."""

    grpc_code_name: ClassVar[str] = "FAILED_PRECONDITION"
    reason: str = "MODEL_STATUS"
