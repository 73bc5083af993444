"""Shared fixtures: seeded training runs reused by the training, model, registry and service tests."""

from __future__ import annotations

import pytest

from services.scoring.domain.generator import GeneratorConfig, SyntheticDataset, generate
from services.scoring.domain.training import TrainingResult, train

# About 4,600 events; three folds keep a training run to a few tens of CPU seconds.
TEST_CONFIG = GeneratorConfig(people=150, days=42, seed=11)
TEST_FOLDS = 3
# A second, different model (another seed, one algorithm, about 900 events): a few seconds to train.
SMALL_CONFIG = GeneratorConfig(people=60, days=21, seed=5)


@pytest.fixture(scope="session")
def dataset() -> SyntheticDataset:
    return generate(TEST_CONFIG)


@pytest.fixture(scope="session")
def trained(dataset: SyntheticDataset) -> TrainingResult:
    return train(events=dataset.inputs, labels=dataset.labels, seed=TEST_CONFIG.seed, folds=TEST_FOLDS)


@pytest.fixture(scope="session")
def small_trained() -> TrainingResult:
    small = generate(SMALL_CONFIG)
    return train(
        events=small.inputs,
        labels=small.labels,
        seed=SMALL_CONFIG.seed,
        folds=2,
        algorithms=("gradient_boosting",),
    )
