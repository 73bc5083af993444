"""The portal's models pages (see docs/portal.md): the registry, a model's card beside the
champion's shadow scores, its health (live quality, calibration, input drift, promotion decisions),
training, and promotion with a confirmation step.

Every read and action is a call to the scoring service as the signed-in person, so the service checks
``model:read``, ``model:train`` and ``model:promote`` and writes the access records of training and
promotion. The pages only hide the forms a role lacks.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Final
from urllib.parse import urlencode

import grpc
from awareness.scoring.v1 import scoring_pb2
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from services.portal.api import part, portal_state, render, signed_in
from services.portal.domain import model_health, models
from services.portal.service import Person, Services
from services.runtime import auth

PAGE_SIZE: Final = 50
TRAIN_METHOD: Final = "/awareness.scoring.v1.ScoringService/TrainModel"
# TrainModel is synchronous and takes minutes: the gateway's own deadline for it (its config's
# AWARENESS_GATEWAY_METHOD_TIMEOUTS), 600 s unless configured otherwise.
DEFAULT_TRAIN_SECONDS: Final = 600.0
# The newest promotion decisions the health page lists (the CLI's `model decisions` has them all).
DECISIONS_SHOWN: Final = 20


async def _champion(services: Services, person: Person) -> scoring_pb2.Model | None:
    listed = await services.as_person(
        person,
        lambda: services.scoring().ListModels(
            scoring_pb2.ListModelsRequest(page_size=1, status=scoring_pb2.Model.STATUS_CHAMPION)
        ),
    )
    return listed.models[0] if listed.models else None


def _train_seconds(request: Request) -> float:
    return portal_state(request).admission.config.method_timeouts.get(TRAIN_METHOD, DEFAULT_TRAIN_SECONDS)


@signed_in("/portal/models")
async def registry(request: Request, person: Person) -> Response:
    services = portal_state(request).services
    page_token = request.query_params.get("page_token", "")
    listed, champion = await asyncio.gather(
        services.as_person(
            person,
            lambda: services.scoring().ListModels(
                scoring_pb2.ListModelsRequest(page_size=PAGE_SIZE, page_token=page_token)
            ),
        ),
        _champion(services, person),
    )
    context = {
        "models": listed.models,
        "champion": champion,
        "next_query": urlencode({"page_token": listed.next_page_token}) if listed.next_page_token else "",
        "done": request.query_params.get("done", ""),
        "promoted": request.query_params.get("model", ""),
        "domain": models,
        # A fresh id per rendering: a resubmitted form (a double click) trains once.
        "train_request_id": str(uuid.uuid4()),
        "train_minutes": round(_train_seconds(request) / 60),
    }
    return render(request, "models.html", context, person=person)


@signed_in("/portal/models:train")
async def train(request: Request, person: Person) -> Response:
    training = models.train_request(request.state.form)
    services = portal_state(request).services
    timeout = _train_seconds(request)
    model = await services.as_person(person, lambda: services.scoring().TrainModel(training, timeout=timeout))
    return RedirectResponse(f"/portal/models/{model.version}?done=trained", status_code=303)


@signed_in("/portal/models/{version}")
async def card(request: Request, person: Person) -> Response:
    version = request.path_params["version"]
    services = portal_state(request).services
    model = await services.as_person(
        person, lambda: services.scoring().GetModel(scoring_pb2.GetModelRequest(name=f"models/{version}"))
    )
    is_champion = model.status == scoring_pb2.Model.STATUS_CHAMPION

    async def current_champion() -> scoring_pb2.Model | None:
        return model if is_champion else await _champion(services, person)

    # A champion's shadow scores are those it made as a challenger, before its promotion.
    shadow, champion = await asyncio.gather(
        services.as_person(
            person,
            lambda: services.scoring().ListShadowScores(
                scoring_pb2.ListShadowScoresRequest(parent=model.name, page_size=models.SHADOW_SAMPLE)
            ),
        ),
        current_champion(),
    )
    comparison = models.compare_shadow(shadow.shadow_scores)
    parsed = models.read_card(model.model_card)
    context = {
        "model": model,
        "champion": champion,
        "card": parsed,
        "metrics": models.metric_rows(model.metrics),
        "cross_validation": models.cross_validation(model.metrics),
        "parity": models.parity(model.metrics, parsed),
        "importance_chart": models.importance_chart(parsed.importances) if parsed.importances else None,
        "comparison": comparison,
        "sampled": bool(shadow.next_page_token),
        "done": request.query_params.get("done", ""),
        "domain": models,
    }
    return render(request, "model.html", context, person=person)


@signed_in("/portal/models/{version}/health")
async def health(request: Request, person: Person) -> Response:
    version = request.path_params["version"]
    services = portal_state(request).services
    scoring = services.scoring()
    # Each part shows on its own: health needs ingest and gdpr too, the decisions only the registry.
    found, listed = await asyncio.gather(
        part(
            services,
            person,
            lambda: scoring.GetModelHealth(
                scoring_pb2.GetModelHealthRequest(name=f"models/{version}/health")
            ),
            whole_page=(grpc.StatusCode.NOT_FOUND,),
        ),
        part(
            services,
            person,
            lambda: scoring.ListPromotionDecisions(
                scoring_pb2.ListPromotionDecisionsRequest(
                    parent=f"models/{version}", page_size=DECISIONS_SHOWN
                )
            ),
        ),
    )
    context = {**model_health.page(version, found, listed), "domain": model_health}
    return render(request, "model_health.html", context, person=person)


@signed_in("/portal/models/{version}:promote")
async def confirm_promotion(request: Request, person: Person) -> Response:
    # Only a confirmation page: asking it without the permission is refused as the service would.
    auth.require_permission("model:promote", person.principal)
    version = request.path_params["version"]
    services = portal_state(request).services
    model, champion = await asyncio.gather(
        services.as_person(
            person,
            lambda: services.scoring().GetModel(scoring_pb2.GetModelRequest(name=f"models/{version}")),
        ),
        _champion(services, person),
    )
    context = {
        "model": model,
        "champion": champion,
        "request_id": str(uuid.uuid4()),
        "domain": models,
    }
    return render(request, "model_promote.html", context, person=person)


@signed_in("/portal/models/{version}:promote")
async def promote(request: Request, person: Person) -> Response:
    promotion = models.promote_request(request.path_params["version"], request.state.form)
    services = portal_state(request).services
    model = await services.as_person(person, lambda: services.scoring().PromoteModel(promotion))
    query = urlencode({"done": "promoted", "model": model.version})
    return RedirectResponse(f"/portal/models?{query}", status_code=303)


# The ":promote" routes come first: "/models/{version}" would match "x:promote" too.
routes: list[BaseRoute] = [
    Route("/models", registry, methods=["GET"]),
    Route("/models:train", train, methods=["POST"]),
    Route("/models/{version}:promote", confirm_promotion, methods=["GET"]),
    Route("/models/{version}:promote", promote, methods=["POST"]),
    Route("/models/{version}/health", health, methods=["GET"]),
    Route("/models/{version}", card, methods=["GET"]),
]
