"""The ScoringService servicer: batch scoring with consent and shadow scoring, and the registry RPCs."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, Final

import grpc
import numpy as np
import numpy.typing as npt
from awareness.scoring.v1 import scoring_pb2, scoring_pb2_grpc
from sqlalchemy.orm import Session, sessionmaker

from services.runtime.db import run_db, transaction
from services.runtime.errors import FieldViolation, InvalidArgumentError
from services.runtime.paging import PageTokens, page_size
from services.scoring import repository
from services.scoring.consent import ConsentChecker
from services.scoring.convert import (
    STATUS_FROM_PROTO,
    feature_input,
    model_proto,
    risk_level_proto,
    timestamp_from_us,
    version_from_name,
)
from services.scoring.domain.errors import NoChampionModelError
from services.scoring.domain.features import FEATURE_NAMES, FeatureInput, build_features
from services.scoring.domain.model import risk_level
from services.scoring.live import LiveModels, LoadedModel
from services.scoring.metrics import ScoringMetrics
from services.scoring.shadow import ShadowBatch, ShadowRecorder
from services.scoring.training_job import DEFAULT_FOLDS, DEFAULT_SEED, TrainingJobs

log = logging.getLogger("awareness.scoring")

MAX_INPUTS: Final = 1000
SKIP_CONSENT_WITHDRAWN: Final = "consent withdrawn"
# Batches up to this size are scored on the event loop: onnxruntime answers them in tens of microseconds,
# less than a hop to a worker thread costs. Larger ones go to a thread so other calls keep flowing.
INLINE_BATCH_LIMIT: Final = 64


class ScoringServicer(scoring_pb2_grpc.ScoringServiceServicer):
    def __init__(
        self,
        *,
        sessions: sessionmaker[Session],
        models: LiveModels,
        consent: ConsentChecker,
        shadow: ShadowRecorder,
        training: TrainingJobs,
        metrics: ScoringMetrics,
        page_tokens: PageTokens,
    ) -> None:
        self._sessions = sessions
        self._tokens = page_tokens
        self._models = models
        self._consent = consent
        self._shadow = shadow
        self._training = training
        self._metrics = metrics

    # --- serving -------------------------------------------------------------------------------------

    async def ScoreEvents(  # noqa: N802 - gRPC method name
        self, request: scoring_pb2.ScoreEventsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> scoring_pb2.ScoreEventsResponse:
        inputs = list(request.inputs)
        if not inputs or len(inputs) > MAX_INPUTS:
            message = f"must hold 1 to {MAX_INPUTS} inputs, got {len(inputs)}"
            raise InvalidArgumentError(
                f"inputs {message}",
                reason="INVALID_BATCH_SIZE",
                violations=[FieldViolation("inputs", message)],
            )
        features_in = [feature_input(item, field=f"inputs[{index}]") for index, item in enumerate(inputs)]
        # Consent first: a subject who objected to profiling is skipped whether or not a model is loaded.
        granted = await self._consent.granted([item.subject_pseudonym for item in inputs])
        allowed = [i for i, item in enumerate(inputs) if granted.get(item.subject_pseudonym, False)]
        results = [
            scoring_pb2.ScoringResult(
                event_id=item.event_id, skipped=True, skip_reason=SKIP_CONSENT_WITHDRAWN
            )
            for item in inputs
        ]
        skipped = len(inputs) - len(allowed)
        if skipped:
            self._metrics.skipped.labels("consent_withdrawn").inc(skipped)
        if not allowed:
            return scoring_pb2.ScoreEventsResponse(results=results)

        snapshot = self._models.current  # one read: the whole batch sees one champion/challenger pair
        champion = snapshot.champion
        if champion is None:
            raise NoChampionModelError("no champion model is loaded yet; try again later")
        chosen = [features_in[i] for i in allowed]
        matrix, scores = await self._score(champion, chosen)
        for row, index in enumerate(allowed):
            score = float(scores[row])
            results[index] = scoring_pb2.ScoringResult(
                event_id=inputs[index].event_id,
                score=score,
                level=risk_level_proto(risk_level(score)),
                model_version=champion.version,
                features={name: float(value) for name, value in zip(FEATURE_NAMES, matrix[row], strict=True)},
            )
        self._metrics.scored.inc(len(allowed))
        challenger = snapshot.challenger
        if challenger is not None:
            self._shadow.submit(
                ShadowBatch(
                    event_ids=tuple(inputs[i].event_id for i in allowed),
                    features=matrix,
                    champion_version=champion.version,
                    champion_scores=scores,
                    challenger=challenger,
                    scored_at_us=repository.now_us(),
                )
            )
        return scoring_pb2.ScoreEventsResponse(results=results)

    async def _score(
        self, model: LoadedModel, inputs: list[FeatureInput]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        def compute() -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
            started = time.perf_counter()
            matrix = build_features(inputs)
            scores = model.scorer.score(matrix)
            self._metrics.inference_seconds.labels("champion").observe(time.perf_counter() - started)
            return matrix, scores

        if len(inputs) <= INLINE_BATCH_LIMIT:
            return compute()
        return await asyncio.to_thread(compute)

    # --- registry ------------------------------------------------------------------------------------

    async def GetModel(  # noqa: N802 - gRPC method name
        self, request: scoring_pb2.GetModelRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> scoring_pb2.Model:
        version = version_from_name(request.name)

        def load() -> scoring_pb2.Model:
            with self._sessions() as session:
                row = repository.get_model(session, version=version, with_card=True)
                model = model_proto(row)
                model.model_card = json.dumps(row.model_card, sort_keys=True)
                return model

        return await run_db(load)

    async def ListModels(  # noqa: N802 - gRPC method name
        self, request: scoring_pb2.ListModelsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> scoring_pb2.ListModelsResponse:
        size = page_size(request.page_size, default=50)
        status = STATUS_FROM_PROTO.get(int(request.status)) if request.status else None
        filters = {"status": status.value if status else None}
        before = self._tokens.decode(
            request.page_token, method="scoring.ListModels", filters=filters, shape=(int, str)
        )

        def load() -> tuple[list[scoring_pb2.Model], tuple[int, str] | None]:
            with self._sessions() as session:
                rows = repository.list_models(session, limit=size + 1, status=status, before=before)
                models = [model_proto(row) for row in rows[:size]]
                last = (rows[size - 1].created_at_us, rows[size - 1].version) if len(rows) > size else None
                return models, last

        models, last = await run_db(load)
        response = scoring_pb2.ListModelsResponse(models=models)
        if last is not None:
            response.next_page_token = self._tokens.encode(last, method="scoring.ListModels", filters=filters)
        return response

    async def PromoteModel(  # noqa: N802 - gRPC method name
        self, request: scoring_pb2.PromoteModelRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> scoring_pb2.Model:
        version = version_from_name(request.name)

        def promote() -> tuple[scoring_pb2.Model, bool]:
            with transaction(self._sessions) as session:
                row, changed = repository.promote_model(session, version=version)
                return model_proto(row), changed

        model, changed = await run_db(promote)
        if changed:
            log.info("model promoted to champion", extra={"model_version": version})
            # This replica switches at once; the others within their next poll.
            await run_db(self._models.refresh)
        return model

    async def TrainModel(  # noqa: N802 - gRPC method name
        self, request: scoring_pb2.TrainModelRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> scoring_pb2.Model:
        if request.cv_folds < 0 or request.cv_folds == 1:
            raise InvalidArgumentError(
                "cv_folds must be 0 (default) or at least 2",
                reason="INVALID_FOLDS",
                violations=[FieldViolation("cv_folds", "must be 0 or >= 2")],
            )
        row = await self._training.train(
            request_id=request.request_id,
            seed=request.seed if request.HasField("seed") else DEFAULT_SEED,
            folds=request.cv_folds or DEFAULT_FOLDS,
            algorithms=list(request.algorithms),
        )
        return model_proto(row)

    async def ListShadowScores(  # noqa: N802 - gRPC method name
        self, request: scoring_pb2.ListShadowScoresRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> scoring_pb2.ListShadowScoresResponse:
        version = version_from_name(request.parent, field="parent")
        size = page_size(request.page_size, default=100)
        filters = {"parent": version}
        before = self._tokens.decode(
            request.page_token, method="scoring.ListShadowScores", filters=filters, shape=(int, int)
        )

        def load() -> tuple[list[scoring_pb2.ShadowScore], tuple[int, int] | None]:
            with self._sessions() as session:
                repository.get_model(session, version=version)  # NOT_FOUND for an unknown parent
                rows = repository.list_shadow_scores(
                    session, challenger_version=version, limit=size + 1, before=before
                )
            page = [
                scoring_pb2.ShadowScore(
                    event_id=row.event_id,
                    score_time=timestamp_from_us(row.scored_at_us),
                    champion_model_version=row.champion_version,
                    champion_score=row.champion_score,
                    champion_level=risk_level_proto(risk_level(row.champion_score)),
                    challenger_model_version=row.challenger_version,
                    challenger_score=row.challenger_score,
                    challenger_level=risk_level_proto(risk_level(row.challenger_score)),
                )
                for row in rows[:size]
            ]
            last = (rows[size - 1].scored_at_us, rows[size - 1].id) if len(rows) > size else None
            return page, last

        page, last = await run_db(load)
        response = scoring_pb2.ListShadowScoresResponse(shadow_scores=page)
        if last is not None:
            response.next_page_token = self._tokens.encode(
                last, method="scoring.ListShadowScores", filters=filters
            )
        return response
