"""Promotion by evidence (pure): should a challenger replace the champion?

Both models score the same labelled live events (the last 30 days, consenting people). The challenger
is promoted when

1. it beats the champion on F1 at the decision threshold, and the 95 % bootstrap confidence interval
   of the difference (paired: the same resampled events for both) lies above zero; or
2. the champion's inputs drift past the act threshold (PSI >= 0.25 on the score or a feature over the
   last day) and the challenger does no worse (its F1 at least the champion's).

The events compared on are the held-out labels (``held_out``: a fifth of labelled events, chosen by
a hash of the event id), which no training run ever uses: a challenger trained last night on the
other labels is not judged on the answers it learnt. Otherwise it is kept, with the reason.

Too few labelled events (fewer than MIN_LABELLED_EVENTS, or
no event labelled risky) decide nothing on F1: only drift with a challenger no worse can promote.
The bootstrap is seeded, so the same evidence gives the same decision.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from services.scoring.domain.drift import ACT_THRESHOLD

MIN_LABELLED_EVENTS: Final = 30
HOLDOUT_ONE_IN: Final = 5
BOOTSTRAP_RESAMPLES: Final = 2000
CONFIDENCE: Final = 0.95


@dataclass(frozen=True, slots=True)
class Drift:
    """The champion's largest PSI over the last day, and what it was measured on."""

    psi: float
    measured_on: str  # "score" or a feature name


@dataclass(frozen=True, slots=True)
class Decision:
    promote: bool
    reason: str
    labelled_events: int
    champion_f1: float
    challenger_f1: float
    difference: float
    lower: float
    upper: float
    drift: Drift | None


def held_out(event_id: str) -> bool:
    """Whether a labelled event is kept out of training, for promotion decisions (one in five)."""
    return hashlib.sha256(event_id.encode()).digest()[0] % HOLDOUT_ONE_IN == 0


def seed_of(text: str) -> int:
    """A stable seed from a text (the challenger's version), so a decision can be recomputed."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def _f1_columns(predicted: npt.NDArray[np.bool_], labels: npt.NDArray[np.bool_]) -> npt.NDArray[np.float64]:
    """F1 of each resample (one per row): 2TP / (2TP + FP + FN), 0 without a TP."""
    tp = (predicted & labels).sum(axis=-1)
    fp = (predicted & ~labels).sum(axis=-1)
    fn = (~predicted & labels).sum(axis=-1)
    denominator = 2 * tp + fp + fn
    return np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0)


def decide(
    *,
    champion_scores: Sequence[float],
    challenger_scores: Sequence[float],
    labels: Sequence[int],
    threshold: float,
    drift: Drift | None,
    seed: int,
    resamples: int = BOOTSTRAP_RESAMPLES,
) -> Decision:
    truth = np.asarray(labels, dtype=bool)
    champion = np.asarray(champion_scores, dtype=np.float64) >= threshold
    challenger = np.asarray(challenger_scores, dtype=np.float64) >= threshold
    if not len(truth) == len(champion) == len(challenger):
        raise ValueError("scores and labels differ in length")
    count = len(truth)
    champion_f1 = float(_f1_columns(champion, truth)) if count else 0.0
    challenger_f1 = float(_f1_columns(challenger, truth)) if count else 0.0
    difference = challenger_f1 - champion_f1
    lower = upper = difference
    enough = count >= MIN_LABELLED_EVENTS and bool(truth.any())
    if enough:
        rows = np.random.default_rng(seed).integers(0, count, size=(resamples, count))
        differences = _f1_columns(challenger[rows], truth[rows]) - _f1_columns(champion[rows], truth[rows])
        tail = (1.0 - CONFIDENCE) / 2
        lower, upper = (float(v) for v in np.quantile(differences, [tail, 1.0 - tail]))
    interval = (
        f"F1 {challenger_f1:.3f} vs {champion_f1:.3f} ({difference:+.3f}, "
        f"95% CI [{lower:+.3f}, {upper:+.3f}])"
    )
    drifting = drift is not None and drift.psi >= ACT_THRESHOLD

    def decision(promote: bool, reason: str) -> Decision:
        return Decision(promote, reason, count, champion_f1, challenger_f1, difference, lower, upper, drift)

    if enough and lower > 0.0:
        return decision(True, f"beats the champion on {count} labelled events: {interval} excludes zero")
    if drifting and difference >= 0.0:
        assert drift is not None
        return decision(
            True,
            f"the champion drifts (PSI {drift.psi:.3f} on {drift.measured_on} >= {ACT_THRESHOLD}) and the "
            f"challenger does no worse on {count} labelled events: {interval}",
        )
    if not enough:
        why = f"too few labelled events to compare ({count}; at least {MIN_LABELLED_EVENTS}, some risky)"
    else:
        why = f"no real improvement on {count} labelled events: {interval} includes zero"
    if drifting:
        assert drift is not None
        why += f"; the champion drifts (PSI {drift.psi:.3f} on {drift.measured_on}), the challenger is worse"
    return decision(False, why)
