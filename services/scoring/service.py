"""Use cases of the scoring service: score with consent and shadow scoring, and the model registry.

The servicer (:mod:`.api`) converts messages and calls one method here per RPC. The collaborators are
service-layer modules of their own: :mod:`.consent` (gdpr consent cache), :mod:`.live` (the models this
replica serves, hot-reloaded), :mod:`.shadow` (challenger scores off the request path) and
:mod:`.training_job` (TrainModel, also run by the CLI).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt
from sqlalchemy.orm import Session, sessionmaker

from services.runtime.db import run_db, transaction
from services.scoring import repository
from services.scoring.consent import ConsentChecker
from services.scoring.domain.errors import NoChampionModelError
from services.scoring.domain.features import FEATURE_NAMES, FeatureInput, build_features
from services.scoring.domain.model import risk_level
from services.scoring.drift import DriftMonitor
from services.scoring.live import LiveModels, LoadedModel
from services.scoring.metrics import ScoringMetrics
from services.scoring.models import ModelRow, ModelStatus, ShadowScoreRow
from services.scoring.shadow import ShadowBatch, ShadowRecorder
from services.scoring.training_job import TrainingJobs

log = logging.getLogger("awareness.scoring")

SKIP_CONSENT_WITHDRAWN: Final = "consent withdrawn"
# Batches up to this size are scored on the event loop: onnxruntime answers them in tens of microseconds,
# less than a hop to a worker thread costs. Larger ones go to a thread so other calls keep flowing.
INLINE_BATCH_LIMIT: Final = 64


@dataclass(frozen=True, slots=True, kw_only=True)
class EventToScore:
    event_id: str
    subject_pseudonym: str
    features: FeatureInput


@dataclass(frozen=True, slots=True, kw_only=True)
class EventScore:
    """The answer for one event: skipped (with the reason), or scored by ``model_version``."""

    event_id: str
    skip_reason: str = ""
    score: float = 0.0
    level: str = ""
    model_version: str = ""
    features: dict[str, float] | None = None


class ScoringOperations:
    def __init__(
        self,
        *,
        sessions: sessionmaker[Session],
        models: LiveModels,
        consent: ConsentChecker,
        shadow: ShadowRecorder,
        training: TrainingJobs,
        metrics: ScoringMetrics,
        drift: DriftMonitor,
    ) -> None:
        self._sessions = sessions
        self._models = models
        self._consent = consent
        self._shadow = shadow
        self._training = training
        self._metrics = metrics
        self._drift = drift

    # --- serving -------------------------------------------------------------------------------------

    async def score(self, events: Sequence[EventToScore]) -> list[EventScore]:
        # Consent first: a subject who objected to profiling is skipped whether or not a model is loaded.
        granted = await self._consent.granted([event.subject_pseudonym for event in events])
        allowed = [i for i, event in enumerate(events) if granted.get(event.subject_pseudonym, False)]
        results = [
            EventScore(event_id=event.event_id, skip_reason=SKIP_CONSENT_WITHDRAWN) for event in events
        ]
        skipped = len(events) - len(allowed)
        if skipped:
            self._metrics.skipped.labels("consent_withdrawn").inc(skipped)
        if not allowed:
            return results

        snapshot = self._models.current  # one read: the whole batch sees one champion/challenger pair
        champion = snapshot.champion
        if champion is None:
            raise NoChampionModelError("no champion model is loaded yet; try again later")
        matrix, scores = await self._score(champion, [events[i].features for i in allowed])
        for row, index in enumerate(allowed):
            score = float(scores[row])
            results[index] = EventScore(
                event_id=events[index].event_id,
                score=score,
                level=risk_level(score),
                model_version=champion.version,
                features={name: float(value) for name, value in zip(FEATURE_NAMES, matrix[row], strict=True)},
            )
        self._metrics.scored.inc(len(allowed))
        challenger = snapshot.challenger
        if challenger is not None:
            self._shadow.submit(
                ShadowBatch(
                    event_ids=tuple(events[i].event_id for i in allowed),
                    features=matrix,
                    champion_version=champion.version,
                    champion_scores=scores,
                    challenger=challenger,
                    scored_at_us=repository.now_us(),
                )
            )
        return results

    async def _score(
        self, model: LoadedModel, inputs: list[FeatureInput]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        def compute() -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
            started = time.perf_counter()
            matrix = build_features(inputs)
            scores = model.scorer.score(matrix)
            self._metrics.inference_seconds.labels("champion").observe(time.perf_counter() - started)
            self._drift.observe(model.version, matrix, scores)
            return matrix, scores

        if len(inputs) <= INLINE_BATCH_LIMIT:
            return compute()
        return await asyncio.to_thread(compute)

    # --- registry ------------------------------------------------------------------------------------

    async def get_model(self, *, version: str) -> ModelRow:
        """The model with its card loaded (the row is detached: read it, do not lazy-load)."""

        def load() -> ModelRow:
            with self._sessions() as session:
                return repository.get_model(session, version=version, with_card=True)

        return await run_db(load)

    async def list_models(
        self, *, limit: int, status: ModelStatus | None, before: tuple[int, str] | None
    ) -> list[ModelRow]:
        def load() -> list[ModelRow]:
            with self._sessions() as session:
                return repository.list_models(session, limit=limit, status=status, before=before)

        return await run_db(load)

    async def promote(self, *, version: str) -> ModelRow:
        def promote() -> tuple[ModelRow, bool]:
            with transaction(self._sessions) as session:
                return repository.promote_model(session, version=version)

        row, changed = await run_db(promote)
        if changed:
            log.info("model promoted to champion", extra={"model_version": version})
            # This replica switches at once (drift baseline included); the others within their next poll.
            champion = (await run_db(self._models.refresh)).champion
            await run_db(self._drift.follow, self._sessions, champion.version if champion else None)
        return row

    async def train(self, *, request_id: str, seed: int, folds: int, algorithms: Sequence[str]) -> ModelRow:
        return await self._training.train(
            request_id=request_id, seed=seed, folds=folds, algorithms=algorithms
        )

    async def list_shadow_scores(
        self, *, version: str, limit: int, before: tuple[int, int] | None
    ) -> list[ShadowScoreRow]:
        def load() -> list[ShadowScoreRow]:
            with self._sessions() as session:
                repository.get_model(session, version=version)  # NOT_FOUND for an unknown parent
                return repository.list_shadow_scores(
                    session, challenger_version=version, limit=limit, before=before
                )

        return await run_db(load)
