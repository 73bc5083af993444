"""The analytics service's own Prometheus metrics (names `awareness_analytics_*`)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import Counter, Histogram

from services.runtime.metrics import ServiceMetrics

_FOLD_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


@dataclass(frozen=True)
class AnalyticsMetrics:
    facts: Counter
    fold_seconds: Histogram

    @classmethod
    def create(cls, metrics: ServiceMetrics) -> AnalyticsMetrics:
        return cls(
            facts=metrics.counter(
                "facts_total", "Event facts received, by outcome (folded, duplicate, excluded)", ["outcome"]
            ),
            fold_seconds=metrics.histogram(
                "fold_duration_seconds",
                "Time to fold one RecordEvents batch in its transaction",
                buckets=_FOLD_BUCKETS,
            ),
        )
