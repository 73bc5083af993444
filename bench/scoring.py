"""Scoring benchmark: onnxruntime against the same model in sklearn, single events and batches, and the
cost drift tracking adds to every scored event.

Self-contained: trains a small model from the synthetic generator with a fixed seed, then measures.
Run with `python -m bench scoring [seconds]`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Final

import numpy as np
import numpy.typing as npt

from services.scoring.domain.generator import GeneratorConfig, generate
from services.scoring.domain.model import OnnxScorer
from services.scoring.domain.training import TrainingResult, train
from services.scoring.drift import DriftMonitor

BENCH_CONFIG: Final = GeneratorConfig(people=150, days=42, seed=7)
BENCH_FOLDS: Final = 3
BATCH_SIZE: Final = 1_000
TARGET_P99_MICROSECONDS: Final = 1_000.0
TARGET_EVENTS_PER_SECOND: Final = 50_000.0
# Drift tracking is measured on batches of the size the service scores on its event loop.
DRIFT_BATCH_SIZE: Final = 64
TARGET_DRIFT_MICROSECONDS: Final = 5.0

Scorer = Callable[[npt.NDArray[np.float32]], object]


def _latencies_microseconds(
    score: Scorer, rows: npt.NDArray[np.float32], *, seconds: float
) -> npt.NDArray[np.float64]:
    samples: list[int] = []
    deadline = time.perf_counter() + seconds
    index = 0
    while time.perf_counter() < deadline:
        row = rows[index % len(rows) : index % len(rows) + 1]
        started = time.perf_counter_ns()
        score(row)
        samples.append(time.perf_counter_ns() - started)
        index += 1
    return np.asarray(samples, dtype=np.float64) / 1_000.0


def _events_per_second(score: Scorer, batch: npt.NDArray[np.float32], *, seconds: float) -> float:
    scored = 0
    started = time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        score(batch)
        scored += len(batch)
    return scored / (time.perf_counter() - started)


def _batch_of(rows: npt.NDArray[np.float32], size: int) -> npt.NDArray[np.float32]:
    repeats = -(-size // len(rows))
    return np.ascontiguousarray(np.tile(rows, (repeats, 1))[:size])


def _row(
    *, metric: str, unit: str, onnx: float, sklearn: float, target: str, meets: bool | None
) -> dict[str, object]:
    return {
        "metric": metric,
        "unit": unit,
        "onnxruntime": round(onnx, 1),
        "sklearn": round(sklearn, 1),
        "onnx/sklearn": round(onnx / sklearn, 4) if sklearn else float("nan"),
        "target (onnxruntime)": target,
        "meets target": meets,
    }


def drift_tracking_microseconds(result: TrainingResult, *, seconds: float) -> float:
    """What drift tracking adds per scored event: p50 of (score + track) minus p50 of (score), per event.

    Both run on the same batch, alternately, so that a slower stretch of the machine hits both alike.
    """
    scorer = OnnxScorer(onnx_bytes=result.onnx_bytes, expected_sha256=result.sha256)
    monitor = DriftMonitor()
    monitor.install("bench", result.model_card)
    batch = _batch_of(result.test_features, DRIFT_BATCH_SIZE)
    without: list[int] = []
    tracked: list[int] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        started = time.perf_counter_ns()
        scorer.score(batch)
        without.append(time.perf_counter_ns() - started)
        started = time.perf_counter_ns()
        monitor.observe("bench", batch, scorer.score(batch))
        tracked.append(time.perf_counter_ns() - started)
    if monitor.readings().windows["1h"].events != DRIFT_BATCH_SIZE * len(tracked):
        raise RuntimeError("the drift monitor did not count every tracked batch")
    difference_ns = float(np.percentile(tracked, 50) - np.percentile(without, 50))
    return max(difference_ns, 0.0) / 1_000.0 / DRIFT_BATCH_SIZE


def drift_tracking_row(result: TrainingResult, *, seconds: float) -> dict[str, object]:
    """The bench row for drift tracking, in the table's columns (sklearn has no part in it)."""
    cost = round(drift_tracking_microseconds(result, seconds=seconds), 2)
    ratio = cost / TARGET_DRIFT_MICROSECONDS
    return {
        "metric": f"drift tracking per scored event, batches of {DRIFT_BATCH_SIZE} (p50 with - without)",
        "unit": "µs",
        "onnxruntime": cost,
        "sklearn": "-",
        "onnx/sklearn": "-",
        "target (onnxruntime)": f"< {TARGET_DRIFT_MICROSECONDS:.0f} (at {ratio:.2f}x)",
        "meets target": bool(cost < TARGET_DRIFT_MICROSECONDS),
    }


def train_bench_model() -> TrainingResult:
    """The small, seeded model every bench run measures."""
    dataset = generate(BENCH_CONFIG)
    return train(events=dataset.inputs, labels=dataset.labels, seed=BENCH_CONFIG.seed, folds=BENCH_FOLDS)


def run(*, seconds: float = 3.0, model: TrainingResult | None = None) -> list[dict[str, object]]:
    """Measure for `seconds` per measurement (five measurements) and return one row per metric."""
    result = model or train_bench_model()
    scorer = OnnxScorer(onnx_bytes=result.onnx_bytes, expected_sha256=result.sha256)
    rows = result.test_features
    batch = _batch_of(rows, BATCH_SIZE)

    def sklearn_score(features: npt.NDArray[np.float32]) -> object:
        return result.estimator.predict_proba(features)[:, 1]

    onnx_single = _latencies_microseconds(scorer.score, rows, seconds=seconds)
    sklearn_single = _latencies_microseconds(sklearn_score, rows, seconds=seconds)
    onnx_rate = _events_per_second(scorer.score, batch, seconds=seconds)
    sklearn_rate = _events_per_second(sklearn_score, batch, seconds=seconds)
    onnx_p50, onnx_p99 = np.percentile(onnx_single, [50, 99])
    sklearn_p50, sklearn_p99 = np.percentile(sklearn_single, [50, 99])
    model_name = f"{result.algorithm} ({len(result.onnx_bytes) / 1024:.0f} KiB ONNX)"
    return [
        _row(
            metric=f"single-event latency p50, {model_name}",
            unit="µs",
            onnx=float(onnx_p50),
            sklearn=float(sklearn_p50),
            target="-",
            meets=None,
        ),
        _row(
            metric="single-event latency p99",
            unit="µs",
            onnx=float(onnx_p99),
            sklearn=float(sklearn_p99),
            target=f"< {TARGET_P99_MICROSECONDS:.0f}",
            meets=bool(onnx_p99 < TARGET_P99_MICROSECONDS),
        ),
        _row(
            metric=f"batch throughput, batches of {BATCH_SIZE}",
            unit="events/s",
            onnx=onnx_rate,
            sklearn=sklearn_rate,
            target=f"> {TARGET_EVENTS_PER_SECOND:.0f}",
            meets=bool(onnx_rate > TARGET_EVENTS_PER_SECOND),
        ),
        drift_tracking_row(result, seconds=seconds),
    ]


def format_table(rows: list[dict[str, object]]) -> str:
    """Plain-text table with one column per key of the first row."""
    headers = list(rows[0])
    cells = [[str(row[header]) for header in headers] for row in rows]
    widths = [max(len(header), *(len(line[i]) for line in cells)) for i, header in enumerate(headers)]

    def join(values: list[str]) -> str:
        return "  ".join(value.ljust(width) for value, width in zip(values, widths, strict=True)).rstrip()

    return "\n".join([join(headers), join(["-" * width for width in widths]), *map(join, cells)])


def main(argv: list[str] | None = None) -> int:
    """Print the table; `argv` may hold the seconds per measurement (the dispatcher passes nothing)."""
    arguments = argv or []
    seconds = float(arguments[0]) if arguments else 3.0
    print(format_table(run(seconds=seconds)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
