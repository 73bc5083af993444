"""The scoring service over real sockets: scoring, consent, hot reload, restarts, training, bootstrap."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
from awareness.scoring.v1 import scoring_pb2
from sqlalchemy import text

from services.scoring.domain.features import FEATURE_NAMES, build_features
from services.scoring.domain.generator import SyntheticDataset
from services.scoring.domain.model import OnnxScorer, risk_level
from services.scoring.domain.training import TrainingResult
from services.scoring.models import ModelStatus
from tests.grpc_errors import reason_of
from tests.scoring.harness import (
    Replica,
    fake_gdpr,
    register,
    running_replica,
    scoring_env,
    scoring_inputs,
    start_replica,
    stop_replica,
    wait_for,
)

pytestmark = pytest.mark.slow

LEVEL_NAMES = {
    scoring_pb2.RISK_LEVEL_LOW: "low",
    scoring_pb2.RISK_LEVEL_MODERATE: "moderate",
    scoring_pb2.RISK_LEVEL_HIGH: "high",
    scoring_pb2.RISK_LEVEL_CRITICAL: "critical",
}


async def test_score_events_returns_scores_levels_version_and_features(
    tmp_path: Path, trained: TrainingResult, dataset: SyntheticDataset
) -> None:
    async with fake_gdpr() as (_gdpr, gdpr_address):
        env = scoring_env(tmp_path, database_url="", gdpr_address=gdpr_address)
        async with running_replica(env) as replica:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await replica.stub.ScoreEvents(
                    scoring_pb2.ScoreEventsRequest(inputs=scoring_inputs(dataset.inputs[:1]))
                )
            assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert reason_of(caught.value) == "NO_CHAMPION_MODEL"

            version = register(replica, trained, status=ModelStatus.CHAMPION)
            await wait_for(lambda: champion_loaded(replica))
            items = dataset.inputs[:200]  # above the inline limit: scored in a worker thread
            response = await replica.stub.ScoreEvents(
                scoring_pb2.ScoreEventsRequest(inputs=scoring_inputs(items))
            )
            expected = OnnxScorer(onnx_bytes=trained.onnx_bytes, expected_sha256=trained.sha256).score(
                build_features(items)
            )
            matrix = build_features(items)
            assert [r.event_id for r in response.results] == [f"evt-{i:05d}" for i in range(len(items))]
            for row, result in enumerate(response.results):
                assert not result.skipped and result.model_version == version
                assert result.score == float(expected[row])
                assert LEVEL_NAMES[result.level] == risk_level(result.score)
                assert set(result.features) == set(FEATURE_NAMES)
                assert [result.features[name] for name in FEATURE_NAMES] == [float(v) for v in matrix[row]]
            assert replica.metric("scored_total") == len(items)
            assert replica.metric("model_info", {"version": version, "role": "champion"}) == 1

            bad = scoring_inputs(dataset.inputs[:2])
            bad[1].history.events_24h = -1
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await replica.stub.ScoreEvents(scoring_pb2.ScoreEventsRequest(inputs=bad))
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def champion_loaded(replica: Replica) -> bool:
    return replica.service.models.current.champion is not None


async def test_promoting_a_challenger_switches_a_running_replica(
    tmp_path: Path,
    database_url: str,
    trained: TrainingResult,
    small_trained: TrainingResult,
    dataset: SyntheticDataset,
) -> None:
    """Two replicas on one registry: promotion through one; the other, already running, hot-reloads."""
    inputs = scoring_inputs(dataset.inputs[:20])
    async with fake_gdpr() as (_gdpr, gdpr_address):
        env = scoring_env(tmp_path, database_url=database_url, gdpr_address=gdpr_address)
        async with running_replica(env) as first, running_replica(env) as second:
            champion = register(first, trained, status=ModelStatus.CHAMPION)
            challenger = register(first, small_trained)

            async def versions_seen_by_second() -> set[str] | None:
                current = second.service.models.current
                if current.champion is None or current.challenger is None:
                    return None
                response = await second.stub.ScoreEvents(scoring_pb2.ScoreEventsRequest(inputs=inputs))
                return {r.model_version for r in response.results}

            assert await wait_for(versions_seen_by_second) == {champion}
            await second.service.shadow.drain()
            shadow = await second.stub.ListShadowScores(
                scoring_pb2.ListShadowScoresRequest(parent=f"models/{challenger}", page_size=1000)
            )
            assert {s.event_id for s in shadow.shadow_scores} >= {i.event_id for i in inputs}
            expected_challenger = OnnxScorer(
                onnx_bytes=small_trained.onnx_bytes, expected_sha256=small_trained.sha256
            ).score(build_features(dataset.inputs[:20]))
            by_event = {s.event_id: s for s in shadow.shadow_scores}
            for index, item in enumerate(inputs):
                record = by_event[item.event_id]
                assert record.champion_model_version == champion
                assert record.challenger_model_version == challenger
                assert record.challenger_score == float(expected_challenger[index])

            promoted = await first.stub.PromoteModel(
                scoring_pb2.PromoteModelRequest(name=f"models/{challenger}")
            )
            assert promoted.status == scoring_pb2.Model.STATUS_CHAMPION

            async def second_switched() -> bool:
                response = await second.stub.ScoreEvents(scoring_pb2.ScoreEventsRequest(inputs=inputs))
                return {r.model_version for r in response.results} == {challenger}

            await wait_for(second_switched, timeout=20)
            assert second.metric("model_reloads_total", {"role": "challenger"}) == 1
            listed = await second.stub.ListModels(scoring_pb2.ListModelsRequest())
            statuses = {m.version: m.status for m in listed.models}
            assert statuses == {
                challenger: scoring_pb2.Model.STATUS_CHAMPION,
                champion: scoring_pb2.Model.STATUS_RETIRED,
            }


async def test_scores_are_identical_across_restarts(
    tmp_path: Path, database_url: str, trained: TrainingResult, dataset: SyntheticDataset
) -> None:
    request = scoring_pb2.ScoreEventsRequest(inputs=scoring_inputs(dataset.inputs[:300]))
    async with fake_gdpr() as (_gdpr, gdpr_address):
        env = scoring_env(tmp_path, database_url=database_url, gdpr_address=gdpr_address)
        replica = await start_replica(env)
        try:
            register(replica, trained, status=ModelStatus.CHAMPION)
            await wait_for(lambda: champion_loaded(replica))
            before = await replica.stub.ScoreEvents(request)
        finally:
            await stop_replica(replica)
        async with running_replica(env) as restarted:
            assert restarted.service.models.current.champion is not None  # loaded at start
            after = await restarted.stub.ScoreEvents(request)
    assert before.SerializeToString(deterministic=True) == after.SerializeToString(deterministic=True)
    scores = np.array([r.score for r in after.results])
    assert len(set(scores.tolist())) > 10  # real, varied scores, not a constant


async def test_a_corrupted_stored_model_is_refused_by_the_service(
    tmp_path: Path, trained: TrainingResult, dataset: SyntheticDataset
) -> None:
    request = scoring_pb2.ScoreEventsRequest(inputs=scoring_inputs(dataset.inputs[:5]))
    async with fake_gdpr() as (_gdpr, gdpr_address):
        env = scoring_env(tmp_path, database_url="", gdpr_address=gdpr_address)
        async with running_replica(env) as replica:
            version = register(replica, trained, status=ModelStatus.CHAMPION)
            await wait_for(lambda: champion_loaded(replica))
            assert replica.context.engine is not None
            with replica.context.engine.begin() as connection:
                stored = connection.execute(
                    text("SELECT onnx FROM models WHERE version = :v"), {"v": version}
                ).scalar_one()
                tampered = bytearray(stored)
                tampered[len(tampered) // 2] ^= 0x80
                connection.execute(
                    text("UPDATE models SET onnx = :onnx WHERE version = :v"),
                    {"onnx": bytes(tampered), "v": version},
                )
        async with running_replica(env) as restarted:
            assert restarted.metric("model_integrity_failures_total") == 1
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await restarted.stub.ScoreEvents(request)
            assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert reason_of(caught.value) == "NO_CHAMPION_MODEL"
