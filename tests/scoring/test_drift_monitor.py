"""The live drift monitor (services/scoring/drift.py): windows, resets, and drift seen through the service."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from awareness.scoring.v1 import scoring_pb2

from services.scoring.domain.drift import ACT_THRESHOLD, CARD_SECTION, WATCH_THRESHOLD
from services.scoring.domain.features import FEATURE_NAMES, FeatureInput, build_features
from services.scoring.domain.generator import GeneratorConfig, Shift, generate
from services.scoring.domain.model import OnnxScorer
from services.scoring.domain.training import TrainingResult
from services.scoring.drift import (
    MIN_EVENTS,
    NOTE_NO_CHAMPION,
    NOTE_NO_DISTRIBUTION,
    DriftMonitor,
    WindowReading,
)
from services.scoring.models import ModelStatus
from tests.scoring.harness import (
    Replica,
    fake_gdpr,
    register,
    running_replica,
    scoring_env,
    scoring_inputs,
    wait_for,
)

# Another organisation than the training data's (tests/scoring/conftest.py), about 4,000 events.
LIVE = GeneratorConfig(people=200, days=28, seed=12)
# After training: a new lure dominates what is reported, and the working day moves six hours later.
SHIFTED = replace(
    LIVE, shift=Shift(working_hours_offset=6.0, lure_event_type="phishing.clicked", lure_share=0.6)
)
MOVED = {"event_type_index", "hour_of_day", "outside_working_hours"}
HOUR = 3600.0
T0 = 1_800_000_000.0  # a fixed wall-clock second for the monitor's clock


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def monitor_for(trained: TrainingResult, clock: Clock) -> DriftMonitor:
    monitor = DriftMonitor(clock=clock)
    monitor.install("v1", json.loads(json.dumps(trained.model_card)))
    return monitor


def scored(trained: TrainingResult, inputs: Sequence[FeatureInput]) -> tuple[np.ndarray, np.ndarray]:
    features = build_features(inputs)
    scorer = OnnxScorer(onnx_bytes=trained.onnx_bytes, expected_sha256=trained.sha256)
    return features, scorer.score(features)


def observe_in_batches(monitor: DriftMonitor, version: str, features: np.ndarray, scores: np.ndarray) -> None:
    for start in range(0, len(features), 64):
        monitor.observe(version, features[start : start + 64], scores[start : start + 64])


def test_windows_slide_over_minute_buckets(
    trained: TrainingResult, dataset_inputs: Sequence[FeatureInput]
) -> None:
    clock = Clock()
    monitor = monitor_for(trained, clock)
    features, scores = scored(trained, dataset_inputs[:300])
    observe_in_batches(monitor, "v1", features[:200], scores[:200])
    clock.now += 30 * 60
    observe_in_batches(monitor, "v1", features[200:], scores[200:])

    now = monitor.readings()
    assert now.model_version == "v1" and now.baseline and now.note == ""
    assert (now.windows["1h"].events, now.windows["24h"].events) == (300, 300)
    assert list(now.windows["1h"].feature_psi) == list(FEATURE_NAMES)
    assert all(value is not None for value in now.windows["1h"].feature_psi.values())
    # 45 minutes later the first 200 have left the hour; a day keeps them all.
    later = monitor.readings(clock.now + 45 * 60)
    assert (later.windows["1h"].events, later.windows["24h"].events) == (100, 300)
    gone = monitor.readings(clock.now + 25 * HOUR)
    assert (gone.windows["1h"].events, gone.windows["24h"].events) == (0, 0)
    assert gone.windows["24h"].score_psi is None
    # A day after the first batch, its bucket is reused: it starts afresh rather than adding to it.
    clock.now = T0 + 24 * HOUR
    observe_in_batches(monitor, "v1", features[:10], scores[:10])
    assert monitor.readings().windows["24h"].events == 10 + 100


def test_psi_needs_a_minimum_of_events(
    trained: TrainingResult, dataset_inputs: Sequence[FeatureInput]
) -> None:
    monitor = monitor_for(trained, Clock())
    features, scores = scored(trained, dataset_inputs[: MIN_EVENTS - 1])
    monitor.observe("v1", features, scores)
    window = monitor.readings().windows["1h"]
    assert window.events == MIN_EVENTS - 1
    assert window.score_psi is None and set(window.feature_psi.values()) == {None}
    monitor.observe("v1", features[:1], scores[:1])
    window = monitor.readings().windows["1h"]
    assert window.score_psi is not None and None not in window.feature_psi.values()


def test_a_new_champion_resets_and_an_old_card_has_no_drift(
    trained: TrainingResult, dataset_inputs: Sequence[FeatureInput]
) -> None:
    monitor = monitor_for(trained, Clock())
    features, scores = scored(trained, dataset_inputs[:200])
    monitor.observe("v1", features, scores)
    monitor.observe("v0", features, scores)  # scored by a champion that is no longer the baseline: ignored
    assert monitor.readings().windows["1h"].events == 200

    monitor.install("v2", json.loads(json.dumps(trained.model_card)))
    assert monitor.readings().windows["24h"].events == 0
    assert monitor.model_version == "v2"

    old_card = {key: value for key, value in trained.model_card.items() if key != CARD_SECTION}
    monitor.install("v3", old_card)
    monitor.observe("v3", features, scores)
    readings = monitor.readings()
    assert (readings.model_version, readings.baseline, readings.note) == ("v3", False, NOTE_NO_DISTRIBUTION)
    assert readings.windows["1h"].events == 0 and readings.windows["1h"].score_psi is None

    monitor.install(None, None)
    assert monitor.readings().note == NOTE_NO_CHAMPION


def test_psi_crosses_the_act_threshold_on_what_moved_in_process(trained: TrainingResult) -> None:
    """The Done-when scenario on one monitor: an hour of the usual stream, then an hour of the shifted one."""
    clock = Clock()
    monitor = monitor_for(trained, clock)
    observe_in_batches(monitor, "v1", *scored(trained, generate(LIVE).inputs))
    before = monitor.readings().windows["1h"]
    assert all(value is not None and value < WATCH_THRESHOLD for value in before.feature_psi.values()), before

    clock.now += 2 * HOUR
    observe_in_batches(monitor, "v1", *scored(trained, generate(SHIFTED).inputs))
    after = monitor.readings()
    assert_moved_only(after.windows["1h"].feature_psi)
    # The day mixes both hours: what moved reads between the usual hour and the shifted one.
    day, hour = after.windows["24h"], after.windows["1h"]
    assert day.events == hour.events + before.events
    for name in MOVED:
        assert reading(before, name) < reading(day, name) < reading(hour, name), name


def reading(window: WindowReading, name: str) -> float:
    value = window.feature_psi[name]
    assert value is not None, name
    return value


def assert_moved_only(feature_psi: Mapping[str, float | None]) -> None:
    for name in FEATURE_NAMES:
        value = feature_psi[name]
        assert value is not None, name
        if name in MOVED:
            assert value >= ACT_THRESHOLD, (name, value)
        else:
            assert value < WATCH_THRESHOLD, (name, value)


@pytest.mark.slow
async def test_the_service_reports_drift_on_a_shifted_stream(tmp_path: Path, trained: TrainingResult) -> None:
    """Done when: serve the champion on a synthetic stream, then shift the generator; read /metrics."""
    async with fake_gdpr() as (_gdpr, gdpr_address):
        for phase, config in (("usual", LIVE), ("shifted", SHIFTED)):
            env = scoring_env(
                tmp_path / phase,
                database_url="",
                gdpr_address=gdpr_address,
                AWARENESS_SCORING_DRIFT_PUBLISH_SECONDS="0.1",
            )
            async with running_replica(env) as replica:
                version = register(replica, trained, status=ModelStatus.CHAMPION)
                await wait_for(lambda replica=replica, version=version: following(replica, version))
                inputs = scoring_inputs(generate(config).inputs)
                for start in range(0, len(inputs), 500):
                    request = scoring_pb2.ScoreEventsRequest(inputs=inputs[start : start + 500])
                    await replica.stub.ScoreEvents(request)

                async def published(replica: Replica = replica, count: int = len(inputs)) -> bool:
                    return replica.metric("drift_window_events", {"window": "1h"}) == count

                await wait_for(published)
                gauges = {
                    name: replica.metric("feature_psi", {"feature": name, "window": "1h"})
                    for name in FEATURE_NAMES
                }
                readings = replica.service.drift.readings()
                assert readings.model_version == version
                assert gauges == pytest.approx(dict(readings.windows["1h"].feature_psi), abs=1e-6)
                assert replica.metric("score_psi", {"window": "1h"}) == pytest.approx(
                    readings.windows["1h"].score_psi, abs=1e-6
                )
                if phase == "usual":
                    assert all(value < WATCH_THRESHOLD for value in gauges.values()), gauges
                else:
                    assert_moved_only(gauges)


async def following(replica: Replica, version: str) -> bool:
    return replica.service.drift.model_version == version


@pytest.fixture(scope="module")
def dataset_inputs() -> tuple[FeatureInput, ...]:
    return generate(LIVE).inputs
