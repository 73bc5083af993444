"""The access records of the model registry: TrainModel and PromoteModel name the model and its facts,
and never a name a caller typed that is not a model's."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from awareness.scoring.v1 import scoring_pb2

from tests.scoring.harness import fake_gdpr, running_replica, scoring_env
from tests.scoring.test_service_consent_and_training import SMALL_TRAINING_ENV
from tests.support.access_records import RecordSink, assert_nothing_personal, capture

pytestmark = pytest.mark.slow

TYPED_NAME = "models/ana.person@example.org"


async def test_training_and_promotion_record_the_model(tmp_path: Path) -> None:
    async with fake_gdpr() as (_gdpr, gdpr_address):
        env = scoring_env(tmp_path, database_url="", gdpr_address=gdpr_address, **SMALL_TRAINING_ENV)
        async with running_replica(env) as replica:
            sink = capture(replica.context)
            model = await replica.stub.TrainModel(
                scoring_pb2.TrainModelRequest(algorithms=["gradient_boosting"], cv_folds=2, seed=3)
            )
            with pytest.raises(grpc.aio.AioRpcError) as folds:
                await replica.stub.TrainModel(scoring_pb2.TrainModelRequest(cv_folds=1))
            promoted = await replica.stub.PromoteModel(scoring_pb2.PromoteModelRequest(name=model.name))
            with pytest.raises(grpc.aio.AioRpcError) as typed:
                await replica.stub.PromoteModel(scoring_pb2.PromoteModelRequest(name=TYPED_NAME))
            with pytest.raises(grpc.aio.AioRpcError) as missing:
                await replica.stub.PromoteModel(scoring_pb2.PromoteModelRequest(name="models/no-such-model"))
            await replica.stub.ListModels(scoring_pb2.ListModelsRequest())  # a read: not recorded
            events = await sink.settled(5)

    assert (folds.value.code(), typed.value.code(), missing.value.code()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
    )
    assert [RecordSink.row(event) for event in events] == [
        ("test:ml", "model.train", model.name, "OK"),
        ("test:ml", "model.train", "models", "INVALID_ARGUMENT"),
        ("test:ml", "model.promote", model.name, "OK"),
        ("test:ml", "model.promote", "models", "INVALID_ARGUMENT"),
        ("test:ml", "model.promote", "models/no-such-model", "NOT_FOUND"),
    ]
    trained, promotion = events[0].details, events[2].details
    assert (trained["version"], trained["algorithm"], trained["sha256"], trained["status"]) == (
        model.version,
        "gradient_boosting",
        model.sha256,
        "CHALLENGER",
    )
    assert trained["training_examples"] == str(model.training_example_count) != "0"
    assert (promotion["version"], promotion["status"]) == (promoted.version, "CHAMPION")
    assert "version" not in events[4].details
    assert_nothing_personal(events, "ana.person", source="scoring")
