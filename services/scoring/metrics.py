"""The scoring service's own Prometheus metrics (names `awareness_scoring_*`)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import Counter, Gauge, Histogram

from services.runtime.metrics import ServiceMetrics

_INFERENCE_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)


@dataclass(frozen=True)
class ScoringMetrics:
    model_info: Gauge
    inference_seconds: Histogram
    scored: Counter
    skipped: Counter
    model_reloads: Counter
    model_integrity_failures: Counter
    model_load_failures: Counter
    shadow_recorded: Counter
    shadow_dropped: Counter

    @classmethod
    def create(cls, metrics: ServiceMetrics) -> ScoringMetrics:
        return cls(
            model_info=metrics.gauge(
                "model_info", "1 for each model version a replica serves, by role", ["version", "role"]
            ),
            inference_seconds=metrics.histogram(
                "inference_duration_seconds",
                "onnxruntime inference time per ScoreEvents batch (features built, scores computed)",
                ["role"],
                buckets=_INFERENCE_BUCKETS,
            ),
            scored=metrics.counter("scored_total", "Events scored by the champion"),
            skipped=metrics.counter("skipped_total", "Events deliberately not scored, by reason", ["reason"]),
            model_reloads=metrics.counter(
                "model_reloads_total", "Model versions loaded into a scorer", ["role"]
            ),
            model_integrity_failures=metrics.counter(
                "model_integrity_failures_total",
                "Model loads refused because the bytes failed the sha256 check",
            ),
            model_load_failures=metrics.counter(
                "model_load_failures_total", "Model loads refused because the bytes are not a usable model"
            ),
            shadow_recorded=metrics.counter("shadow_scores_total", "Challenger shadow scores recorded"),
            shadow_dropped=metrics.counter(
                "shadow_scores_dropped_total", "Challenger shadow scores dropped (queue full or write failed)"
            ),
        )
