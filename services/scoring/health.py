"""GetModelHealth: a model's live quality on analysts' labels, beside its input drift.

Labels come from ingest's ListTrainingExamples (each with the score it was served and by which model
version); the challenger's scores of the same events from this service's shadow scores. Labels of
people who are erased or objected to profiling are left out (gdpr's CheckConsent answers no for
both). The champion's figures also feed the alerting gauges, refreshed in the background.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from awareness.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy.orm import Session, sessionmaker

from services.runtime.clients import call_peer
from services.runtime.db import run_db
from services.runtime.errors import AwarenessError
from services.runtime.timestamps import timestamp_to_us
from services.scoring import repository
from services.scoring.consent import ConsentChecker
from services.scoring.convert import feature_input
from services.scoring.domain.features import FeatureInput
from services.scoring.domain.quality import Quality, quality
from services.scoring.domain.training import DECISION_THRESHOLD
from services.scoring.drift import DriftMonitor, DriftReadings
from services.scoring.metrics import ScoringMetrics
from services.scoring.models import ModelRow, ModelStatus

log = logging.getLogger("awareness.scoring")

# The live windows, by the time the labelled event occurred.
QUALITY_WINDOWS: Final[tuple[tuple[str, timedelta], ...]] = (
    ("7d", timedelta(days=7)),
    ("30d", timedelta(days=30)),
)
MAX_LABELLED_EVENTS: Final = 200_000
_PAGE_SIZE: Final = 5_000
LABEL_VALUES: Final = {ingest_pb2.LABEL_TRUE_POSITIVE: 1, ingest_pb2.LABEL_FALSE_POSITIVE: 0}


@dataclass(frozen=True, slots=True)
class LabelledEvent:
    event_id: str
    pseudonym: str
    occurred_us: int
    label: int
    label_us: int
    served_score: float | None
    served_version: str
    # The scoring input as ingest sent it (None when it no longer converts), for re-scoring.
    features: FeatureInput | None = None


@dataclass(frozen=True, slots=True)
class ScorerQuality:
    window: str
    challenger: bool  # the challenger's shadow scores of events the model served, else the model's own
    model_version: str
    figures: Quality


@dataclass(frozen=True, slots=True)
class ModelHealthView:
    model: ModelRow
    threshold: float
    live: tuple[ScorerQuality, ...]
    drift: DriftReadings | None  # while the model is the champion this replica serves
    computed_at: datetime
    latest_label_us: int | None


class LiveLabels:
    """Analysts' labels of the last 30 days with what was served, from ingest (paged, bounded)."""

    def __init__(
        self, *, ingest: Callable[[], ingest_pb2_grpc.IngestServiceStub], profiling: ConsentChecker
    ) -> None:
        self._ingest = ingest
        self._profiling = profiling

    async def since(self, start: datetime) -> list[LabelledEvent]:
        """Labelled events that occurred at or after ``start`` whose subjects may be profiled."""
        stamp = Timestamp()
        stamp.FromDatetime(start)
        found: list[LabelledEvent] = []
        token = ""
        while len(found) < MAX_LABELLED_EVENTS:
            response = await call_peer(
                self._ingest().ListTrainingExamples(
                    ingest_pb2.ListTrainingExamplesRequest(
                        page_size=_PAGE_SIZE, page_token=token, start_time=stamp
                    )
                ),
                target="ingest",
            )
            found.extend(_labelled(example) for example in response.examples if example.label in LABEL_VALUES)
            token = response.next_page_token
            if not token:
                break
        granted = await self._profiling.granted([event.pseudonym for event in found])
        return [event for event in found if granted.get(event.pseudonym, False)]


def _labelled(example: ingest_pb2.TrainingExample) -> LabelledEvent:
    scored = bool(example.served_model_version)
    try:
        features: FeatureInput | None = feature_input(example.input, field="example.input")
    except AwarenessError:
        features = None
    return LabelledEvent(
        event_id=example.input.event_id,
        pseudonym=example.input.subject_pseudonym,
        occurred_us=timestamp_to_us(example.input.occurred_at),
        label=LABEL_VALUES[example.label],
        label_us=timestamp_to_us(example.label_time) if example.HasField("label_time") else 0,
        served_score=example.served_score if scored else None,
        served_version=example.served_model_version,
        features=features,
    )


def live_quality(
    events: Sequence[LabelledEvent],
    shadows: Sequence[repository.ShadowPair],
    *,
    version: str,
    threshold: float,
    now: datetime,
) -> tuple[ScorerQuality, ...]:
    """Per window: the model's own scores (served, else in shadow), and when it served some of the
    events, the newest challenger's shadow scores of those same events."""
    own_shadow = {s.event_id: s.challenger_score for s in shadows if s.challenger_version == version}
    beside: dict[str, dict[str, float]] = {}
    latest: dict[str, int] = {}
    for shadow in shadows:
        if shadow.champion_version == version and shadow.challenger_version != version:
            beside.setdefault(shadow.challenger_version, {})[shadow.event_id] = shadow.challenger_score
            seen = latest.get(shadow.challenger_version, 0)
            latest[shadow.challenger_version] = max(seen, shadow.scored_at_us)
    challenger = max(latest, key=lambda v: (latest[v], v)) if latest else None
    rows: list[ScorerQuality] = []
    for window, length in QUALITY_WINDOWS:
        start_us = int((now - length).timestamp() * 1_000_000)
        in_window = [e for e in events if e.occurred_us >= start_us]
        own = [
            (score, e.label) for e in in_window if (score := _own_score(e, version, own_shadow)) is not None
        ]
        rows.append(ScorerQuality(window, False, version, _figures(own, threshold)))
        if challenger is not None:
            scores = beside[challenger]
            shared = [
                (scores[e.event_id], e.label)
                for e in in_window
                if e.served_version == version and e.event_id in scores
            ]
            rows.append(ScorerQuality(window, True, challenger, _figures(shared, threshold)))
    return tuple(rows)


def _own_score(event: LabelledEvent, version: str, own_shadow: Mapping[str, float]) -> float | None:
    """The model's score of the event: what it served, else its shadow score, else none."""
    if event.served_version == version and event.served_score is not None:
        return event.served_score
    return own_shadow.get(event.event_id)


def _figures(pairs: Sequence[tuple[float, int]], threshold: float) -> Quality:
    return quality([score for score, _ in pairs], [label for _, label in pairs], threshold=threshold)


def decision_threshold(card: Mapping[str, Any] | None) -> float:
    value = (card or {}).get("decision_threshold", DECISION_THRESHOLD)
    return float(value) if isinstance(value, int | float) else DECISION_THRESHOLD


class ModelHealth:
    """The GetModelHealth use case, and the refresh of the champion's quality gauges."""

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

    async def health(self, version: str) -> ModelHealthView:
        model = await run_db(self._model, version)
        now = self._clock()
        longest = max(length for _, length in QUALITY_WINDOWS)
        events = await self._labels.since(now - longest)
        shadows = await run_db(self._shadows, [e.event_id for e in events])
        threshold = decision_threshold(model.model_card)
        serving = self._drift.model_version == version and model.status == ModelStatus.CHAMPION
        return ModelHealthView(
            model=model,
            threshold=threshold,
            live=live_quality(events, shadows, version=version, threshold=threshold, now=now),
            drift=self._drift.readings() if serving else None,
            computed_at=now,
            latest_label_us=max((e.label_us for e in events if e.label_us), default=None),
        )

    def _model(self, version: str) -> ModelRow:
        with self._sessions() as session:
            return repository.get_model(session, version=version, with_card=True)

    def _shadows(self, event_ids: Sequence[str]) -> list[repository.ShadowPair]:
        with self._sessions() as session:
            return repository.shadow_pairs(session, event_ids=event_ids)

    async def run(self, metrics: ScoringMetrics, *, every_seconds: float) -> None:
        """Refresh the gauges until cancelled (a background task of the service)."""
        while True:
            await asyncio.sleep(every_seconds)
            try:
                await self.publish(metrics)
            except Exception as error:  # ingest or gdpr down: the gauges keep their last values
                log.warning("live quality gauges not refreshed", extra={"error": str(error)})

    async def publish(self, metrics: ScoringMetrics) -> None:
        """Set the champion's live F1, its card's F1 and the newest label's time."""
        version = self._drift.model_version
        if version is None:
            return
        view = await self.health(version)
        # Only the champion's series: a promotion must not leave the old version's behind to alert.
        metrics.live_f1.clear()
        metrics.card_f1.clear()
        for row in view.live:
            if not row.challenger and row.figures.labelled_events:
                metrics.live_f1.labels(version, row.window).set(row.figures.f1)
        card_f1 = view.model.metrics.get("f1")
        if isinstance(card_f1, int | float):
            metrics.card_f1.labels(version).set(float(card_f1))
        if view.latest_label_us is not None:
            metrics.last_label_time.set(view.latest_label_us / 1_000_000)
