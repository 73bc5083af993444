"""Shadow scoring: the challenger scores what the champion scored, off the request path, in batches.

ScoreEvents hands over the feature matrix it already built; a background task scores it with the
challenger (in a worker thread) and writes all rows of a batch with one INSERT. When the queue is full
the batch is dropped and counted: shadow scores are for comparison, never worth slowing ingestion.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from sqlalchemy.orm import Session, sessionmaker

from services.runtime.db import run_db, transaction
from services.scoring import repository
from services.scoring.live import LoadedModel
from services.scoring.metrics import ScoringMetrics

log = logging.getLogger("awareness.scoring")

MAX_ROWS_PER_WRITE = 5_000


@dataclass(frozen=True, slots=True, kw_only=True)
class ShadowBatch:
    event_ids: tuple[str, ...]
    features: npt.NDArray[np.float32]
    champion_version: str
    champion_scores: npt.NDArray[np.float32]
    challenger: LoadedModel
    scored_at_us: int


class ShadowRecorder:
    def __init__(
        self, *, sessions: sessionmaker[Session], metrics: ScoringMetrics, queue_limit: int = 1_000
    ) -> None:
        self._sessions = sessions
        self._metrics = metrics
        self._queue: asyncio.Queue[ShadowBatch] = asyncio.Queue(maxsize=queue_limit)

    def submit(self, batch: ShadowBatch) -> None:
        try:
            self._queue.put_nowait(batch)
        except asyncio.QueueFull:
            self._metrics.shadow_dropped.inc(len(batch.event_ids))

    async def run(self) -> None:
        """Background task: drain the queue forever."""
        while True:
            batches = [await self._queue.get()]
            rows = len(batches[0].event_ids)
            while rows < MAX_ROWS_PER_WRITE and not self._queue.empty():
                batches.append(self._queue.get_nowait())
                rows += len(batches[-1].event_ids)
            try:
                await self._record(batches)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("shadow scores not recorded")
                self._metrics.shadow_dropped.inc(rows)
            finally:
                for _ in batches:
                    self._queue.task_done()

    async def drain(self) -> None:
        """Wait until everything submitted so far is written (tests, shutdown)."""
        await self._queue.join()

    async def _record(self, batches: Sequence[ShadowBatch]) -> None:
        scores = await asyncio.to_thread(self._score, batches)
        await run_db(self._write, scores)
        self._metrics.shadow_recorded.inc(len(scores))

    @staticmethod
    def _score(batches: Sequence[ShadowBatch]) -> list[repository.ShadowScore]:
        scores: list[repository.ShadowScore] = []
        for batch in batches:
            challenger_scores = batch.challenger.scorer.score(batch.features)
            scores.extend(
                repository.ShadowScore(
                    event_id=event_id,
                    champion_version=batch.champion_version,
                    challenger_version=batch.challenger.version,
                    champion_score=float(champion),
                    challenger_score=float(challenger),
                    scored_at_us=batch.scored_at_us,
                )
                for event_id, champion, challenger in zip(
                    batch.event_ids, batch.champion_scores, challenger_scores, strict=True
                )
            )
        return scores

    def _write(self, scores: list[repository.ShadowScore]) -> None:
        with transaction(self._sessions) as session:
            repository.record_shadow_scores(session, scores=scores)
