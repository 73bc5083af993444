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
    feature_psi: Gauge
    score_psi: Gauge
    drift_window_events: Gauge
    live_f1: Gauge
    card_f1: Gauge
    last_label_time: Gauge

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
            # Label values come from closed sets: FEATURE_NAMES and the window labels ("1h", "24h").
            feature_psi=metrics.gauge(
                "feature_psi",
                "PSI of a feature's live values against the champion's training distribution, by window",
                ["feature", "window"],
            ),
            score_psi=metrics.gauge(
                "score_psi",
                "PSI of the champion's live scores against its held-out scores, by window",
                ["window"],
            ),
            drift_window_events=metrics.gauge(
                "drift_window_events",
                "Events the champion scored in a drift window (PSI needs 100)",
                ["window"],
            ),
            # The champion's only (cleared on each refresh): versions and windows ("7d", "30d") are few.
            live_f1=metrics.gauge(
                "live_f1",
                "The champion's F1 on analysts' labels of events in the window, at its decision threshold",
                ["model_version", "window"],
            ),
            card_f1=metrics.gauge(
                "card_f1", "The champion's held-out F1 from its model card", ["model_version"]
            ),
            last_label_time=metrics.gauge(
                "last_label_timestamp_seconds", "When the newest analyst label of the last 30 days was set"
            ),
        )
