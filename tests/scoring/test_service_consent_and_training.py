"""Consent (with the real gdpr service), gdpr outages, TrainModel, the first-start bootstrap and the CLI."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from awareness.gdpr.v1 import gdpr_pb2, gdpr_pb2_grpc
from awareness.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from awareness.scoring.v1 import scoring_pb2
from google.protobuf import timestamp_pb2

from services import cli
from services.gdpr.app import build_service as build_gdpr_service
from services.gdpr.bootstrap import bootstrap_dev as gdpr_bootstrap_dev
from services.runtime import auth
from services.runtime.clients import ChannelFactory
from services.scoring import app as scoring_app
from services.scoring.domain.generator import GeneratorConfig, SyntheticDataset, generate
from services.scoring.domain.promotion import held_out
from services.scoring.domain.training import TrainingResult
from services.scoring.models import ModelStatus
from tests.conftest import IDENTITY_ENV
from tests.grpc_errors import reason_of
from tests.scoring.harness import (
    fake_gdpr,
    register,
    running_replica,
    scoring_env,
    scoring_input,
    scoring_inputs,
    wait_for,
)
from tests.scoring.test_service import champion_loaded
from tests.support.resources import free_port
from tests.support.servers import client_factory, service_env, serving, start_service

pytestmark = pytest.mark.slow

# TrainModel in tests: a small synthetic organisation, two folds, one algorithm (a few seconds).
SMALL_TRAINING_ENV = {"AWARENESS_SCORING_SYNTHETIC_PEOPLE": "60", "AWARENESS_SCORING_SYNTHETIC_DAYS": "21"}


def channels(address: str, principal: auth.Principal, name: str) -> ChannelFactory:
    return client_factory({name: address}, principal, timeout_seconds=30.0)


@asynccontextmanager
async def real_gdpr(data_dir: Path) -> AsyncIterator[str]:
    """The real gdpr service (its own create_app wiring, dev keys, SQLite) on port 0."""
    gdpr_bootstrap_dev(data_dir)
    env = service_env(data_dir, AWARENESS_INGEST_TARGET=f"127.0.0.1:{free_port()}")
    gdpr = await start_service(
        "gdpr", env, lambda context: build_gdpr_service(context).app, background_jobs=False
    )
    try:
        yield gdpr.address
    finally:
        await gdpr.stop()


async def test_subjects_who_withdrew_consent_are_not_scored(
    tmp_path: Path, trained: TrainingResult, dataset: SyntheticDataset
) -> None:
    async with real_gdpr(tmp_path / "gdpr") as gdpr_address:
        as_ingest = channels(gdpr_address, auth.Principal.for_service("ingest"), "gdpr")
        as_dpo = channels(gdpr_address, auth.Principal("test:dpo", frozenset({"dpo"})), "gdpr")
        try:
            occurred = timestamp_pb2.Timestamp()
            occurred.FromDatetime(datetime.now(UTC))
            keys = await gdpr_pb2_grpc.GdprServiceStub(as_ingest.channel("gdpr")).GetSubjectKeys(
                gdpr_pb2.GetSubjectKeysRequest(
                    lookups=[
                        gdpr_pb2.SubjectKeyLookup(
                            subject=subject, occurred_at=occurred, event_type="login.failed"
                        )
                        for subject in ("alice@example.com", "bob@example.com")
                    ]
                )
            )
            alice, bob = (key.pseudonym for key in keys.keys)
            await gdpr_pb2_grpc.GdprServiceStub(as_dpo.channel("gdpr")).WithdrawConsent(
                gdpr_pb2.WithdrawConsentRequest(
                    subject="alice@example.com", purpose="profiling", reason="objection, ticket DPO-1"
                )
            )
        finally:
            await as_ingest.close()
            await as_dpo.close()

        env = scoring_env(tmp_path / "scoring", database_url="", gdpr_address=gdpr_address)
        async with running_replica(env) as replica:
            version = register(replica, trained, status=ModelStatus.CHAMPION)
            await wait_for(lambda: champion_loaded(replica))
            inputs = [
                scoring_input(item, event_id=f"evt-{i}", pseudonym=alice if i % 2 == 0 else bob)
                for i, item in enumerate(dataset.inputs[:6])
            ]
            response = await replica.stub.ScoreEvents(scoring_pb2.ScoreEventsRequest(inputs=inputs))
    for index, result in enumerate(response.results):
        if index % 2 == 0:
            assert result.skipped and result.skip_reason == "consent withdrawn"
            assert result.model_version == "" and result.level == scoring_pb2.RISK_LEVEL_UNSPECIFIED
            assert not result.features
        else:
            assert not result.skipped and result.model_version == version and result.features
    assert replica.metric("skipped_total", {"reason": "consent_withdrawn"}) == 3


async def test_consent_answers_are_cached_and_an_unreachable_gdpr_scores_nothing(
    tmp_path: Path, trained: TrainingResult, dataset: SyntheticDataset
) -> None:
    async with fake_gdpr() as (gdpr, gdpr_address):
        gdpr.withdrawn.add("psn-b")
        env = scoring_env(
            tmp_path,
            database_url="",
            gdpr_address=gdpr_address,
            AWARENESS_SCORING_CONSENT_CACHE_SECONDS="600",
        )
        async with running_replica(env) as replica:
            register(replica, trained, status=ModelStatus.CHAMPION)
            await wait_for(lambda: champion_loaded(replica))
            request = scoring_pb2.ScoreEventsRequest(inputs=scoring_inputs(dataset.inputs[:9]))
            first = await replica.stub.ScoreEvents(request)
            second = await replica.stub.ScoreEvents(request)
            assert gdpr.calls == 1  # the second batch was answered from the cache
            assert [r.skipped for r in first.results] == [i % 3 == 1 for i in range(9)]
            assert first == second

    unreachable = f"127.0.0.1:{free_port()}"
    env = scoring_env(tmp_path, database_url="", gdpr_address=unreachable)
    async with running_replica(env) as replica:
        await wait_for(lambda: champion_loaded(replica))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await replica.stub.ScoreEvents(
                scoring_pb2.ScoreEventsRequest(inputs=scoring_inputs(dataset.inputs[:3]))
            )
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert reason_of(caught.value) == "CONSENT_UNAVAILABLE"
        assert replica.metric("scored_total") == 0


class FakeIngest(ingest_pb2_grpc.IngestServiceServicer):
    """ListTrainingExamples only, in two pages."""

    def __init__(self, examples: list[ingest_pb2.TrainingExample]) -> None:
        self.examples = examples

    async def ListTrainingExamples(
        self, request: ingest_pb2.ListTrainingExamplesRequest, context: Any
    ) -> ingest_pb2.ListTrainingExamplesResponse:
        half = len(self.examples) // 2
        if request.page_token:
            return ingest_pb2.ListTrainingExamplesResponse(examples=self.examples[half:])
        return ingest_pb2.ListTrainingExamplesResponse(
            examples=self.examples[:half], next_page_token="page-2"
        )


@asynccontextmanager
async def fake_ingest(examples: list[ingest_pb2.TrainingExample]) -> AsyncIterator[str]:
    servicer = FakeIngest(examples)  # type: ignore[abstract]  # only ListTrainingExamples is served
    async with serving(
        "ingest",
        lambda server: ingest_pb2_grpc.add_IngestServiceServicer_to_server(servicer, server),
        ["awareness.ingest.v1.IngestService"],
    ) as ingest:
        yield ingest.address


def analyst_examples() -> list[ingest_pb2.TrainingExample]:
    labelled = generate(GeneratorConfig(people=12, days=14, seed=23))
    return [
        ingest_pb2.TrainingExample(
            input=scoring_input(
                item, event_id=f"lab-{i}", pseudonym="psn-consenting" if i % 2 else "psn-other"
            ),
            label=ingest_pb2.LABEL_TRUE_POSITIVE if label else ingest_pb2.LABEL_FALSE_POSITIVE,
        )
        for i, (item, label) in enumerate(zip(labelled.inputs[:40], labelled.labels[:40], strict=True))
    ]


async def test_train_model_uses_consenting_analyst_labels_registers_a_challenger_and_is_idempotent(
    tmp_path: Path,
) -> None:
    examples = analyst_examples()
    async with fake_gdpr() as (gdpr, gdpr_address), fake_ingest(examples) as ingest_address:
        gdpr.training_granted.add("psn-consenting")
        env = scoring_env(
            tmp_path,
            database_url="",
            gdpr_address=gdpr_address,
            ingest_address=ingest_address,
            **SMALL_TRAINING_ENV,
        )
        async with running_replica(env) as replica:
            request = scoring_pb2.TrainModelRequest(
                request_id="6f1c1f3e-0000-4000-8000-000000000001",
                algorithms=["gradient_boosting"],
                cv_folds=2,
                seed=3,
            )
            training = asyncio.ensure_future(replica.stub.TrainModel(request))
            listing = asyncio.ensure_future(replica.stub.ListModels(scoring_pb2.ListModelsRequest()))
            done, _ = await asyncio.wait({training, listing}, return_when=asyncio.FIRST_COMPLETED)
            assert listing in done  # the server answers while it trains (training runs in a worker thread)
            model = await training
            assert model.status == scoring_pb2.Model.STATUS_CHALLENGER
            assert model.algorithm == "gradient_boosting" and model.version.split("-")[1] == "gb"
            assert model.metrics["roc_auc"] > 0.5 and "baseline_f1" in model.metrics
            again = await replica.stub.TrainModel(request)  # a retry: same model, no second training
            assert again.name == model.name
            listed = await replica.stub.ListModels(
                scoring_pb2.ListModelsRequest(status=scoring_pb2.Model.STATUS_CHALLENGER)
            )
            assert [m.name for m in listed.models] == [model.name]
            detail = await replica.stub.GetModel(scoring_pb2.GetModelRequest(name=model.name))
            card = json.loads(detail.model_card)
    analyst = card["analyst_labels"]
    trainable = [e for e in examples if not held_out(e.input.event_id)]
    consenting = [e for e in trainable if e.input.subject_pseudonym == "psn-consenting"]
    assert 0 < len(trainable) < len(examples)  # some held out for promotion decisions
    assert analyst["fetched"] == len(examples)
    assert analyst["held_out_for_promotion_decisions"] == len(examples) - len(trainable)
    assert analyst["used"] == len(consenting)  # only the subject who granted training_data
    assert analyst["withheld_without_consent"] == len(trainable) - len(consenting)
    assert card["rows"]["analyst_labelled"] == len(consenting)
    assert card["seed"] == 3 and card["cross_validation"]["folds"] == 2
    assert card["onnx"]["parity_max_abs_difference"] <= 1e-5
    assert detail.sha256 == card["onnx"]["sha256"]


async def test_labels_of_a_person_who_objected_to_profiling_are_not_trained_on(tmp_path: Path) -> None:
    examples = analyst_examples()
    async with fake_gdpr() as (gdpr, gdpr_address), fake_ingest(examples) as ingest_address:
        gdpr.training_granted.add("psn-consenting")
        gdpr.withdrawn.add("psn-consenting")  # granted training_data, then objected to profiling
        env = scoring_env(
            tmp_path,
            database_url="",
            gdpr_address=gdpr_address,
            ingest_address=ingest_address,
            **SMALL_TRAINING_ENV,
        )
        async with running_replica(env) as replica:
            model = await replica.stub.TrainModel(
                scoring_pb2.TrainModelRequest(algorithms=["gradient_boosting"], cv_folds=2, seed=4)
            )
            detail = await replica.stub.GetModel(scoring_pb2.GetModelRequest(name=model.name))
    analyst = json.loads(detail.model_card)["analyst_labels"]
    trainable = [e for e in examples if not held_out(e.input.event_id)]
    assert analyst["used"] == 0 and analyst["withheld_without_consent"] == len(trainable)


async def test_train_model_without_ingest_trains_on_the_generator_alone(tmp_path: Path) -> None:
    async with fake_gdpr() as (_gdpr, gdpr_address):
        env = scoring_env(tmp_path, database_url="", gdpr_address=gdpr_address, **SMALL_TRAINING_ENV)
        async with running_replica(env) as replica:
            model = await replica.stub.TrainModel(
                scoring_pb2.TrainModelRequest(algorithms=["gradient_boosting"], cv_folds=2, seed=3)
            )
            card = json.loads(
                (await replica.stub.GetModel(scoring_pb2.GetModelRequest(name=model.name))).model_card
            )
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await replica.stub.TrainModel(scoring_pb2.TrainModelRequest(algorithms=["svm"]))
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert card["analyst_labels"]["used"] == 0
    assert "ingest unavailable" in card["analyst_labels"]["note"]
    assert "synthetic generator alone" in card["analyst_labels"]["note"]


async def test_first_start_with_an_empty_registry_trains_and_promotes_a_default_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_trained: TrainingResult, dataset: SyntheticDataset
) -> None:
    calls: list[str] = []

    def fake_default_training(**_kwargs: Any) -> TrainingResult:
        calls.append("trained")
        return small_trained  # the real train_default_model takes a minute; its wiring is what is tested

    monkeypatch.setattr(scoring_app, "train_default_model", fake_default_training)
    async with fake_gdpr() as (_gdpr, gdpr_address):
        env = scoring_env(
            tmp_path, database_url="", gdpr_address=gdpr_address, AWARENESS_SCORING_BOOTSTRAP_MODEL="1"
        )
        async with running_replica(env) as replica:
            await asyncio.wait_for(replica.service.bootstrap.wait(), timeout=60)
            response = await replica.stub.ScoreEvents(
                scoring_pb2.ScoreEventsRequest(inputs=scoring_inputs(dataset.inputs[:3]))
            )
            listed = await replica.stub.ListModels(scoring_pb2.ListModelsRequest())
        assert [m.status for m in listed.models] == [scoring_pb2.Model.STATUS_CHAMPION]
        assert {r.model_version for r in response.results} == {listed.models[0].version}
        async with running_replica(env) as restarted:  # not empty any more: no second training
            await asyncio.wait_for(restarted.service.bootstrap.wait(), timeout=60)
    assert calls == ["trained"]


async def test_cli_lists_shows_promotes_and_trains_through_the_service(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    trained: TrainingResult,
    small_trained: TrainingResult,
) -> None:
    async with fake_gdpr() as (_gdpr, gdpr_address):
        env = scoring_env(tmp_path, database_url="", gdpr_address=gdpr_address, **SMALL_TRAINING_ENV)
        async with running_replica(env) as replica:
            champion = register(replica, trained, status=ModelStatus.CHAMPION)
            challenger = register(replica, small_trained)
            monkeypatch.setenv("AWARENESS_SCORING_TARGET", replica.address)
            for name, value in IDENTITY_ENV.items():
                monkeypatch.setenv(name, value)
            monkeypatch.setenv("AWARENESS_DATA_DIR", str(tmp_path))

            async def run(*argv: str) -> tuple[int, str]:
                code = await asyncio.to_thread(cli.main, list(argv))
                return code, capsys.readouterr().out

            code, out = await run("model", "list")
            assert code == 0
            lines = out.splitlines()
            assert lines[1].startswith(f"models/{challenger}") and "CHALLENGER" in lines[1]
            assert lines[2].startswith(f"models/{champion}") and "CHAMPION" in lines[2]
            code, out = await run("model", "show", champion)
            assert code == 0 and json.loads(out)["model_card"]["onnx"]["sha256"] == trained.sha256
            code, out = await run("model", "promote", challenger)
            assert code == 0 and f"models/{challenger} is the champion" in out
            code, out = await run("model", "list", "--status", "retired", "--json")
            assert [m["version"] for m in json.loads(out)] == [champion]
            code, out = await run(
                "model",
                "train",
                "--register",
                "--folds",
                "2",
                "--algorithm",
                "gradient_boosting",
                "--seed",
                "4",
            )
            assert code == 0 and "registered models/" in out and "(CHALLENGER" in out
            code, out = await run("model", "promote", "models/does-not-exist")
            assert code == 1
