"""Training: grid-searched sklearn pipelines, held-out evaluation, a rule baseline, ONNX export and parity.

The exported graph holds the whole pipeline (one-hot encoding included) behind one float input named
"features", so the scorer needs nothing but `features.build_features` and the ONNX bytes.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime
import skl2onnx
import sklearn
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
from sklearn.metrics import (
    average_precision_score,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)
from sklearn.model_selection import GridSearchCV, StratifiedKFold, train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder

from services.scoring.domain.contract import (
    INPUT_NAME,
    METADATA_FEATURE_NAMES,
    METADATA_FEATURE_SCHEMA,
    PROBABILITY_OUTPUT_NAME,
    TARGET_OPSET,
)
from services.scoring.domain.drift import CARD_SECTION as DRIFT_CARD_SECTION
from services.scoring.domain.drift import fit_training_distribution
from services.scoring.domain.errors import ParityError, TrainingDataError
from services.scoring.domain.event_types import EVENT_TYPES
from services.scoring.domain.features import (
    CATEGORICAL_CARDINALITIES,
    FEATURE_NAMES,
    FEATURE_SCHEMA_VERSION,
    FeatureInput,
    build_features,
)
from services.scoring.domain.generator import DATA_CARD_VERSION, GeneratorConfig, generate

PARITY_TOLERANCE: Final = 1e-5
DECISION_THRESHOLD: Final = 0.5
TEST_FRACTION: Final = 0.2
# Average precision ranks candidates: it is sensitive to the minority (risky) class, unlike accuracy.
CV_SCORING: Final = "average_precision"
MODEL_CARD_SCHEMA: Final = "awareness.scoring.model-card/v1"
GRAPH_NAME: Final = "awareness_risk_model"

# Size of the default training set (about 13,500 events); see train_default_model.
DEFAULT_PEOPLE: Final = 300
DEFAULT_DAYS: Final = 60

# Baseline rule: what an analyst would flag without a model.
_BASELINE_MIN_SEVERITY = 4
_BASELINE_FAILED_LOGINS = 3
_BASELINE_OFF_HOURS_TYPES = frozenset(
    EVENT_TYPES.index(name)
    for name in (
        "data.external_upload",
        "device.usb_inserted",
        "login.unusual_location",
        "mfa.disabled",
        "login.failed",
    )
)

# Registry names of the searched algorithms, in search order, and their sklearn classes.
ALGORITHMS: Final[tuple[str, ...]] = ("random_forest", "gradient_boosting")
_ALGORITHM_CLASSES: Final = {
    "random_forest": "RandomForestClassifier",
    "gradient_boosting": "GradientBoostingClassifier",
}

Progress = Callable[[str], None]


@dataclass(frozen=True, kw_only=True)
class HeldOutMetrics:
    """Model quality on the held-out test set at DECISION_THRESHOLD."""

    precision: float
    recall: float
    f1: float
    roc_auc: float
    pr_auc: float


@dataclass(frozen=True, kw_only=True)
class BaselineMetrics:
    """Rule-based baseline on the same held-out test set."""

    precision: float
    recall: float
    f1: float


@dataclass(frozen=True, kw_only=True)
class TrainingResult:
    """A trained, exported and parity-checked model, ready to register."""

    onnx_bytes: bytes
    sha256: str
    algorithm: str
    params: dict[str, object]
    metrics: HeldOutMetrics
    baseline: BaselineMetrics
    cv_scoring: str
    cv_mean: float
    cv_std: float
    feature_importances: tuple[tuple[str, float], ...]
    parity_max_abs_difference: float
    training_seconds: float
    model_card: dict[str, object]
    # The fitted sklearn pipeline and held-out features, for benchmarks and diagnostics (not serialised).
    estimator: Pipeline = field(repr=False)
    test_features: npt.NDArray[np.float32] = field(repr=False)


def rule_based_baseline(features: npt.NDArray[np.float32]) -> npt.NDArray[np.int8]:
    """1 for events a simple rule flags: high severity, a failed-login burst, or risky types off hours."""
    column = {name: index for index, name in enumerate(FEATURE_NAMES)}
    severity = features[:, column["severity"]]
    off_hours = features[:, column["outside_working_hours"]] > 0
    risky_type = np.isin(features[:, column["event_type_index"]], sorted(_BASELINE_OFF_HOURS_TYPES))
    failed_logins = features[:, column["failed_logins_24h"]]
    flagged = (
        (severity >= _BASELINE_MIN_SEVERITY)
        | (off_hours & risky_type)
        | (failed_logins >= _BASELINE_FAILED_LOGINS)
    )
    return flagged.astype(np.int8)


def _preprocessor() -> ColumnTransformer:
    encoders = [
        (
            name.removesuffix("_index"),
            OneHotEncoder(
                categories=[list(range(cardinality))],
                handle_unknown="ignore",
                sparse_output=False,
                dtype=np.float32,
            ),
            [FEATURE_NAMES.index(name)],
        )
        for name, cardinality in CATEGORICAL_CARDINALITIES.items()
    ]
    return ColumnTransformer(encoders, remainder="passthrough")


def _search_space(seed: int, algorithms: Sequence[str] = ALGORITHMS) -> list[dict[str, list[Any]]]:
    # Kept small on purpose: the default configuration must train in well under two minutes on 2 cores.
    unknown = sorted(set(algorithms) - set(ALGORITHMS))
    if unknown or not algorithms:
        raise TrainingDataError(
            f"algorithms must be chosen from {', '.join(ALGORITHMS)}; got {unknown or 'none'}"
        )
    grids = {
        "random_forest": {
            "classifier": [RandomForestClassifier(random_state=seed, n_estimators=120, n_jobs=1)],
            "classifier__max_depth": [None, 12],
            "classifier__min_samples_leaf": [1, 4],
        },
        "gradient_boosting": {
            # Subsampling (stochastic gradient boosting) trains faster and generalises slightly better.
            "classifier": [GradientBoostingClassifier(random_state=seed, n_estimators=120, subsample=0.8)],
            "classifier__max_depth": [2, 3],
        },
    }
    return [grids[name] for name in ALGORITHMS if name in algorithms]


def algorithm_name(classifier_class_name: str) -> str:
    """Registry name of an algorithm (`random_forest`) from its sklearn class name."""
    for name, class_name in _ALGORITHM_CLASSES.items():
        if class_name == classifier_class_name:
            return name
    return classifier_class_name


def _transformed_feature_groups() -> list[str]:
    """Original feature name of every column after the preprocessor, in the classifier's column order."""
    groups: list[str] = []
    for name, cardinality in CATEGORICAL_CARDINALITIES.items():
        groups.extend([name] * cardinality)
    groups.extend(name for name in FEATURE_NAMES if name not in CATEGORICAL_CARDINALITIES)
    return groups


def _feature_importances(pipeline: Pipeline) -> tuple[tuple[str, float], ...]:
    importances = np.asarray(pipeline.named_steps["classifier"].feature_importances_, dtype=np.float64)
    groups = _transformed_feature_groups()
    if len(groups) != importances.shape[0]:
        raise TrainingDataError("feature importances do not match the feature layout")
    totals = dict.fromkeys(FEATURE_NAMES, 0.0)
    for name, value in zip(groups, importances, strict=True):
        totals[name] += float(value)
    return tuple(sorted(((name, round(value, 6)) for name, value in totals.items()), key=lambda kv: -kv[1]))


def export_onnx(pipeline: Pipeline) -> bytes:
    """The fitted pipeline as ONNX: input "features" float [None, n], output "probabilities" [None, 2]."""
    classifier = pipeline.named_steps["classifier"]
    model = convert_sklearn(
        pipeline,
        initial_types=[(INPUT_NAME, FloatTensorType([None, len(FEATURE_NAMES)]))],
        options={type(classifier): {"zipmap": False}},
        target_opset=TARGET_OPSET,
    )
    # skl2onnx names the graph with a random uuid; a fixed name makes the same model hash the same.
    model.graph.name = GRAPH_NAME
    onnx.helper.set_model_props(
        model,
        {METADATA_FEATURE_SCHEMA: FEATURE_SCHEMA_VERSION, METADATA_FEATURE_NAMES: ",".join(FEATURE_NAMES)},
    )
    serialized: bytes = model.SerializeToString()
    return serialized


def onnx_probabilities(onnx_bytes: bytes, features: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Positive-class probabilities computed by onnxruntime (used for the parity check)."""
    session = onnxruntime.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    (probabilities,) = session.run([PROBABILITY_OUTPUT_NAME], {INPUT_NAME: features})
    return np.asarray(probabilities[:, 1], dtype=np.float32)


def _validated_arrays(
    events: Sequence[FeatureInput], labels: Sequence[int], *, what: str
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int8]]:
    if len(events) != len(labels):
        raise TrainingDataError(f"{what}: {len(events)} events but {len(labels)} labels")
    y = np.asarray(labels, dtype=np.int64)
    if y.size and not np.isin(y, (0, 1)).all():
        raise TrainingDataError(f"{what}: labels must be 0 or 1")
    return build_features(events), y.astype(np.int8)


def _round(value: float) -> float:
    return round(float(value), 6)


@dataclass(frozen=True, kw_only=True)
class _Split:
    """The stratified split, analyst examples appended to the training side only."""

    x_train: npt.NDArray[np.float32]
    x_test: npt.NDArray[np.float32]
    y_train: npt.NDArray[np.int8]
    y_test: npt.NDArray[np.int8]
    analyst_labelled: int


@dataclass(frozen=True, kw_only=True)
class _Search:
    best: Pipeline
    algorithm: str
    params: dict[str, object]
    cv_mean: float
    cv_std: float


def _split(
    events: Sequence[FeatureInput],
    labels: Sequence[int],
    extra_events: Sequence[FeatureInput],
    extra_labels: Sequence[int],
    *,
    folds: int,
    seed: int,
) -> _Split:
    features, y = _validated_arrays(events, labels, what="events")
    extra_features, extra_y = _validated_arrays(extra_events, extra_labels, what="extra examples")
    class_counts = np.bincount(y, minlength=2)
    if class_counts.min() < folds + 2:
        raise TrainingDataError(
            f"need at least {folds + 2} examples of each class, got {int(class_counts[0])} benign "
            f"and {int(class_counts[1])} risky"
        )
    x_train, x_test, y_train, y_test = train_test_split(
        features, y, test_size=TEST_FRACTION, stratify=y, random_state=seed
    )
    if extra_y.size:
        x_train = np.concatenate([x_train, extra_features])
        y_train = np.concatenate([y_train, extra_y])
    if np.bincount(y_train, minlength=2).min() < folds:
        raise TrainingDataError(f"the training split has fewer than {folds} examples of a class")
    return _Split(
        x_train=x_train, x_test=x_test, y_train=y_train, y_test=y_test, analyst_labelled=int(extra_y.size)
    )


def _grid_search(
    split: _Split,
    *,
    search_space: list[dict[str, list[Any]]],
    folds: int,
    seed: int,
    n_jobs: int,
    report: Progress,
) -> _Search:
    pipeline = Pipeline([("preprocess", _preprocessor()), ("classifier", RandomForestClassifier())])
    search = GridSearchCV(
        pipeline,
        search_space,
        scoring=CV_SCORING,
        cv=StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed),
        n_jobs=n_jobs,
        refit=True,
    )
    candidates = sum(int(np.prod([len(values) for values in grid.values()])) for grid in search_space)
    report(f"grid search: {candidates} candidates x {folds} folds")
    search.fit(split.x_train, split.y_train)
    best: Pipeline = search.best_estimator_
    classifier = best.named_steps["classifier"]
    algorithm = type(classifier).__name__
    best_index = int(search.best_index_)
    cv_mean = float(search.cv_results_["mean_test_score"][best_index])
    cv_std = float(search.cv_results_["std_test_score"][best_index])
    # Every hyper-parameter, not only the searched ones, so the card alone reproduces the model.
    params: dict[str, object] = {
        key: value
        for key, value in sorted(classifier.get_params().items())
        if value is None or isinstance(value, bool | int | float | str)
    }
    searched = {key.removeprefix("classifier__"): value for key, value in search.best_params_.items()}
    searched.pop("classifier", None)
    report(f"best: {algorithm} {searched} ({CV_SCORING} {cv_mean:.4f} ± {cv_std:.4f})")
    return _Search(best=best, algorithm=algorithm, params=params, cv_mean=cv_mean, cv_std=cv_std)


def _held_out(
    best: Pipeline, split: _Split
) -> tuple[npt.NDArray[np.float64], HeldOutMetrics, BaselineMetrics]:
    """The model's probabilities on the held-out split, its metrics there, and the rule baseline's."""
    y_test = split.y_test
    sklearn_probabilities = best.predict_proba(split.x_test)[:, 1]
    predicted = (sklearn_probabilities >= DECISION_THRESHOLD).astype(np.int8)
    metrics = HeldOutMetrics(
        precision=_round(precision_score(y_test, predicted, zero_division=0)),
        recall=_round(recall_score(y_test, predicted, zero_division=0)),
        f1=_round(f1_score(y_test, predicted, zero_division=0)),
        roc_auc=_round(roc_auc_score(y_test, sklearn_probabilities)),
        pr_auc=_round(average_precision_score(y_test, sklearn_probabilities)),
    )
    baseline_predicted = rule_based_baseline(split.x_test)
    baseline = BaselineMetrics(
        precision=_round(precision_score(y_test, baseline_predicted, zero_division=0)),
        recall=_round(recall_score(y_test, baseline_predicted, zero_division=0)),
        f1=_round(f1_score(y_test, baseline_predicted, zero_division=0)),
    )
    return sklearn_probabilities, metrics, baseline


def train(
    *,
    events: Sequence[FeatureInput],
    labels: Sequence[int],
    seed: int,
    folds: int = 5,
    progress: Progress | None = None,
    extra_events: Sequence[FeatureInput] = (),
    extra_labels: Sequence[int] = (),
    data_card_version: str = DATA_CARD_VERSION,
    n_jobs: int = 1,
    algorithms: Sequence[str] = ALGORITHMS,
) -> TrainingResult:
    """Grid-search, evaluate, export and parity-check a risk model.

    `extra_events`/`extra_labels` (analyst-labelled examples) are appended to the training split only, so
    the held-out metrics stay comparable between runs on the same base data. Raises TrainingDataError
    for unusable data and ParityError when the ONNX graph does not reproduce sklearn within 1e-5.
    """
    report = progress or (lambda _message: None)
    started = time.perf_counter()
    search_space = _search_space(seed, algorithms)
    if folds < 2:
        raise TrainingDataError("folds must be >= 2")
    split = _split(events, labels, extra_events, extra_labels, folds=folds, seed=seed)
    report(
        f"training on {len(split.y_train)} events ({int(split.y_train.sum())} risky, "
        f"{split.analyst_labelled} analyst-labelled), holding out {len(split.y_test)}"
    )
    search = _grid_search(
        split, search_space=search_space, folds=folds, seed=seed, n_jobs=n_jobs, report=report
    )
    sklearn_probabilities, metrics, baseline = _held_out(search.best, split)
    report(f"held out: {metrics}; baseline: {baseline}")

    onnx_bytes = export_onnx(search.best)
    onnx_held_out = onnx_probabilities(onnx_bytes, split.x_test)
    max_difference = float(np.max(np.abs(onnx_held_out - sklearn_probabilities)))
    if not max_difference <= PARITY_TOLERANCE:
        raise ParityError(max_abs_difference=max_difference, tolerance=PARITY_TOLERANCE)
    report(f"onnx parity ok: max |onnx - sklearn| = {max_difference:.2e} on {len(split.y_test)} events")

    sha256 = hashlib.sha256(onnx_bytes).hexdigest()
    importances = _feature_importances(search.best)
    training_seconds = round(time.perf_counter() - started, 3)
    model_card = _model_card(
        search=search,
        metrics=metrics,
        baseline=baseline,
        split=split,
        folds=folds,
        seed=seed,
        data_card_version=data_card_version,
        onnx_bytes=onnx_bytes,
        sha256=sha256,
        max_difference=max_difference,
        importances=importances,
        training_seconds=training_seconds,
    )
    # Drift baseline: every row the model learnt from or was tested on, and the scores the served graph
    # gives the held-out rows (in-sample scores of a forest are overconfident, live ones are not).
    distribution = fit_training_distribution(np.concatenate([split.x_train, split.x_test]), onnx_held_out)
    model_card[DRIFT_CARD_SECTION] = distribution.to_card()
    return TrainingResult(
        onnx_bytes=onnx_bytes,
        sha256=sha256,
        algorithm=search.algorithm,
        params=search.params,
        metrics=metrics,
        baseline=baseline,
        cv_scoring=CV_SCORING,
        cv_mean=search.cv_mean,
        cv_std=search.cv_std,
        feature_importances=importances,
        parity_max_abs_difference=max_difference,
        training_seconds=training_seconds,
        model_card=model_card,
        estimator=search.best,
        test_features=split.x_test,
    )


def _model_card(
    *,
    search: _Search,
    metrics: HeldOutMetrics,
    baseline: BaselineMetrics,
    split: _Split,
    folds: int,
    seed: int,
    data_card_version: str,
    onnx_bytes: bytes,
    sha256: str,
    max_difference: float,
    importances: tuple[tuple[str, float], ...],
    training_seconds: float,
) -> dict[str, object]:
    return {
        "schema": MODEL_CARD_SCHEMA,
        "algorithm": search.algorithm,
        "params": dict(search.params),
        "metrics": asdict(metrics),
        "decision_threshold": DECISION_THRESHOLD,
        "baseline": {"rule": _baseline_description(), **asdict(baseline)},
        "cross_validation": {
            "scoring": CV_SCORING,
            "folds": folds,
            "mean": _round(search.cv_mean),
            "std": _round(search.cv_std),
        },
        "feature_importances": [{"feature": name, "importance": value} for name, value in importances],
        "features": list(FEATURE_NAMES),
        "feature_schema_version": FEATURE_SCHEMA_VERSION,
        "data_card_version": data_card_version,
        "seed": seed,
        "rows": {
            "train": len(split.y_train),
            "test": len(split.y_test),
            "train_positives": int(split.y_train.sum()),
            "test_positives": int(split.y_test.sum()),
            "analyst_labelled": split.analyst_labelled,
        },
        "onnx": {
            "sha256": sha256,
            "size_bytes": len(onnx_bytes),
            "opset": TARGET_OPSET,
            "input": INPUT_NAME,
            "output": PROBABILITY_OUTPUT_NAME,
            "parity_max_abs_difference": max_difference,
            "parity_tolerance": PARITY_TOLERANCE,
        },
        "training_seconds": training_seconds,
        "created_at": datetime.now(UTC).isoformat(),
        "versions": {
            "scikit-learn": sklearn.__version__,
            "onnxruntime": onnxruntime.__version__,
            "skl2onnx": skl2onnx.__version__,
            "onnx": onnx.__version__,
            "numpy": np.__version__,
        },
    }


def _baseline_description() -> str:
    types = ", ".join(EVENT_TYPES[index] for index in sorted(_BASELINE_OFF_HOURS_TYPES))
    return (
        f"severity >= {_BASELINE_MIN_SEVERITY}, or failed_logins_24h >= {_BASELINE_FAILED_LOGINS}, "
        f"or outside working hours and type in ({types})"
    )


def train_default_model(
    *, seed: int = 7, progress: Progress | None = None, n_jobs: int = 1
) -> TrainingResult:
    """The model a scoring service trains on first start with an empty registry (synthetic data)."""
    report = progress or (lambda _message: None)
    dataset = generate(GeneratorConfig(people=DEFAULT_PEOPLE, days=DEFAULT_DAYS, seed=seed))
    report(f"generated {dataset.version}: {len(dataset.inputs)} events, {sum(dataset.labels)} labelled risky")
    return train(
        events=dataset.inputs,
        labels=dataset.labels,
        seed=seed,
        progress=report,
        data_card_version=dataset.version,
        n_jobs=n_jobs,
    )
