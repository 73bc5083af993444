"""The model registry on SQLite and PostgreSQL: registration, listing, promotion, integrity, shadow scores."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from services.runtime import db
from services.runtime.config import default_database_url
from services.runtime.db import transaction
from services.runtime.metrics import ServiceMetrics
from services.scoring import repository
from services.scoring.domain.errors import ModelIntegrityError, ModelNotFoundError
from services.scoring.domain.training import TrainingResult
from services.scoring.live import LiveModels
from services.scoring.metrics import ScoringMetrics
from services.scoring.models import ModelStatus
from services.scoring.training_job import register_result
from tests.support.resources import migrated_engine

pytestmark = pytest.mark.slow


@pytest.fixture
def engine(tmp_path: Path, database_url: str) -> Iterator[Engine]:
    with migrated_engine(database_url or default_database_url(tmp_path, "scoring"), "scoring") as engine:
        yield engine


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    return db.session_factory(engine)


def scoring_metrics() -> ScoringMetrics:
    return ScoringMetrics.create(ServiceMetrics("scoring", registry=CollectorRegistry()))


def add(sessions: sessionmaker[Session], result: TrainingResult, status: ModelStatus) -> str:
    with transaction(sessions) as session:
        row, created = register_result(session, result=result, status=status)
        assert created
        return row.version


def corrupt(engine: Engine, version: str, *, position: int = 100) -> None:
    """Flip one bit of the stored ONNX bytes with a raw SQL UPDATE, as an attacker or a bad disk would."""
    with engine.begin() as connection:
        stored = bytes(
            connection.execute(
                text("SELECT onnx FROM models WHERE version = :v"), {"v": version}
            ).scalar_one()
        )
        tampered = bytearray(stored)
        tampered[position] ^= 0x01
        connection.execute(
            text("UPDATE models SET onnx = :onnx WHERE version = :v"), {"onnx": bytes(tampered), "v": version}
        )


def test_register_list_and_promote(
    sessions: sessionmaker[Session], trained: TrainingResult, small_trained: TrainingResult
) -> None:
    first = add(sessions, trained, ModelStatus.CHAMPION)
    second = add(sessions, small_trained, ModelStatus.CHALLENGER)
    with sessions() as session:
        row = repository.get_model(session, version=first, with_card=True)
        assert row.sha256 == trained.sha256 and row.onnx_size_bytes == len(trained.onnx_bytes)
        assert row.algorithm in {"random_forest", "gradient_boosting"}
        assert row.metrics["roc_auc"] == trained.metrics.roc_auc
        assert row.metrics["baseline_f1"] == trained.baseline.f1
        assert row.model_card["onnx"]["sha256"] == trained.sha256
        assert row.feature_schema_version == "features-v1"
        assert repository.model_bytes(session, version=second) == (
            small_trained.onnx_bytes,
            small_trained.sha256,
        )
        active = repository.active_models(session)
        assert (
            active.champion and active.champion.version,
            active.challenger and active.challenger.version,
        ) == (
            first,
            second,
        )
        page = repository.list_models(session, limit=1)
        assert [m.version for m in page] == [second]  # newest first
        rest = repository.list_models(session, limit=5, before=(page[0].created_at_us, page[0].version))
        assert [m.version for m in rest] == [first]
        assert [m.version for m in repository.list_models(session, limit=5, status=ModelStatus.CHAMPION)] == [
            first
        ]

    with transaction(sessions) as session:
        promoted, changed = repository.promote_model(session, version=second)
        assert changed and promoted.status == ModelStatus.CHAMPION.value and promoted.promoted_at_us
    with transaction(sessions) as session:
        assert repository.promote_model(session, version=second)[1] is False  # no-op, so retries are safe
    with sessions() as session:
        assert repository.get_model(session, version=first).status == ModelStatus.RETIRED.value
        with pytest.raises(ModelNotFoundError):
            repository.get_model(session, version="nope")
    # Registering the same bytes again returns the registered model.
    with transaction(sessions) as session:
        again, created = register_result(session, result=trained, status=ModelStatus.CHALLENGER)
        assert not created and again.version == first


def test_the_database_admits_one_champion(
    sessions: sessionmaker[Session], trained: TrainingResult, small_trained: TrainingResult
) -> None:
    add(sessions, trained, ModelStatus.CHAMPION)
    with pytest.raises(IntegrityError), transaction(sessions) as session:
        register_result(session, result=small_trained, status=ModelStatus.CHAMPION)


def test_bytes_that_do_not_match_their_hash_are_not_registered(
    sessions: sessionmaker[Session], trained: TrainingResult
) -> None:
    with pytest.raises(ModelIntegrityError), transaction(sessions) as session:
        repository.register_model(
            session,
            version="v-bad",
            onnx=trained.onnx_bytes[:-1] + b"\x00",
            sha256=trained.sha256,
            algorithm="random_forest",
            parameters={},
            metrics={},
            data_card_version="synthetic-v1",
            feature_schema_version="features-v1",
            training_example_count=0,
            model_card={},
        )


def test_a_corrupted_stored_model_is_refused_on_load(
    engine: Engine, sessions: sessionmaker[Session], trained: TrainingResult
) -> None:
    version = add(sessions, trained, ModelStatus.CHAMPION)
    corrupt(engine, version)
    metrics = scoring_metrics()
    live = LiveModels(sessions=sessions, metrics=metrics)
    snapshot = live.refresh()
    assert snapshot.champion is None
    assert metrics.model_integrity_failures._value.get() == 1
    live.refresh()  # not retried on every poll: one failure, one count
    assert metrics.model_integrity_failures._value.get() == 1


def test_a_corrupted_challenger_cannot_be_promoted(
    engine: Engine, sessions: sessionmaker[Session], trained: TrainingResult, small_trained: TrainingResult
) -> None:
    champion = add(sessions, trained, ModelStatus.CHAMPION)
    challenger = add(sessions, small_trained, ModelStatus.CHALLENGER)
    corrupt(engine, challenger, position=-1 % len(small_trained.onnx_bytes))
    with pytest.raises(ModelIntegrityError), transaction(sessions) as session:
        repository.promote_model(session, version=challenger)
    with sessions() as session:
        assert repository.get_model(session, version=champion).status == ModelStatus.CHAMPION.value


def test_a_refused_new_champion_leaves_the_previous_one_serving(
    engine: Engine, sessions: sessionmaker[Session], trained: TrainingResult, small_trained: TrainingResult
) -> None:
    first = add(sessions, trained, ModelStatus.CHAMPION)
    metrics = scoring_metrics()
    live = LiveModels(sessions=sessions, metrics=metrics)
    assert live.refresh().champion is not None
    second = add(sessions, small_trained, ModelStatus.CHALLENGER)
    with transaction(sessions) as session:
        repository.promote_model(session, version=second)
    corrupt(engine, second)  # tampered after promotion, before this replica loads it
    snapshot = live.refresh()
    assert snapshot.champion is not None and snapshot.champion.version == first
    assert snapshot.challenger is None
    assert metrics.model_integrity_failures._value.get() == 1
    assert metrics.model_info.labels(first, "champion")._value.get() == 1


def test_shadow_scores_are_listed_newest_first_in_pages(sessions: sessionmaker[Session]) -> None:
    scores = [
        repository.ShadowScore(
            event_id=f"e{i}",
            champion_version="a",
            challenger_version="b" if i % 2 == 0 else "c",
            champion_score=i / 10,
            challenger_score=1 - i / 10,
            scored_at_us=1_000 + i // 3,
        )
        for i in range(10)
    ]
    with transaction(sessions) as session:
        repository.record_shadow_scores(session, scores=scores)
    seen: list[str] = []
    before: tuple[int, int] | None = None
    with sessions() as session:
        while True:
            page = repository.list_shadow_scores(session, challenger_version="b", limit=2, before=before)
            seen.extend(row.event_id for row in page)
            if len(page) < 2:
                break
            before = (page[-1].scored_at_us, page[-1].id)
    assert seen == ["e8", "e6", "e4", "e2", "e0"]
