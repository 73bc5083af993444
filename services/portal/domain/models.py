"""What the models pages show: the registry in words, a model card's figures, how a challenger's
shadow scores compare with the champion's, and the training and promotion forms checked. Pure: no I/O.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from awareness.scoring.v1 import scoring_pb2

from services.portal.domain import charts
from services.runtime.errors import FieldViolation, InvalidArgumentError

Model = scoring_pb2.Model

STATUS_NAMES: Final = {
    Model.STATUS_UNSPECIFIED: "unknown",
    Model.STATUS_CHALLENGER: "challenger",
    Model.STATUS_CHAMPION: "champion",
    Model.STATUS_RETIRED: "retired",
}
RISK_LEVELS: Final = {
    scoring_pb2.RISK_LEVEL_LOW: "low",
    scoring_pb2.RISK_LEVEL_MODERATE: "moderate",
    scoring_pb2.RISK_LEVEL_HIGH: "high",
    scoring_pb2.RISK_LEVEL_CRITICAL: "critical",
}
LEVELS: Final = tuple(RISK_LEVELS.values())
# What TrainModel grid-searches (scoring.proto, TrainModelRequest.algorithms).
ALGORITHMS: Final = {"random_forest": "Random forest", "gradient_boosting": "Gradient boosting"}
DEFAULT_FOLDS: Final = 5
MAX_FOLDS: Final = 10
MAX_SEED: Final = 2**31 - 1
# The registry's columns: the held-out figures an ML engineer compares first.
KEY_METRICS: Final = (("roc_auc", "ROC AUC"), ("pr_auc", "PR AUC"), ("f1", "F1"))
HELD_OUT: Final = (
    ("precision", "Precision"),
    ("recall", "Recall"),
    ("f1", "F1"),
    ("roc_auc", "ROC AUC"),
    ("pr_auc", "PR AUC"),
)
BASELINE: Final = (
    ("baseline_precision", "Precision"),
    ("baseline_recall", "Recall"),
    ("baseline_f1", "F1"),
)
PARITY_METRIC: Final = "parity_max_abs_difference"
# The chart names the strongest features (more bars would crowd their names); the table lists all.
CHART_FEATURES: Final = 5
# The newest shadow scores a comparison reads (ListShadowScores answers at most 1,000 a page).
SHADOW_SAMPLE: Final = 1000


def status_name(status: int) -> str:
    return STATUS_NAMES.get(Model.Status.ValueType(status), "unknown")


def figure(value: float | None, digits: int = 3) -> str:
    """A metric as people read it; an absent one as a dash."""
    return "—" if value is None else f"{value:.{digits}f}"


def key_metrics(metrics: Mapping[str, float]) -> list[tuple[str, str]]:
    """The registry's columns for one model: (label, value), a dash where the model lacks one."""
    return [(label, figure(metrics.get(key))) for key, label in KEY_METRICS]


@dataclass(frozen=True, slots=True)
class MetricRow:
    label: str
    model: str
    baseline: str


def metric_rows(metrics: Mapping[str, float]) -> list[MetricRow]:
    """Held-out figures beside the rule baseline's on the same test set (F1, precision, recall)."""
    baseline = {key.removeprefix("baseline_"): metrics.get(key) for key, _ in BASELINE}
    return [
        MetricRow(label, figure(metrics.get(key)), figure(baseline.get(key)) if key in baseline else "")
        for key, label in HELD_OUT
    ]


def cross_validation(metrics: Mapping[str, float]) -> tuple[str, str, str] | None:
    """(scoring, mean, std) of the grid search's best candidate, from ``cv_<scoring>_mean``/``_std``."""
    for key in sorted(metrics):
        if key.startswith("cv_") and key.endswith("_mean"):
            scoring = key.removeprefix("cv_").removesuffix("_mean")
            return (
                scoring.replace("_", " "),
                figure(metrics[key]),
                figure(metrics.get(f"cv_{scoring}_std")),
            )
    return None


@dataclass(frozen=True, slots=True)
class Parity:
    """ONNX against scikit-learn on the held-out set: the largest absolute difference of a score,
    and the tolerance training held it to (the model would not have registered otherwise)."""

    max_abs_difference: float | None
    tolerance: float | None

    @property
    def within(self) -> bool | None:
        if self.max_abs_difference is None or self.tolerance is None:
            return None
        return self.max_abs_difference <= self.tolerance


@dataclass(frozen=True)
class Card:
    """The parts of a model card (GetModel's JSON document) the page shows; empty when unreadable."""

    readable: bool = False
    importances: tuple[tuple[str, float], ...] = ()
    parity_tolerance: float | None = None
    decision_threshold: float | None = None
    baseline_rule: str = ""
    rows: Mapping[str, int] = field(default_factory=dict)
    analyst_note: str = ""
    analyst_used: int | None = None
    seed: int | None = None
    training_seconds: float | None = None
    versions: Mapping[str, str] = field(default_factory=dict)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _section(document: Mapping[str, Any], name: str) -> dict[str, Any]:
    value = document.get(name)
    return value if isinstance(value, dict) else {}


def read_card(text: str) -> Card:
    """The model card of ``text``; anything missing or malformed is left out, never an error (a card
    written by an older training run may lack what a newer one has)."""
    try:
        document = json.loads(text) if text else None
    except ValueError:
        document = None
    if not isinstance(document, dict):
        return Card()
    importances = []
    for item in document.get("feature_importances") or []:
        if isinstance(item, dict) and isinstance(item.get("feature"), str):
            value = _number(item.get("importance"))
            if value is not None:
                importances.append((item["feature"], value))
    importances.sort(key=lambda pair: (-pair[1], pair[0]))
    onnx, baseline, analyst, rows, versions = (
        _section(document, name) for name in ("onnx", "baseline", "analyst_labels", "rows", "versions")
    )
    seed = document.get("seed")
    used = _number(analyst.get("used"))
    return Card(
        readable=True,
        importances=tuple(importances),
        parity_tolerance=_number(onnx.get("parity_tolerance")),
        decision_threshold=_number(document.get("decision_threshold")),
        baseline_rule=str(baseline.get("rule", "")),
        rows={str(key): int(value) for key, value in rows.items() if _number(value) is not None},
        analyst_note=str(analyst.get("note", "")),
        analyst_used=int(used) if used is not None else None,
        seed=seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
        training_seconds=_number(document.get("training_seconds")),
        versions={str(key): str(value) for key, value in versions.items()},
    )


def parity(metrics: Mapping[str, float], card: Card) -> Parity:
    return Parity(max_abs_difference=metrics.get(PARITY_METRIC), tolerance=card.parity_tolerance)


def importance_chart(importances: Iterable[tuple[str, float]]) -> charts.Chart:
    """The strongest features as bars, in percent of the total importance (importances sum to 1)."""
    ranked = sorted(importances, key=lambda pair: (-pair[1], pair[0]))[:CHART_FEATURES]
    return charts.bar_chart(
        f"Feature importance (%), the strongest {len(ranked)}",
        [(name, round(value * 100)) for name, value in ranked],
        unit="%",
    )


# --- shadow scores ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LevelRow:
    """One risk level: how many events the champion and the challenger put there, and how many of
    the champion's the challenger put there too."""

    level: str
    champion: int
    challenger: int
    agreed: int


@dataclass(frozen=True)
class ShadowComparison:
    count: int
    agreement_rate: float | None  # share of events both models put at the same risk level
    mean_absolute_difference: float | None  # mean |challenger score - champion score|
    challenger_higher: int  # events the challenger ranked at a higher level
    challenger_lower: int
    levels: tuple[LevelRow, ...]
    champion_versions: tuple[str, ...]

    @property
    def empty(self) -> bool:
        return self.count == 0


def compare_shadow(scores: Iterable[scoring_pb2.ShadowScore]) -> ShadowComparison:
    """How a challenger's shadow scores compare with the champion's scores of the same events."""
    order = {name: position for position, name in enumerate(LEVELS)}
    champion_counts = dict.fromkeys(LEVELS, 0)
    challenger_counts = dict.fromkeys(LEVELS, 0)
    agreed_counts = dict.fromkeys(LEVELS, 0)
    count = agreed = higher = lower = 0
    difference = 0.0
    versions: dict[str, None] = {}
    for score in scores:
        champion = RISK_LEVELS.get(score.champion_level)
        challenger = RISK_LEVELS.get(score.challenger_level)
        if champion is None or challenger is None:
            continue  # not a scored pair: nothing to compare
        count += 1
        difference += abs(score.challenger_score - score.champion_score)
        champion_counts[champion] += 1
        challenger_counts[challenger] += 1
        versions.setdefault(score.champion_model_version, None)
        if champion == challenger:
            agreed += 1
            agreed_counts[champion] += 1
        elif order[challenger] > order[champion]:
            higher += 1
        else:
            lower += 1
    return ShadowComparison(
        count=count,
        agreement_rate=agreed / count if count else None,
        mean_absolute_difference=difference / count if count else None,
        challenger_higher=higher,
        challenger_lower=lower,
        levels=tuple(
            LevelRow(level, champion_counts[level], challenger_counts[level], agreed_counts[level])
            for level in LEVELS
        ),
        champion_versions=tuple(versions),
    )


def percent(rate: float | None) -> str:
    return "—" if rate is None else f"{rate * 100:.1f} %"


# --- forms --------------------------------------------------------------------------------------


def _request_id(form: Mapping[str, list[str]], violations: list[FieldViolation]) -> str:
    """The form's idempotency key: a resubmitted form (a double click, a reload) repeats it, so the
    service answers with what the first submission did instead of doing it twice."""
    value = (form.get("request_id") or [""])[0].strip()
    try:
        return str(uuid.UUID(value))
    except ValueError:
        violations.append(FieldViolation("request_id", "the form's id is missing; reload the page"))
        return ""


def _whole_number(
    form: Mapping[str, list[str]],
    name: str,
    violations: list[FieldViolation],
    *,
    lowest: int,
    highest: int,
) -> int | None:
    text = (form.get(name) or [""])[0].strip()
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        value = lowest - 1
    if not lowest <= value <= highest:
        violations.append(FieldViolation(name, f"a whole number from {lowest} to {highest:,}"))
        return None
    return value


def train_request(form: Mapping[str, list[str]]) -> scoring_pb2.TrainModelRequest:
    """The TrainModel call the training form asks for; what the form never offers is refused."""
    violations: list[FieldViolation] = []
    algorithms = [name for name in form.get("algorithm", []) if name]
    unknown = sorted(set(algorithms) - set(ALGORITHMS))
    if unknown:
        violations.append(FieldViolation("algorithm", f"one or more of {', '.join(ALGORITHMS)}"))
    folds = _whole_number(form, "cv_folds", violations, lowest=2, highest=MAX_FOLDS)
    seed = _whole_number(form, "seed", violations, lowest=0, highest=MAX_SEED)
    request_id = _request_id(form, violations)
    if violations:
        raise InvalidArgumentError("the training form was not valid", violations=violations)
    request = scoring_pb2.TrainModelRequest(
        request_id=request_id,
        # Both when none is ticked, as the service does for an empty list; in a stable order.
        algorithms=[name for name in ALGORITHMS if name in algorithms],
        cv_folds=folds or 0,
    )
    if seed is not None:
        request.seed = seed
    return request


def promote_request(version: str, form: Mapping[str, list[str]]) -> scoring_pb2.PromoteModelRequest:
    """The PromoteModel call a confirmed promotion asks for."""
    violations: list[FieldViolation] = []
    request_id = _request_id(form, violations)
    if (form.get("confirm") or [""])[0] != "yes":
        violations.append(FieldViolation("confirm", "confirm the promotion"))
    if violations:
        raise InvalidArgumentError("the promotion was not confirmed", violations=violations)
    return scoring_pb2.PromoteModelRequest(name=f"models/{version}", request_id=request_id)
