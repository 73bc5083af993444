"""Feature code shared by training and serving: one function turns events into the model's input matrix.

The model's ONNX graph holds the rest of the preprocessing (one-hot encoding of the two categorical
columns), so this module stays a plain, numeric, deterministic mapping.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt

from services.scoring.domain.errors import InvalidFeatureInputError
from services.scoring.domain.event_types import EVENT_TYPES

# Bump whenever a column is added, removed, reordered or computed differently: models record it and the
# scorer refuses a model built for another schema.
FEATURE_SCHEMA_VERSION = "features-v1"

# Reporting systems seen in practice; anything else maps to one shared "unknown" index.
KNOWN_SOURCES: tuple[str, ...] = (
    "gophish",
    "mail-gateway",
    "idp",
    "vpn",
    "lms",
    "policy-portal",
    "edr",
    "dlp",
    "casb",
    "gdpr",
)

# Working hours in UTC, [start, end) on Monday..Friday.
WORKING_HOURS_START = 8
WORKING_HOURS_END = 18

FEATURE_NAMES: tuple[str, ...] = (
    "event_type_index",
    "source_index",
    "severity",
    "hour_of_day",
    "day_of_week",
    "outside_working_hours",
    "is_weekend",
    "summary_length",
    "detail_count",
    "events_24h",
    "events_7d",
    "violations_30d",
    "distinct_sources_24h",
    "source_is_new",
    "failed_logins_24h",
    "log_seconds_since_previous_event",
    "has_previous_event",
    "burst_ratio_24h_vs_7d",
)

# Categorical columns and their number of categories (the last one is "unknown"); the training pipeline
# one-hot encodes them inside the exported graph.
CATEGORICAL_CARDINALITIES: Mapping[str, int] = {
    "event_type_index": len(EVENT_TYPES) + 1,
    "source_index": len(KNOWN_SOURCES) + 1,
}

# Continuous values are rounded so that two distinct inputs are never one float32 ulp apart: every tree
# split threshold then sits strictly between representable inputs, and the float32 thresholds of the
# ONNX graph decide exactly like sklearn's float64 ones.
_CONTINUOUS_DECIMALS = 3

_EVENT_TYPE_INDEX: Mapping[str, int] = {name: index for index, name in enumerate(EVENT_TYPES)}
_SOURCE_INDEX: Mapping[str, int] = {name: index for index, name in enumerate(KNOWN_SOURCES)}
_MAX_SEVERITY = 5


@dataclass(frozen=True, slots=True, kw_only=True)
class FeatureInput:
    """One event plus the subject's history aggregates that ingest computes before asking for a score."""

    event_type: str
    source: str
    severity: int  # ingest's Severity enum number: 1 info .. 5 critical (0 unspecified)
    occurred_at: datetime
    summary_length: int
    detail_count: int
    events_24h: int
    events_7d: int
    violations_30d: int
    distinct_sources_24h: int
    source_is_new: bool
    failed_logins_24h: int
    seconds_since_previous_event: float  # -1 when the subject has no previous event

    def __post_init__(self) -> None:
        if not 0 <= self.severity <= _MAX_SEVERITY:
            raise InvalidFeatureInputError(f"severity must be 0..{_MAX_SEVERITY}, got {self.severity}")
        if self.occurred_at.tzinfo is None or self.occurred_at.utcoffset() is None:
            raise InvalidFeatureInputError("occurred_at must be timezone-aware")
        counts = {
            "summary_length": self.summary_length,
            "detail_count": self.detail_count,
            "events_24h": self.events_24h,
            "events_7d": self.events_7d,
            "violations_30d": self.violations_30d,
            "distinct_sources_24h": self.distinct_sources_24h,
            "failed_logins_24h": self.failed_logins_24h,
        }
        for name, value in counts.items():
            if value < 0:
                raise InvalidFeatureInputError(f"{name} must be >= 0, got {value}")
        gap = self.seconds_since_previous_event
        if math.isnan(gap) or math.isinf(gap) or (gap < 0 and gap != -1):
            raise InvalidFeatureInputError(f"seconds_since_previous_event must be >= 0 or -1, got {gap}")


def event_type_index(event_type: str) -> int:
    """Index of a registered event type; unregistered types share the last index."""
    return _EVENT_TYPE_INDEX.get(event_type, len(EVENT_TYPES))


def source_index(source: str) -> int:
    """Index of a known source; unknown sources share the last index."""
    return _SOURCE_INDEX.get(source, len(KNOWN_SOURCES))


def is_outside_working_hours(moment: datetime) -> bool:
    """True at weekends and outside [WORKING_HOURS_START, WORKING_HOURS_END) UTC on weekdays."""
    utc = moment.astimezone(UTC)
    return utc.weekday() >= 5 or not WORKING_HOURS_START <= utc.hour < WORKING_HOURS_END


def _feature_row(item: FeatureInput) -> tuple[float, ...]:
    utc = item.occurred_at.astimezone(UTC)
    has_previous = item.seconds_since_previous_event >= 0
    log_gap = math.log1p(item.seconds_since_previous_event) if has_previous else -1.0
    burst_ratio = item.events_24h / (item.events_7d / 7.0 + 1.0)
    return (
        float(event_type_index(item.event_type)),
        float(source_index(item.source)),
        float(item.severity),
        float(utc.hour),
        float(utc.weekday()),
        float(is_outside_working_hours(utc)),
        float(utc.weekday() >= 5),
        float(item.summary_length),
        float(item.detail_count),
        float(item.events_24h),
        float(item.events_7d),
        float(item.violations_30d),
        float(item.distinct_sources_24h),
        float(item.source_is_new),
        float(item.failed_logins_24h),
        round(log_gap, _CONTINUOUS_DECIMALS),
        float(has_previous),
        round(burst_ratio, _CONTINUOUS_DECIMALS),
    )


def build_features(inputs: Sequence[FeatureInput]) -> npt.NDArray[np.float32]:
    """Feature matrix, float32 of shape (len(inputs), len(FEATURE_NAMES)), columns in FEATURE_NAMES order."""
    matrix = np.empty((len(inputs), len(FEATURE_NAMES)), dtype=np.float32)
    for row, item in enumerate(inputs):
        matrix[row] = _feature_row(item)
    return matrix
