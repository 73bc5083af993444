"""The models a replica serves: the champion and the newest challenger, loaded once per version.

Every replica polls the registry (`refresh`) and swaps in a new snapshot atomically: a request reads
`current` once and scores with exactly that pair, so a swap never mixes two versions in one answer.
Every load verifies the stored bytes against the recorded sha256; a refused champion leaves the previous
good one serving.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from services.scoring import repository
from services.scoring.domain.errors import ModelIntegrityError, ModelLoadError, ModelNotFoundError
from services.scoring.domain.model import OnnxScorer
from services.scoring.metrics import ScoringMetrics

log = logging.getLogger("awareness.scoring")

# A refused version is tried again after this long (someone may restore its bytes), not on every poll.
REFUSED_RETRY_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class LoadedModel:
    version: str
    sha256: str
    scorer: OnnxScorer


@dataclass(frozen=True, slots=True)
class ModelSnapshot:
    champion: LoadedModel | None = None
    challenger: LoadedModel | None = None


class LiveModels:
    """Holds the current snapshot; `refresh` is blocking (database + onnxruntime) and thread-safe."""

    def __init__(
        self,
        *,
        sessions: sessionmaker[Session],
        metrics: ScoringMetrics,
        refused_retry_seconds: float = REFUSED_RETRY_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sessions = sessions
        self._metrics = metrics
        self._retry_seconds = refused_retry_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._refused: dict[tuple[str, str], float] = {}
        self.current = ModelSnapshot()

    def refresh(self) -> ModelSnapshot:
        """Read which versions are champion and challenger, load what changed, swap the snapshot."""
        with self._lock:
            with self._sessions() as session:
                active = repository.active_models(session)
            previous = self.current
            loaded = {m.version: m for m in (previous.champion, previous.challenger) if m is not None}
            champion = self._resolve(active.champion, loaded, role="champion")
            if champion is None and active.champion is not None:
                champion = previous.champion  # refused: keep serving the last good champion
            challenger = self._resolve(active.challenger, loaded, role="challenger")
            snapshot = ModelSnapshot(champion=champion, challenger=challenger)
            if snapshot != previous:
                self._publish(previous, snapshot)
            self.current = snapshot
            return snapshot

    def _resolve(
        self, active: repository.ActiveModel | None, loaded: dict[str, LoadedModel], *, role: str
    ) -> LoadedModel | None:
        if active is None:
            return None
        known = loaded.get(active.version)
        if known is not None and known.sha256 == active.sha256:
            return known
        key = (active.version, active.sha256)
        refused_at = self._refused.get(key)
        if refused_at is not None and self._clock() - refused_at < self._retry_seconds:
            return None
        try:
            with self._sessions() as session:
                onnx, recorded = repository.model_bytes(session, version=active.version)
            scorer = OnnxScorer(onnx_bytes=onnx, expected_sha256=recorded)
        except ModelIntegrityError as error:
            self._refuse(key, role=role, error=error)
            self._metrics.model_integrity_failures.inc()
            return None
        except (ModelLoadError, ModelNotFoundError) as error:
            self._refuse(key, role=role, error=error)
            self._metrics.model_load_failures.inc()
            return None
        self._refused.pop(key, None)
        self._metrics.model_reloads.labels(role).inc()
        log.info("model loaded", extra={"model_version": active.version, "role": role, "sha256": recorded})
        return LoadedModel(version=active.version, sha256=recorded, scorer=scorer)

    def _refuse(self, key: tuple[str, str], *, role: str, error: Exception) -> None:
        self._refused[key] = self._clock()
        log.error(
            "model refused; the previous good model keeps serving",
            extra={
                "model_version": key[0],
                "role": role,
                "reason": type(error).__name__,
                "detail": str(error),
            },
        )

    def _publish(self, previous: ModelSnapshot, snapshot: ModelSnapshot) -> None:
        for role, model in (("champion", previous.champion), ("challenger", previous.challenger)):
            if model is not None:
                with contextlib.suppress(KeyError):
                    self._metrics.model_info.remove(model.version, role)
        for role, model in (("champion", snapshot.champion), ("challenger", snapshot.challenger)):
            if model is not None:
                self._metrics.model_info.labels(model.version, role).set(1)
        log.info(
            "serving models",
            extra={
                "champion": snapshot.champion.version if snapshot.champion else None,
                "challenger": snapshot.challenger.version if snapshot.challenger else None,
            },
        )
