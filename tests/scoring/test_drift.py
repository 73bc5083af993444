"""Binned training distributions and PSI (services/scoring/domain/drift.py), and the generator's shift."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest

from services.scoring.domain.drift import (
    ACT_THRESHOLD,
    CARD_SECTION,
    KIND_CATEGORICAL,
    KIND_QUANTILE,
    PSI_EPSILON,
    WATCH_THRESHOLD,
    BatchBinner,
    BinnedColumn,
    DistributionFormatError,
    TrainingDistribution,
    fit_column,
    fit_training_distribution,
    level,
    psi,
)
from services.scoring.domain.features import FEATURE_NAMES, build_features
from services.scoring.domain.generator import GeneratorConfig, Shift, generate
from services.scoring.domain.training import TrainingResult

SMALL = GeneratorConfig(people=60, days=21, seed=3)


def test_psi_of_identical_distributions_is_zero() -> None:
    expected = [0.1, 0.2, 0.3, 0.4]
    assert psi(expected, [10, 20, 30, 40]) == pytest.approx(0.0, abs=1e-12)
    assert psi(expected, [1, 2, 3, 4]) == pytest.approx(0.0, abs=1e-12)


def test_psi_matches_a_hand_computed_value() -> None:
    # (0.6 - 0.5) ln(0.6 / 0.5) + (0.4 - 0.5) ln(0.4 / 0.5) = 0.1 ln 1.2 + 0.1 ln 1.25
    assert psi([0.5, 0.5], [60, 40]) == pytest.approx(0.1 * math.log(1.2) + 0.1 * math.log(1.25), rel=1e-12)
    assert psi([0.5, 0.5], [60, 40]) == pytest.approx(0.0405465, abs=1e-7)


def test_empty_bins_count_as_epsilon_on_either_side() -> None:
    # Empty in both: adds nothing.
    assert psi([0.5, 0.5, 0.0], [50, 50, 0]) == pytest.approx(0.0, abs=1e-12)
    # Training never filled the last bin; half the live rows land there.
    value = psi([0.5, 0.5, 0.0], [25, 25, 50])
    by_hand = 2 * (0.25 - 0.5) * math.log(0.25 / 0.5) + (0.5 - PSI_EPSILON) * math.log(0.5 / PSI_EPSILON)
    assert value == pytest.approx(by_hand, rel=1e-12)
    assert value > ACT_THRESHOLD
    # Live never fills a bin that training did: finite, and eps stands for the empty live share.
    assert psi([0.5, 0.5], [100, 0]) == pytest.approx(
        (1 - 0.5) * math.log(1 / 0.5) + (PSI_EPSILON - 0.5) * math.log(PSI_EPSILON / 0.5), rel=1e-12
    )
    assert psi([0.5, 0.5], [0, 0]) == 0.0
    with pytest.raises(ValueError):
        psi([0.5, 0.5], [1, 2, 3])


def test_levels_follow_the_thresholds() -> None:
    assert (WATCH_THRESHOLD, ACT_THRESHOLD) == (0.1, 0.25)
    assert [level(v) for v in (0.0, 0.099, 0.1, 0.2499, 0.25, 3.0)] == [
        "stable",
        "stable",
        "watch",
        "watch",
        "act",
        "act",
    ]


def test_categorical_bins_are_the_seen_values_plus_a_catch_all_for_unseen_ones() -> None:
    column = fit_column(np.array([0, 0, 2, 2, 2, 5], dtype=np.float32), categorical=True)
    assert column.kind == KIND_CATEGORICAL
    assert column.edges == (0.0, 2.0, 5.0)
    assert column.proportions == pytest.approx((2 / 6, 3 / 6, 1 / 6, 0.0))
    # 1, 3 and 16 were never seen (1 and 3 lie between seen values): all three go to the catch-all.
    assert column.bin_indices(np.array([0, 1, 2, 3, 5, 16, -1])).tolist() == [0, 3, 1, 3, 2, 3, 3]
    # A stream of a category training never saw is drift to act on.
    live = np.bincount(column.bin_indices(np.array([16.0] * 60 + [2.0] * 40)), minlength=column.bins)
    assert psi(column.proportions, live) > ACT_THRESHOLD


def test_quantile_bins_are_open_ended_deciles_and_collapse_ties() -> None:
    values = np.arange(1, 101, dtype=np.float64)  # 1..100
    column = fit_column(values, categorical=False)
    assert column.kind == KIND_QUANTILE
    assert column.edges == (10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0)
    assert column.proportions == pytest.approx((0.1,) * 10)
    # Upper bounds are inclusive; anything beyond the training range lands in an end bin.
    assert column.bin_indices(np.array([-1e9, 10, 10.5, 90, 90.01, 1e9])).tolist() == [0, 0, 1, 8, 9, 9]
    # A count that is mostly zero: ties collapse the edges to the values seen at a decile, and the
    # open top bin takes the rest.
    mostly_zero = np.array([0] * 80 + [1] * 10 + [3] * 10, dtype=np.float64)
    tied = fit_column(mostly_zero, categorical=False)
    assert tied.edges == (0.0, 1.0)
    assert tied.proportions == pytest.approx((0.8, 0.1, 0.1))
    assert tied.bin_indices(np.array([0.0, 1.0, 2.0, 3.0, 40.0])).tolist() == [0, 1, 2, 2, 2]


def test_the_batch_binner_agrees_with_the_column_bins() -> None:
    features = build_features(generate(SMALL).inputs)
    scores = np.random.default_rng(1).random(len(features)).astype(np.float32)
    distribution = fit_training_distribution(features, scores)
    binner = BatchBinner(distribution)
    live = build_features(generate(replace(SMALL, seed=4)).inputs)
    live[:5, FEATURE_NAMES.index("event_type_index")] = [16.0, 2.5, -1.0, 100.0, 0.0]  # mostly unseen
    live[:2, FEATURE_NAMES.index("summary_length")] = [-5.0, 1e6]  # beyond the training range
    live_scores = np.random.default_rng(2).random(len(live)).astype(np.float32)
    raw = binner.count(live, live_scores)
    assert raw.sum() == len(live) * (len(FEATURE_NAMES) + 1)
    counts = binner.bin_counts(raw)
    assert counts.sum() == raw.sum()
    for index, name in enumerate(FEATURE_NAMES):
        column = distribution.features[name]
        expected = np.bincount(column.bin_indices(live[:, index]), minlength=column.bins)
        assert counts[binner.slices[name]].tolist() == expected.tolist(), name
    expected_scores = np.bincount(
        distribution.score.bin_indices(live_scores), minlength=distribution.score.bins
    )
    assert counts[binner.slices["score"]].tolist() == expected_scores.tolist()
    # The training rows against their own distribution: no drift.
    own = binner.bin_counts(binner.count(features, scores))
    assert all(psi(binner.expected[name], own[binner.slices[name]]) < 1e-6 for name in binner.expected)


def test_the_kind_of_each_feature() -> None:
    distribution = fit_training_distribution(
        build_features(generate(SMALL).inputs), np.linspace(0.0, 1.0, 50)
    )
    kinds = {name: column.kind for name, column in distribution.features.items()}
    categorical = {name for name, kind in kinds.items() if kind == KIND_CATEGORICAL}
    assert {"event_type_index", "source_index", "outside_working_hours", "is_weekend"} <= categorical
    assert kinds["hour_of_day"] == kinds["summary_length"] == kinds["events_7d"] == KIND_QUANTILE
    assert distribution.score.kind == KIND_QUANTILE
    for column in (*distribution.features.values(), distribution.score):
        assert sum(column.proportions) == pytest.approx(1.0, abs=1e-6)


def test_the_model_card_carries_the_training_distribution(trained: TrainingResult) -> None:
    card = json.loads(json.dumps(trained.model_card))
    section = card[CARD_SECTION]
    assert section["psi_epsilon"] == PSI_EPSILON
    assert list(section["features"]) == list(FEATURE_NAMES)
    assert section["feature_rows"] == card["rows"]["train"] + card["rows"]["test"]
    assert section["score_rows"] == card["rows"]["test"]
    distribution = TrainingDistribution.from_card(card)
    assert distribution is not None
    assert distribution.to_card() == section
    # A card written before drift monitoring: loadable, no distribution.
    old = {key: value for key, value in card.items() if key != CARD_SECTION}
    assert TrainingDistribution.from_card(old) is None


def test_an_unreadable_distribution_is_refused(trained: TrainingResult) -> None:
    card = json.loads(json.dumps(trained.model_card))
    broken = json.loads(json.dumps(card))
    broken[CARD_SECTION]["features"]["severity"]["proportions"].append(0.0)
    with pytest.raises(DistributionFormatError):
        TrainingDistribution.from_card(broken)
    renamed = json.loads(json.dumps(card))
    renamed[CARD_SECTION]["features"] = {"other": {}}
    with pytest.raises(DistributionFormatError):
        TrainingDistribution.from_card(renamed)
    with pytest.raises(DistributionFormatError):
        BinnedColumn.from_card({"kind": "histogram", "edges": [], "proportions": [1.0]}, what="x")


def test_the_generator_shift_changes_only_what_it_names() -> None:
    plain = generate(SMALL)
    assert generate(replace(SMALL, shift=Shift())).inputs == plain.inputs  # the default changes nothing
    lure = generate(replace(SMALL, shift=Shift(lure_event_type="phishing.clicked", lure_share=0.6)))
    assert [replace(item, event_type="") for item in lure.inputs] == [
        replace(item, event_type="") for item in plain.inputs
    ]
    share = np.mean([item.event_type == "phishing.clicked" for item in lure.inputs])
    assert 0.55 < share < 0.65
    later = generate(replace(SMALL, shift=Shift(working_hours_offset=6.0)))
    hours = [item.occurred_at.hour for item in later.inputs]
    plain_hours = [item.occurred_at.hour for item in plain.inputs]
    assert np.mean([h >= 18 for h in hours]) > np.mean([h >= 18 for h in plain_hours]) + 0.3
    with pytest.raises(ValueError):
        Shift(lure_share=0.5)
    with pytest.raises(ValueError):
        Shift(working_hours_offset=7.0)
