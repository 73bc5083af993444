from __future__ import annotations

import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import pytest

from services.scoring.domain.errors import InvalidFeatureInputError
from services.scoring.domain.event_types import EVENT_TYPES
from services.scoring.domain.features import (
    FEATURE_NAMES,
    KNOWN_SOURCES,
    FeatureInput,
    build_features,
)

COLUMN = {name: index for index, name in enumerate(FEATURE_NAMES)}


# Counts a feature takes over as they are: the same name in the input and in the matrix.
COUNTS = {
    "summary_length": 120,
    "detail_count": 4,
    "events_24h": 6,
    "events_7d": 14,
    "violations_30d": 2,
    "distinct_sources_24h": 3,
    "failed_logins_24h": 5,
}


def make_input(**overrides: object) -> FeatureInput:
    values: dict[str, object] = {
        "event_type": "phishing.clicked",
        "source": "gophish",
        "severity": 3,
        # Wednesday 8 January 2025, 21:30 UTC: a weekday evening, outside working hours.
        "occurred_at": datetime(2025, 1, 8, 21, 30, tzinfo=UTC),
        **COUNTS,
        "source_is_new": True,
        "seconds_since_previous_event": 3600.0,
    }
    values.update(overrides)
    return FeatureInput(**values)  # type: ignore[arg-type]


def test_feature_matrix_has_at_least_16_float32_columns() -> None:
    matrix = build_features([make_input(), make_input(severity=1)])
    assert len(FEATURE_NAMES) >= 16
    assert len(set(FEATURE_NAMES)) == len(FEATURE_NAMES)
    assert matrix.shape == (2, len(FEATURE_NAMES))
    assert matrix.dtype == np.float32


def test_hand_made_input_gives_the_expected_values() -> None:
    row = build_features([make_input()])[0]
    expected = {
        "event_type_index": EVENT_TYPES.index("phishing.clicked"),
        "source_index": KNOWN_SOURCES.index("gophish"),
        "severity": 3,
        "hour_of_day": 21,
        "day_of_week": 2,  # Wednesday
        "outside_working_hours": 1,
        "is_weekend": 0,
        **COUNTS,
        "source_is_new": 1,
        "log_seconds_since_previous_event": round(math.log1p(3600.0), 3),
        "has_previous_event": 1,
        "burst_ratio_24h_vs_7d": round(6 / (14 / 7 + 1), 3),
    }
    assert set(expected) == set(FEATURE_NAMES)
    for name, value in expected.items():
        assert row[COLUMN[name]] == pytest.approx(value, abs=1e-6), name


@pytest.mark.parametrize(
    ("occurred_at", "hour", "weekday", "outside", "weekend"),
    [
        (datetime(2025, 1, 6, 9, 0, tzinfo=UTC), 9, 0, 0, 0),  # Monday morning
        (datetime(2025, 1, 10, 17, 59, tzinfo=UTC), 17, 4, 0, 0),  # Friday, last working minute
        (datetime(2025, 1, 10, 18, 0, tzinfo=UTC), 18, 4, 1, 0),  # Friday evening
        (datetime(2025, 1, 7, 7, 59, tzinfo=UTC), 7, 1, 1, 0),  # Tuesday before work
        (datetime(2025, 1, 11, 11, 0, tzinfo=UTC), 11, 5, 1, 1),  # Saturday midday
        # 01:30 on Tuesday at UTC+2 is 23:30 on Monday UTC.
        (datetime(2025, 1, 7, 1, 30, tzinfo=timezone(timedelta(hours=2))), 23, 0, 1, 0),
    ],
)
def test_temporal_features(
    occurred_at: datetime, hour: int, weekday: int, outside: int, weekend: int
) -> None:
    row = build_features([make_input(occurred_at=occurred_at)])[0]
    assert row[COLUMN["hour_of_day"]] == hour
    assert row[COLUMN["day_of_week"]] == weekday
    assert row[COLUMN["outside_working_hours"]] == outside
    assert row[COLUMN["is_weekend"]] == weekend


def test_first_event_of_a_subject_has_no_previous_gap() -> None:
    row = build_features([make_input(seconds_since_previous_event=-1.0)])[0]
    assert row[COLUMN["log_seconds_since_previous_event"]] == -1
    assert row[COLUMN["has_previous_event"]] == 0


def test_unknown_event_type_and_source_share_the_last_index() -> None:
    row = build_features([make_input(event_type="vendor.something_new", source="homegrown")])[0]
    assert row[COLUMN["event_type_index"]] == len(EVENT_TYPES)
    assert row[COLUMN["source_index"]] == len(KNOWN_SOURCES)


def test_empty_input_gives_an_empty_matrix() -> None:
    assert build_features([]).shape == (0, len(FEATURE_NAMES))


@pytest.mark.parametrize(
    "overrides",
    [
        {"severity": 6},
        {"severity": -1},
        {"occurred_at": datetime(2025, 1, 8, 21, 30)},  # naive
        {"events_24h": -1},
        {"detail_count": -3},
        {"seconds_since_previous_event": -5.0},
        {"seconds_since_previous_event": float("nan")},
    ],
)
def test_out_of_range_inputs_are_refused(overrides: dict[str, object]) -> None:
    with pytest.raises(InvalidFeatureInputError):
        make_input(**overrides)


def test_feature_input_is_immutable() -> None:
    item = make_input()
    with pytest.raises(AttributeError):
        item.severity = 5  # type: ignore[misc]
    assert replace(item, severity=5).severity == 5
