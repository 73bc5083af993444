"""Live input drift: the champion's inputs and scores, binned per minute, against its training distribution.

Each scored batch adds its rows to per-bin counters of the current minute (``observe``: a few numpy calls
per batch, no per-event Python). The minute buckets form a ring of one day, so the last hour and the last
day are sums over bucket rows, taken when someone asks (``readings``) or when the gauges are published.
Everything resets when the champion changes: the baseline is the champion's own model card, and a card
written before drift monitoring existed has no ``training_distribution``, so there is no drift for it.

Live rows are feature values and scores only, never who they belong to.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from prometheus_client import Gauge
from sqlalchemy.orm import Session, sessionmaker

from services.scoring import repository
from services.scoring.domain.drift import (
    SCORE,
    BatchBinner,
    DistributionFormatError,
    TrainingDistribution,
    psi,
)
from services.scoring.domain.features import FEATURE_NAMES
from services.scoring.metrics import ScoringMetrics

log = logging.getLogger("awareness.scoring")

BUCKET_SECONDS: Final = 60
# (label, length in seconds), shortest first; the ring keeps enough buckets for the longest.
WINDOWS: Final[tuple[tuple[str, int], ...]] = (("1h", 3_600), ("24h", 86_400))
# Below this many live events in a window, PSI is mostly sampling noise: no reading.
MIN_EVENTS: Final = 100
PUBLISH_SECONDS: Final = 15.0

NOTE_NO_CHAMPION: Final = "no champion is loaded"
NOTE_NO_DISTRIBUTION: Final = (
    "the champion's model card has no training_distribution (trained before drift monitoring); no drift"
)
NOTE_UNREADABLE: Final = "the champion's training_distribution cannot be read; no drift"


@dataclass(frozen=True, slots=True, kw_only=True)
class WindowReading:
    """PSI over one sliding window. A PSI is None while the window holds fewer than ``min_events``."""

    window: str
    seconds: int
    events: int
    feature_psi: Mapping[str, float | None]  # every name of FEATURE_NAMES, in that order
    score_psi: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class DriftReadings:
    """What the monitor sees at ``at`` (Unix seconds) for the champion ``model_version``.

    ``baseline`` is False (and ``note`` says why) when there is nothing to compare against: no champion,
    or a card without a training distribution. Then every window has 0 events and no PSI.
    """

    at: float
    model_version: str | None
    baseline: bool
    note: str
    min_events: int
    windows: Mapping[str, WindowReading]  # keyed by label: "1h", "24h"


@dataclass(frozen=True, slots=True)
class _Baseline:
    version: str | None
    binner: BatchBinner | None
    note: str


class DriftMonitor:
    """Per-minute bin counters of the champion's live inputs; thread-safe (``observe`` runs in workers)."""

    def __init__(
        self,
        *,
        min_events: int = MIN_EVENTS,
        bucket_seconds: int = BUCKET_SECONDS,
        publish_seconds: float = PUBLISH_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._min_events = min_events
        self._publish_seconds = publish_seconds
        self._bucket_seconds = bucket_seconds
        self._clock = clock
        self._slots = -(-max(seconds for _, seconds in WINDOWS) // bucket_seconds)
        self._lock = threading.Lock()
        self._baseline = _Baseline(version=None, binner=None, note=NOTE_NO_CHAMPION)
        self._counts: npt.NDArray[np.int64] = np.zeros((self._slots, 0), dtype=np.int64)
        self._events: npt.NDArray[np.int64] = np.zeros(self._slots, dtype=np.int64)
        self._bucket_of_slot: npt.NDArray[np.int64] = np.full(self._slots, -1, dtype=np.int64)

    @property
    def model_version(self) -> str | None:
        """The champion the current baseline belongs to (None before one is followed)."""
        return self._baseline.version

    # --- following the champion ----------------------------------------------------------------------

    def follow(self, sessions: sessionmaker[Session], version: str | None) -> None:
        """Make ``version`` the baseline if it is not already: load its card, reset every counter.

        Blocking (one database read per champion change); call it after each registry refresh.
        """
        if version == self._baseline.version:
            return
        card: Mapping[str, Any] | None = None
        if version is not None:
            with sessions() as session:
                card = repository.get_model(session, version=version, with_card=True).model_card or {}
        self.install(version, card)

    def install(self, version: str | None, card: Mapping[str, Any] | None) -> None:
        """Reset to the baseline in ``card`` for ``version`` (None: no champion, nothing tracked)."""
        binner: BatchBinner | None = None
        note = NOTE_NO_CHAMPION
        if version is not None:
            try:
                distribution = TrainingDistribution.from_card(card or {})
            except DistributionFormatError:
                log.exception("drift baseline unreadable", extra={"model_version": version})
                distribution, note = None, NOTE_UNREADABLE
            else:
                note = "" if distribution is not None else NOTE_NO_DISTRIBUTION
            binner = BatchBinner(distribution) if distribution is not None else None
        with self._lock:
            self._baseline = _Baseline(version=version, binner=binner, note=note)
            self._counts = np.zeros((self._slots, binner.raw_size if binner else 0), dtype=np.int64)
            self._events[:] = 0
            self._bucket_of_slot[:] = -1
        log.info("drift baseline", extra={"model_version": version, "tracked": binner is not None})

    # --- serving path --------------------------------------------------------------------------------

    def observe(
        self, version: str, features: npt.NDArray[np.float32], scores: npt.NDArray[np.float32]
    ) -> None:
        """Count one scored batch; ignored unless ``version`` is the champion the baseline belongs to."""
        baseline = self._baseline
        if baseline.binner is None or baseline.version != version or not len(features):
            return
        increments = baseline.binner.count(features, scores)
        bucket = int(self._clock() // self._bucket_seconds)
        slot = bucket % self._slots
        with self._lock:
            if self._baseline is not baseline:  # the champion changed while this batch was binned
                return
            if self._bucket_of_slot[slot] != bucket:  # a day-old bucket: start it afresh
                self._counts[slot] = 0
                self._events[slot] = 0
                self._bucket_of_slot[slot] = bucket
            self._counts[slot] += increments
            self._events[slot] += len(features)

    # --- readings ------------------------------------------------------------------------------------

    def readings(self, now: float | None = None) -> DriftReadings:
        """PSI per feature and of the score over the last hour and the last day (as of ``now``)."""
        at = self._clock() if now is None else now
        bucket = int(at // self._bucket_seconds)
        with self._lock:
            baseline = self._baseline
            sums = []
            for label, seconds in WINDOWS:
                buckets = -(-seconds // self._bucket_seconds)
                live = (self._bucket_of_slot > bucket - buckets) & (self._bucket_of_slot <= bucket)
                sums.append((label, seconds, int(self._events[live].sum()), self._counts[live].sum(axis=0)))
        windows = {
            label: self._window(baseline.binner, label, seconds, events, counts)
            for label, seconds, events, counts in sums
        }
        return DriftReadings(
            at=at,
            model_version=baseline.version,
            baseline=baseline.binner is not None,
            note=baseline.note,
            min_events=self._min_events,
            windows=windows,
        )

    def _window(
        self, binner: BatchBinner | None, label: str, seconds: int, events: int, counts: npt.NDArray[Any]
    ) -> WindowReading:
        enough = binner is not None and events >= self._min_events
        bins = binner.bin_counts(counts) if binner is not None and enough else None

        def reading(name: str) -> float | None:
            if bins is None or binner is None:
                return None
            return round(psi(binner.expected[name], bins[binner.slices[name]]), 6)

        return WindowReading(
            window=label,
            seconds=seconds,
            events=events,
            feature_psi={name: reading(name) for name in FEATURE_NAMES},
            score_psi=reading(SCORE),
        )

    def publish(self, metrics: ScoringMetrics, now: float | None = None) -> DriftReadings:
        """Set the PSI gauges from fresh readings; a PSI without a reading has no series at all."""
        readings = self.readings(now)
        for label, window in readings.windows.items():
            metrics.drift_window_events.labels(label).set(window.events)
            for name, value in window.feature_psi.items():
                _set_or_remove(metrics.feature_psi, (name, label), value)
            _set_or_remove(metrics.score_psi, (label,), window.score_psi)
        return readings

    async def run(self, metrics: ScoringMetrics) -> None:
        """Background task: refresh the gauges every ``publish_seconds``."""
        while True:
            await asyncio.sleep(self._publish_seconds)
            try:
                # Off the event loop: summing a day of buckets takes about a millisecond.
                await asyncio.to_thread(self.publish, metrics)
            except Exception:
                log.exception("drift gauges not refreshed")


def _set_or_remove(gauge: Gauge, labels: tuple[str, ...], value: float | None) -> None:
    if value is None:
        with contextlib.suppress(KeyError):
            gauge.remove(*labels)
    else:
        gauge.labels(*labels).set(value)
