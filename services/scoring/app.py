"""Wiring of the scoring service: registry, live models, consent, shadow scoring, training and health.

Background tasks: the registry poll (hot reload, every AWARENESS_SCORING_RELOAD_SECONDS; the drift
monitor follows the champion it loads), the shadow score writer, the drift gauges' refresh (every
AWARENESS_SCORING_DRIFT_PUBLISH_SECONDS), the live quality gauges' refresh (the champion's F1 on
analysts' labels, every AWARENESS_SCORING_QUALITY_PUBLISH_SECONDS), and on first start with an empty
registry the default model's training and promotion (AWARENESS_SCORING_BOOTSTRAP_MODEL=0 turns it
off). The service reports SERVING at once; ScoreEvents answers NO_CHAMPION_MODEL until a champion is
loaded.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from dataclasses import dataclass

from awareness.gdpr.v1 import gdpr_pb2_grpc
from awareness.ingest.v1 import ingest_pb2_grpc
from awareness.scoring.v1 import scoring_pb2, scoring_pb2_grpc
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from services.runtime import db
from services.runtime.config import env_bool, env_float, env_int
from services.runtime.db import run_db, transaction
from services.runtime.paging import PageTokens
from services.runtime.server import ServiceApp, ServiceContext
from services.scoring import repository
from services.scoring.api import ScoringServicer
from services.scoring.consent import PROFILING, TRAINING_DATA, ConsentChecker
from services.scoring.domain.training import DEFAULT_DAYS, DEFAULT_PEOPLE, TrainingResult, train_default_model
from services.scoring.drift import DriftMonitor
from services.scoring.health import LiveLabels, ModelHealth
from services.scoring.live import LiveModels
from services.scoring.metrics import ScoringMetrics
from services.scoring.models import ModelStatus
from services.scoring.promotion import PromotionDecider
from services.scoring.service import ScoringOperations
from services.scoring.shadow import ShadowRecorder
from services.scoring.training_job import TrainingJobs, register_result

SERVICE_NAME = scoring_pb2.DESCRIPTOR.services_by_name["ScoringService"].full_name
log = logging.getLogger("awareness.scoring")


@dataclass(frozen=True)
class ScoringService:
    """The assembled service: what the runtime runs, plus its parts for in-process tests and tools."""

    app: ServiceApp
    servicer: ScoringServicer
    models: LiveModels
    shadow: ShadowRecorder
    drift: DriftMonitor
    bootstrap: asyncio.Event  # set once the first-start bootstrap has finished (or was not needed)


def create_app(context: ServiceContext) -> ServiceApp:
    return build_service(context).app


def build_service(context: ServiceContext) -> ScoringService:
    settings, env = context.settings, context.settings.env
    engine, sessions = context.engine, context.sessions
    assert engine is not None and sessions is not None, "the scoring service needs its database"
    reload_seconds = env_float(env, "AWARENESS_SCORING_RELOAD_SECONDS", 2.0, minimum=0.05)
    bootstrap_enabled = env_bool(env, "AWARENESS_SCORING_BOOTSTRAP_MODEL", True)
    metrics = ScoringMetrics.create(context.metrics)
    models = LiveModels(sessions=sessions, metrics=metrics)
    publish_seconds = env_float(env, "AWARENESS_SCORING_DRIFT_PUBLISH_SECONDS", 15.0, minimum=0.05)
    drift = DriftMonitor(publish_seconds=publish_seconds)
    quality_publish_seconds = env_float(env, "AWARENESS_SCORING_QUALITY_PUBLISH_SECONDS", 300.0, minimum=0.05)
    shadow = ShadowRecorder(
        sessions=sessions,
        metrics=metrics,
        queue_limit=env_int(env, "AWARENESS_SCORING_SHADOW_QUEUE", 1000, minimum=1),
    )

    servicer, health = _use_cases(
        context, sessions, models=models, drift=drift, shadow=shadow, metrics=metrics
    )
    bootstrapped = asyncio.Event()

    refresh_models = functools.partial(_refresh_models, models, drift, sessions)

    async def load_models() -> None:
        try:
            await run_db(refresh_models)
        except Exception:  # a down database shows in health; the poll tries again
            log.exception("initial model load failed")

    async def poll_registry() -> None:
        while True:
            await asyncio.sleep(reload_seconds)
            try:
                await run_db(refresh_models)
            except Exception:
                log.exception("registry poll failed; serving the models loaded before")

    async def bootstrap_default_model() -> None:
        try:
            if bootstrap_enabled and await run_db(_registry_is_empty, sessions):
                await _train_and_promote_default(sessions)
                await run_db(refresh_models)
        except Exception:
            log.exception("default model bootstrap failed; train one with `awareness model train --register`")
        finally:
            bootstrapped.set()

    app = ServiceApp(
        name="scoring",
        service_names=[SERVICE_NAME],
        register=lambda server: scoring_pb2_grpc.add_ScoringServiceServicer_to_server(servicer, server),
        ready=lambda: db.ping(engine),
        on_start=load_models,
        background=[
            poll_registry,
            shadow.run,
            bootstrap_default_model,
            lambda: drift.run(metrics),
            lambda: health.run(metrics, every_seconds=quality_publish_seconds),
        ],
    )
    log.debug("scoring wired", extra={"reload_seconds": reload_seconds, "service": settings.service})
    return ScoringService(
        app=app, servicer=servicer, models=models, shadow=shadow, drift=drift, bootstrap=bootstrapped
    )


def _use_cases(
    context: ServiceContext,
    sessions: sessionmaker[Session],
    *,
    models: LiveModels,
    drift: DriftMonitor,
    shadow: ShadowRecorder,
    metrics: ScoringMetrics,
) -> tuple[ScoringServicer, ModelHealth]:
    """The servicer over scoring, training, model health and promotion, and the health use case."""
    env = context.settings.env
    consent_ttl = env_float(env, "AWARENESS_SCORING_CONSENT_CACHE_SECONDS", 30.0)

    def gdpr() -> gdpr_pb2_grpc.GdprServiceStub:
        return gdpr_pb2_grpc.GdprServiceStub(context.channels.channel("gdpr"))

    def ingest() -> ingest_pb2_grpc.IngestServiceStub:
        return ingest_pb2_grpc.IngestServiceStub(context.channels.channel("ingest"))

    profiling = ConsentChecker(gdpr=gdpr, purpose=PROFILING, ttl_seconds=consent_ttl)
    training = TrainingJobs(
        sessions=sessions,
        ingest=ingest,
        training_consent=ConsentChecker(gdpr=gdpr, purpose=TRAINING_DATA, ttl_seconds=0),
        profiling_consent=profiling,
        synthetic_people=env_int(env, "AWARENESS_SCORING_SYNTHETIC_PEOPLE", DEFAULT_PEOPLE, minimum=10),
        synthetic_days=env_int(env, "AWARENESS_SCORING_SYNTHETIC_DAYS", DEFAULT_DAYS, minimum=7),
    )
    labels = LiveLabels(ingest=ingest, profiling=profiling)
    health = ModelHealth(sessions=sessions, labels=labels, drift=drift)
    operations = ScoringOperations(
        sessions=sessions,
        models=models,
        consent=profiling,
        shadow=shadow,
        training=training,
        metrics=metrics,
        drift=drift,
    )
    return ScoringServicer(
        operations=operations,
        page_tokens=PageTokens.from_secret(context.settings.service_secret),
        health=health,
        promotions=PromotionDecider(sessions=sessions, labels=labels, drift=drift),
    ), health


def _refresh_models(models: LiveModels, drift: DriftMonitor, sessions: sessionmaker[Session]) -> None:
    """Load what the registry says to serve; the drift baseline follows the champion."""
    champion = models.refresh().champion
    drift.follow(sessions, champion.version if champion else None)


def _registry_is_empty(sessions: sessionmaker[Session]) -> bool:
    with sessions() as session:
        return repository.count_models(session) == 0


async def _train_and_promote_default(sessions: sessionmaker[Session]) -> None:
    log.info("empty model registry: training the default model in the background")
    result = await asyncio.to_thread(
        train_default_model, progress=lambda message: log.info("bootstrap training: " + message)
    )
    await run_db(_register_default, sessions, result)


def _register_default(sessions: sessionmaker[Session], result: TrainingResult) -> None:
    card = {"analyst_labels": {"fetched": 0, "used": 0, "note": "default model: synthetic generator only"}}
    try:
        with transaction(sessions) as session:
            if repository.count_models(session):
                log.info("another replica registered a model first; keeping it")
                return
            row, _ = register_result(session, result=result, status=ModelStatus.CHAMPION, extra_card=card)
            log.info("default model registered as champion", extra={"model_version": row.version})
    except IntegrityError:
        log.info("another replica registered the default model first")
