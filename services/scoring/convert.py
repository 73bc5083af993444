"""Conversions between the scoring protos and the domain (feature inputs, registry rows, risk levels)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from awareness.scoring.v1 import scoring_pb2

from services.runtime.errors import FieldViolation, InvalidArgumentError
from services.runtime.timestamps import from_timestamp, timestamp_from_us
from services.scoring.domain.drift import level as drift_level
from services.scoring.domain.errors import InvalidFeatureInputError
from services.scoring.domain.features import FeatureInput
from services.scoring.domain.quality import Quality
from services.scoring.models import ModelRow, ModelStatus, PromotionDecisionRow

if TYPE_CHECKING:
    from services.scoring.health import ModelHealthView

MODEL_NAME_PATTERN = re.compile(r"^models/([A-Za-z0-9][A-Za-z0-9._-]{0,63})$")

RISK_LEVELS: dict[str, scoring_pb2.RiskLevel.ValueType] = {
    "low": scoring_pb2.RISK_LEVEL_LOW,
    "moderate": scoring_pb2.RISK_LEVEL_MODERATE,
    "high": scoring_pb2.RISK_LEVEL_HIGH,
    "critical": scoring_pb2.RISK_LEVEL_CRITICAL,
}
STATUS_TO_PROTO: dict[str, scoring_pb2.Model.Status.ValueType] = {
    ModelStatus.CHALLENGER.value: scoring_pb2.Model.STATUS_CHALLENGER,
    ModelStatus.CHAMPION.value: scoring_pb2.Model.STATUS_CHAMPION,
    ModelStatus.RETIRED.value: scoring_pb2.Model.STATUS_RETIRED,
}
STATUS_FROM_PROTO: dict[int, ModelStatus] = {int(v): ModelStatus(k) for k, v in STATUS_TO_PROTO.items()}


def model_name(version: str) -> str:
    return f"models/{version}"


def version_from_name(name: str, *, field: str = "name") -> str:
    """The model version in a resource name `models/{version}`."""
    match = MODEL_NAME_PATTERN.match(name)
    if match is None:
        message = f"must look like models/{{model}}, got {name!r}"
        raise InvalidArgumentError(
            f"{field} {message}", reason="INVALID_MODEL_NAME", violations=[FieldViolation(field, message)]
        )
    return match.group(1)


def model_proto(row: ModelRow) -> scoring_pb2.Model:
    model = scoring_pb2.Model(
        name=model_name(row.version),
        version=row.version,
        algorithm=row.algorithm,
        parameters={key: _text(value) for key, value in row.parameters.items()},
        sha256=row.sha256,
        metrics={key: float(value) for key, value in row.metrics.items() if isinstance(value, int | float)},
        data_card_version=row.data_card_version,
        create_time=timestamp_from_us(row.created_at_us),
        status=STATUS_TO_PROTO.get(row.status, scoring_pb2.Model.STATUS_UNSPECIFIED),
        onnx_size_bytes=row.onnx_size_bytes,
        training_example_count=row.training_example_count,
        feature_schema_version=row.feature_schema_version,
    )
    if row.promoted_at_us is not None:
        model.promote_time.CopyFrom(timestamp_from_us(row.promoted_at_us))
    return model


def _text(value: object) -> str:
    if value is None:
        return "None"
    return str(value)


def risk_level_proto(level: str) -> scoring_pb2.RiskLevel.ValueType:
    return RISK_LEVELS[level]


def feature_input(message: scoring_pb2.ScoringInput, *, field: str) -> FeatureInput:
    """The domain input of one ScoringInput; InvalidArgumentError names the offending field."""
    violations: list[FieldViolation] = []
    for name in ("event_id", "subject_pseudonym", "type"):
        if not getattr(message, name):
            violations.append(FieldViolation(f"{field}.{name}", "is required"))
    if not message.HasField("occurred_at"):
        violations.append(FieldViolation(f"{field}.occurred_at", "is required"))
    if violations:
        raise InvalidArgumentError(
            f"{field} is incomplete", reason="INVALID_SCORING_INPUT", violations=violations
        )
    history = message.history
    try:
        return FeatureInput(
            event_type=message.type,
            source=message.source,
            severity=int(message.severity),
            occurred_at=from_timestamp(message.occurred_at),
            summary_length=message.summary_length,
            detail_count=message.detail_count,
            events_24h=history.events_24h,
            events_7d=history.events_7d,
            violations_30d=history.violations_30d,
            distinct_sources_24h=history.distinct_sources_24h,
            source_is_new=history.source_is_new,
            failed_logins_24h=history.failed_logins_24h,
            seconds_since_previous_event=history.seconds_since_previous_event,
        )
    except InvalidFeatureInputError as error:
        raise InvalidArgumentError(
            f"{field}: {error.message}",
            reason=InvalidFeatureInputError.reason,
            violations=[FieldViolation(field, error.message)],
        ) from error


def quality_proto(figures: Quality) -> scoring_pb2.QualityFigures:
    return scoring_pb2.QualityFigures(
        labelled_events=figures.labelled_events,
        true_positives=figures.true_positives,
        false_positives=figures.false_positives,
        true_negatives=figures.true_negatives,
        false_negatives=figures.false_negatives,
        precision=figures.precision,
        recall=figures.recall,
        f1=figures.f1,
        brier_score=figures.brier_score,
        calibration=[
            scoring_pb2.CalibrationBin(
                lower=b.lower,
                upper=b.upper,
                events=b.events,
                mean_score=b.mean_score,
                observed_rate=b.observed_rate,
            )
            for b in figures.calibration
        ],
    )


def _card_figures(metrics: dict[str, object]) -> scoring_pb2.QualityFigures:
    def figure(name: str) -> float:
        value = metrics.get(name)
        return float(value) if isinstance(value, int | float) else 0.0

    return scoring_pb2.QualityFigures(precision=figure("precision"), recall=figure("recall"), f1=figure("f1"))


def health_proto(view: ModelHealthView) -> scoring_pb2.ModelHealth:
    health = scoring_pb2.ModelHealth(
        name=f"models/{view.model.version}/health",
        status=STATUS_TO_PROTO.get(view.model.status, scoring_pb2.Model.STATUS_UNSPECIFIED),
        decision_threshold=view.threshold,
        card=_card_figures(dict(view.model.metrics)),
        live_quality=[
            scoring_pb2.LiveQuality(
                window=row.window,
                scorer=scoring_pb2.LiveQuality.SCORER_CHALLENGER
                if row.challenger
                else scoring_pb2.LiveQuality.SCORER_MODEL,
                model_version=row.model_version,
                figures=quality_proto(row.figures),
            )
            for row in view.live
        ],
    )
    if view.drift is not None and view.drift.baseline:
        for window in view.drift.windows.values():
            drift = health.drift.add(window=window.window, events=window.events)
            if window.score_psi is not None:
                drift.score_psi = window.score_psi
                drift.score_level = drift_level(window.score_psi)
            for feature, psi in window.feature_psi.items():
                reading = drift.features.add(feature=feature)
                if psi is not None:
                    reading.psi = psi
                    reading.level = drift_level(psi)
    health.compute_time.CopyFrom(timestamp_from_us(int(view.computed_at.timestamp() * 1_000_000)))
    if view.latest_label_us is not None:
        health.latest_label_time.CopyFrom(timestamp_from_us(view.latest_label_us))
    return health


def decision_proto(row: PromotionDecisionRow) -> scoring_pb2.PromotionDecision:
    figures = row.figures

    def figure(name: str) -> float:
        value = figures.get(name)
        return float(value) if isinstance(value, int | float) else 0.0

    decision = scoring_pb2.PromotionDecision(
        name=f"models/{row.challenger_version}/promotionDecisions/{row.id}",
        outcome=scoring_pb2.PromotionDecision.OUTCOME_PROMOTED
        if row.promoted
        else scoring_pb2.PromotionDecision.OUTCOME_KEPT,
        reason=row.reason,
        champion_version=row.champion_version,
        labelled_events=int(figure("labelled_events")),
        champion_f1=figure("champion_f1"),
        challenger_f1=figure("challenger_f1"),
        f1_difference_lower=figure("f1_difference_lower"),
        f1_difference_upper=figure("f1_difference_upper"),
        champion_psi_on=str(figures.get("champion_psi_on", "")),
        decide_time=timestamp_from_us(row.decided_at_us),
        decider=row.decider,
    )
    if "champion_psi" in figures:
        decision.champion_psi = figure("champion_psi")
    return decision
