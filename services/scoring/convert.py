"""Conversions between the scoring protos and the domain (feature inputs, registry rows, risk levels)."""

from __future__ import annotations

import re

from awareness.scoring.v1 import scoring_pb2

from services.runtime.errors import FieldViolation, InvalidArgumentError
from services.runtime.timestamps import from_timestamp, timestamp_from_us
from services.scoring.domain.errors import InvalidFeatureInputError
from services.scoring.domain.features import FeatureInput
from services.scoring.models import ModelRow, ModelStatus

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
