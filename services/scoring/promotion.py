"""DecidePromotion: promote a challenger on evidence, or keep the champion, and keep the decision.

Both models re-score the same held-out labelled live events of the last 30 days (the inputs ingest
sent, so the comparison is paired even for events scored before the challenger existed; training
never uses held-out labels, domain/promotion.py). The champion's drift
is what this replica's monitor saw over the last day. The rule is domain/promotion.py's; the
decision and its figures are stored with the promotion itself, in one transaction.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Final

import numpy as np
import numpy.typing as npt
from sqlalchemy.orm import Session, sessionmaker

from services.runtime.db import run_db, transaction
from services.scoring import repository
from services.scoring.domain.errors import ModelStatusError, NoChampionModelError
from services.scoring.domain.features import FeatureInput, build_features
from services.scoring.domain.model import OnnxScorer
from services.scoring.domain.promotion import Decision, Drift, decide, held_out, seed_of
from services.scoring.drift import DriftMonitor
from services.scoring.health import LabelledEvent, LiveLabels, decision_threshold
from services.scoring.models import ModelRow, ModelStatus, PromotionDecisionRow

EVIDENCE_DAYS: Final = 30
DRIFT_WINDOW: Final = "24h"


class PromotionDecider:
    def __init__(
        self,
        *,
        sessions: sessionmaker[Session],
        labels: LiveLabels,
        drift: DriftMonitor,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._sessions = sessions
        self._labels = labels
        self._drift = drift
        self._clock = clock

    async def decide(self, challenger_version: str, *, decider: str) -> PromotionDecisionRow:
        champion, challenger = await run_db(self._pair, challenger_version)
        events = await self._labels.since(self._clock() - timedelta(days=EVIDENCE_DAYS))
        usable = [e for e in events if e.features is not None and held_out(e.event_id)]
        champion_scores, challenger_scores = await asyncio.to_thread(
            self._score_both, champion.version, challenger.version, usable
        )
        decision = decide(
            champion_scores=champion_scores.tolist(),
            challenger_scores=challenger_scores.tolist(),
            labels=[e.label for e in usable],
            threshold=decision_threshold(champion.model_card),
            drift=self._champion_drift(champion.version),
            seed=seed_of(challenger.version),
        )
        return await run_db(self._record, champion.version, challenger.version, decision, decider)

    def _pair(self, challenger_version: str) -> tuple[ModelRow, ModelRow]:
        with self._sessions() as session:
            challenger = repository.get_model(session, version=challenger_version, with_card=True)
            if challenger.status != ModelStatus.CHALLENGER:
                raise ModelStatusError(
                    f"models/{challenger_version} is {challenger.status}, not a challenger",
                    reason="NOT_A_CHALLENGER",
                )
            active = repository.active_models(session).champion
            if active is None:
                raise NoChampionModelError("no champion to compare with; promote one with PromoteModel")
            champion = repository.get_model(session, version=active.version, with_card=True)
        return champion, challenger

    def _score_both(
        self, champion: str, challenger: str, events: Sequence[LabelledEvent]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        inputs: list[FeatureInput] = [e.features for e in events if e.features is not None]
        if not inputs:
            empty = np.zeros(0, dtype=np.float32)
            return empty, empty
        matrix = build_features(inputs)
        return self._scorer(champion).score(matrix), self._scorer(challenger).score(matrix)

    def _scorer(self, version: str) -> OnnxScorer:
        with self._sessions() as session:
            onnx, sha256 = repository.model_bytes(session, version=version)
        return OnnxScorer(onnx_bytes=onnx, expected_sha256=sha256)

    def _champion_drift(self, champion: str) -> Drift | None:
        readings = self._drift.readings()
        window = readings.windows.get(DRIFT_WINDOW)
        if readings.model_version != champion or not readings.baseline or window is None:
            return None
        measured = {name: psi for name, psi in window.feature_psi.items() if psi is not None}
        if window.score_psi is not None:
            measured["score"] = window.score_psi
        if not measured:
            return None
        largest = max(measured, key=lambda name: (measured[name], name))
        return Drift(psi=measured[largest], measured_on=largest)

    def _record(
        self, champion: str, challenger: str, decision: Decision, decider: str
    ) -> PromotionDecisionRow:
        figures: dict[str, object] = {
            "labelled_events": decision.labelled_events,
            "champion_f1": decision.champion_f1,
            "challenger_f1": decision.challenger_f1,
            "f1_difference_lower": decision.lower,
            "f1_difference_upper": decision.upper,
        }
        if decision.drift is not None:
            figures |= {"champion_psi": decision.drift.psi, "champion_psi_on": decision.drift.measured_on}
        with transaction(self._sessions) as session:
            if decision.promote:
                repository.promote_model(session, version=challenger)
            return repository.record_decision(
                session,
                challenger_version=challenger,
                champion_version=champion,
                promoted=decision.promote,
                reason=decision.reason,
                figures=figures,
                decider=decider,
            )

    async def history(
        self, challenger_version: str, *, limit: int, before: tuple[int, int] | None
    ) -> list[PromotionDecisionRow]:
        def load() -> list[PromotionDecisionRow]:
            with self._sessions() as session:
                repository.get_model(session, version=challenger_version)  # NOT_FOUND for an unknown model
                return repository.list_decisions(
                    session, challenger_version=challenger_version, limit=limit, before=before
                )

        return await run_db(load)
