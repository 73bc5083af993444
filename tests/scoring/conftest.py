"""Shared fixtures: one modest, seeded training run reused by the training and model tests."""

from __future__ import annotations

import pytest

from services.scoring.domain.generator import GeneratorConfig, SyntheticDataset, generate
from services.scoring.domain.training import TrainingResult, train

# About 4,600 events; three folds keep a training run to a few tens of CPU seconds.
TEST_CONFIG = GeneratorConfig(people=150, days=42, seed=11)
TEST_FOLDS = 3


@pytest.fixture(scope="session")
def dataset() -> SyntheticDataset:
    return generate(TEST_CONFIG)


@pytest.fixture(scope="session")
def trained(dataset: SyntheticDataset) -> TrainingResult:
    return train(events=dataset.inputs, labels=dataset.labels, seed=TEST_CONFIG.seed, folds=TEST_FOLDS)
