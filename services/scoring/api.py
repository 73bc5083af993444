"""The ScoringService servicer: transport only; each RPC calls one use case of :mod:`.service`."""

from __future__ import annotations

import json
from typing import Any, Final

import grpc
from awareness.scoring.v1 import scoring_pb2, scoring_pb2_grpc

from services.runtime import audit, auth
from services.runtime.errors import FieldViolation, InvalidArgumentError
from services.runtime.paging import PageTokens, page_size
from services.runtime.timestamps import timestamp_from_us
from services.scoring.convert import (
    MODEL_NAME_PATTERN,
    STATUS_FROM_PROTO,
    decision_proto,
    feature_input,
    health_proto,
    model_proto,
    risk_level_proto,
    version_from_name,
)
from services.scoring.domain.model import risk_level
from services.scoring.health import ModelHealth
from services.scoring.promotion import PromotionDecider
from services.scoring.service import EventScore, EventToScore, ScoringOperations
from services.scoring.training_job import DEFAULT_FOLDS, DEFAULT_SEED

MAX_INPUTS: Final = 1000
MODELS: Final = "models"


def _recorded(model: scoring_pb2.Model) -> scoring_pb2.Model:
    """A registry change's answer, and the model it left in the call's access record."""
    audit.note(
        resource=model.name,
        details={
            "version": model.version,
            "algorithm": model.algorithm,
            "sha256": model.sha256,
            "status": scoring_pb2.Model.Status.Name(model.status).removeprefix("STATUS_"),
            "training_examples": str(model.training_example_count),
        },
    )
    return model


def _result_proto(result: EventScore) -> scoring_pb2.ScoringResult:
    if result.skip_reason:
        return scoring_pb2.ScoringResult(
            event_id=result.event_id, skipped=True, skip_reason=result.skip_reason
        )
    return scoring_pb2.ScoringResult(
        event_id=result.event_id,
        score=result.score,
        level=risk_level_proto(result.level),
        model_version=result.model_version,
        features=result.features,
    )


class ScoringServicer(scoring_pb2_grpc.ScoringServiceServicer):
    def __init__(
        self,
        *,
        operations: ScoringOperations,
        page_tokens: PageTokens,
        health: ModelHealth,
        promotions: PromotionDecider,
    ) -> None:
        self._operations = operations
        self._tokens = page_tokens
        self._health = health
        self._promotions = promotions

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
        events = [
            EventToScore(
                event_id=item.event_id,
                subject_pseudonym=item.subject_pseudonym,
                features=feature_input(item, field=f"inputs[{index}]"),
            )
            for index, item in enumerate(inputs)
        ]
        results = await self._operations.score(events)
        return scoring_pb2.ScoreEventsResponse(results=[_result_proto(result) for result in results])

    # --- registry ------------------------------------------------------------------------------------

    async def GetModel(  # noqa: N802 - gRPC method name
        self, request: scoring_pb2.GetModelRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> scoring_pb2.Model:
        version = version_from_name(request.name)

        row = await self._operations.get_model(version=version)
        model = model_proto(row)
        model.model_card = json.dumps(row.model_card, sort_keys=True)
        return model

    async def ListModels(  # noqa: N802 - gRPC method name
        self, request: scoring_pb2.ListModelsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> scoring_pb2.ListModelsResponse:
        size = page_size(request.page_size, default=50)
        status = STATUS_FROM_PROTO.get(int(request.status)) if request.status else None
        filters = {"status": status.value if status else None}
        before = self._tokens.decode(
            request.page_token, method="scoring.ListModels", filters=filters, shape=(int, str)
        )

        rows, next_page_token = await self._tokens.fetch_page(
            lambda limit: self._operations.list_models(limit=limit, status=status, before=before),
            size=size,
            position=lambda row: (row.created_at_us, row.version),
            method="scoring.ListModels",
            filters=filters,
        )
        return scoring_pb2.ListModelsResponse(
            models=[model_proto(row) for row in rows], next_page_token=next_page_token
        )

    async def PromoteModel(  # noqa: N802 - gRPC method name
        self, request: scoring_pb2.PromoteModelRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> scoring_pb2.Model:
        # Only a valid name reaches the access record: an invalid one may be anything a caller typed.
        audit.note(resource=request.name if MODEL_NAME_PATTERN.fullmatch(request.name) else MODELS)
        version = version_from_name(request.name)

        return _recorded(model_proto(await self._operations.promote(version=version)))

    async def TrainModel(  # noqa: N802 - gRPC method name
        self, request: scoring_pb2.TrainModelRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> scoring_pb2.Model:
        audit.note(resource=MODELS)  # until the model is registered
        if request.cv_folds < 0 or request.cv_folds == 1:
            raise InvalidArgumentError(
                "cv_folds must be 0 (default) or at least 2",
                reason="INVALID_FOLDS",
                violations=[FieldViolation("cv_folds", "must be 0 or >= 2")],
            )
        row = await self._operations.train(
            request_id=request.request_id,
            seed=request.seed if request.HasField("seed") else DEFAULT_SEED,
            folds=request.cv_folds or DEFAULT_FOLDS,
            algorithms=list(request.algorithms),
        )
        return _recorded(model_proto(row))

    async def ListShadowScores(  # noqa: N802 - gRPC method name
        self, request: scoring_pb2.ListShadowScoresRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> scoring_pb2.ListShadowScoresResponse:
        version = version_from_name(request.parent, field="parent")
        size = page_size(request.page_size, default=100)
        filters = {"parent": version}
        before = self._tokens.decode(
            request.page_token, method="scoring.ListShadowScores", filters=filters, shape=(int, int)
        )

        rows, next_page_token = await self._tokens.fetch_page(
            lambda limit: self._operations.list_shadow_scores(version=version, limit=limit, before=before),
            size=size,
            position=lambda row: (row.scored_at_us, row.id),
            method="scoring.ListShadowScores",
            filters=filters,
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
            for row in rows
        ]
        return scoring_pb2.ListShadowScoresResponse(shadow_scores=page, next_page_token=next_page_token)

    async def GetModelHealth(  # noqa: N802 - gRPC method name
        self, request: scoring_pb2.GetModelHealthRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> scoring_pb2.ModelHealth:
        if not request.name.endswith("/health"):
            message = f"must look like models/{{model}}/health, got {request.name!r}"
            raise InvalidArgumentError(
                f"name {message}", reason="INVALID_MODEL_NAME", violations=[FieldViolation("name", message)]
            )
        version = version_from_name(request.name.removesuffix("/health"))
        return health_proto(await self._health.health(version))

    async def DecidePromotion(  # noqa: N802 - gRPC method name
        self, request: scoring_pb2.DecidePromotionRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> scoring_pb2.PromotionDecision:
        version = version_from_name(request.name)
        principal = auth.current_principal()
        row = await self._promotions.decide(version, decider=principal.subject if principal else "")
        decision = decision_proto(row)
        decision_word = "promoted" if row.promoted else "kept"
        # The decision, not only the call, goes into the access record in the log.
        audit.note(
            resource=request.name, details={"decision": decision_word, "champion": row.champion_version}
        )
        return decision

    async def ListPromotionDecisions(  # noqa: N802 - gRPC method name
        self, request: scoring_pb2.ListPromotionDecisionsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> scoring_pb2.ListPromotionDecisionsResponse:
        version = version_from_name(request.parent, field="parent")
        filters = {"parent": version}
        method = "scoring.ListPromotionDecisions"
        before = self._tokens.decode(request.page_token, method=method, filters=filters, shape=(int, int))
        rows, next_page_token = await self._tokens.fetch_page(
            lambda limit: self._promotions.history(version, limit=limit, before=before),
            size=page_size(request.page_size, default=50),
            position=lambda row: (row.decided_at_us, row.id),
            method=method,
            filters=filters,
        )
        return scoring_pb2.ListPromotionDecisionsResponse(
            promotion_decisions=[decision_proto(row) for row in rows], next_page_token=next_page_token
        )
