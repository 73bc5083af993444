"""Live quality of a scorer on analysts' labels (pure): confusion counts at a threshold, precision,
recall, F1, the Brier score and a reliability curve.

A label is 1 (true positive: the event was risky) or 0 (false positive). An event counts as predicted
risky when its score is at or above the threshold, as the model card's held-out figures count it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

CALIBRATION_BINS: Final = 10


@dataclass(frozen=True, slots=True)
class CalibrationBin:
    lower: float
    upper: float
    events: int
    mean_score: float
    observed_rate: float


@dataclass(frozen=True, slots=True)
class Quality:
    labelled_events: int
    true_positives: int
    false_positives: int
    true_negatives: int
    false_negatives: int
    precision: float
    recall: float
    f1: float
    brier_score: float
    calibration: tuple[CalibrationBin, ...]


def f1_of(true_positives: int, false_positives: int, false_negatives: int) -> float:
    """2TP / (2TP + FP + FN): the harmonic mean of precision and recall; 0 when there is no TP."""
    denominator = 2 * true_positives + false_positives + false_negatives
    return 2 * true_positives / denominator if denominator else 0.0


def quality(scores: Sequence[float], labels: Sequence[int], *, threshold: float) -> Quality:
    """The figures of ``scores`` against ``labels`` (same length) at ``threshold``."""
    if len(scores) != len(labels):
        raise ValueError("scores and labels differ in length")
    tp = fp = tn = fn = 0
    squared = 0.0
    sums = [0.0] * CALIBRATION_BINS
    positives = [0] * CALIBRATION_BINS
    counts = [0] * CALIBRATION_BINS
    for score, label in zip(scores, labels, strict=True):
        predicted = score >= threshold
        if predicted and label:
            tp += 1
        elif predicted:
            fp += 1
        elif label:
            fn += 1
        else:
            tn += 1
        squared += (score - label) ** 2
        index = min(max(int(score * CALIBRATION_BINS), 0), CALIBRATION_BINS - 1)
        counts[index] += 1
        sums[index] += score
        positives[index] += label
    total = len(scores)
    calibration = tuple(
        CalibrationBin(
            lower=index / CALIBRATION_BINS,
            upper=(index + 1) / CALIBRATION_BINS,
            events=counts[index],
            mean_score=sums[index] / counts[index] if counts[index] else 0.0,
            observed_rate=positives[index] / counts[index] if counts[index] else 0.0,
        )
        for index in range(CALIBRATION_BINS)
    )
    return Quality(
        labelled_events=total,
        true_positives=tp,
        false_positives=fp,
        true_negatives=tn,
        false_negatives=fn,
        precision=tp / (tp + fp) if tp + fp else 0.0,
        recall=tp / (tp + fn) if tp + fn else 0.0,
        f1=f1_of(tp, fp, fn),
        brier_score=squared / total if total else 0.0,
        calibration=calibration,
    )
