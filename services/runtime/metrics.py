"""Prometheus metrics, one registry per service process, served on a metrics port.

Names follow ``awareness_<service>_<thing>_<unit>``. A registry per service (not the
global one) lets tests run several services in one process without collisions.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BREAKER_STATES = {"closed": 0, "half-open": 1, "open": 2}
# Label value for anything outside a closed set: a label never carries caller-chosen text,
# so callers can neither blow up the series count nor smuggle data into /metrics.
OTHER = "other"
_LABELLED_PREFIXES = ("/grpc.health.v1.",)


@functools.lru_cache(maxsize=1024)
def grpc_method_label(method: str) -> str:
    """The method as a label if the contracts (or gRPC health) define it, else ``other``."""
    from services.runtime.protos import find_method  # the descriptor pool, loaded lazily

    if method.startswith(_LABELLED_PREFIXES) or find_method(method) is not None:
        return method
    return OTHER


@dataclass
class ServiceMetrics:
    service: str
    registry: CollectorRegistry = field(default_factory=lambda: CollectorRegistry(auto_describe=True))

    def __post_init__(self) -> None:
        prefix = f"awareness_{self.service}"
        self.requests = self.counter(
            "grpc_server_requests_total", "RPCs handled, by method and gRPC status code", ["method", "code"]
        )
        self.latency = self.histogram(
            "grpc_server_request_duration_seconds", "RPC handling latency, by method", ["method"]
        )
        self.breaker_state = Gauge(
            f"{prefix}_circuit_breaker_state",
            "Circuit breaker state per downstream target (0 closed, 1 half-open, 2 open)",
            ["target"],
            registry=self.registry,
        )
        self.breaker_transitions = self.counter(
            "circuit_breaker_transitions_total", "Circuit breaker state changes", ["target", "state"]
        )
        self.client_calls = self.counter(
            "grpc_client_calls_total",
            "Outgoing RPCs by target, method and code",
            ["target", "method", "code"],
        )
        self.client_retries = self.counter(
            "grpc_client_retries_total",
            "Retried outgoing RPCs (idempotent methods only)",
            ["target", "method"],
        )
        self.health = Gauge(
            f"{prefix}_health_serving", "1 when the service reports SERVING", registry=self.registry
        )

    def counter(self, name: str, documentation: str, labels: Sequence[str] = ()) -> Counter:
        return Counter(
            f"awareness_{self.service}_{name}", documentation, list(labels), registry=self.registry
        )

    def gauge(self, name: str, documentation: str, labels: Sequence[str] = ()) -> Gauge:
        return Gauge(f"awareness_{self.service}_{name}", documentation, list(labels), registry=self.registry)

    def histogram(
        self,
        name: str,
        documentation: str,
        labels: Sequence[str] = (),
        buckets: Sequence[float] = LATENCY_BUCKETS,
    ) -> Histogram:
        return Histogram(
            f"awareness_{self.service}_{name}",
            documentation,
            list(labels),
            buckets=list(buckets),
            registry=self.registry,
        )

    def serve(self, *, host: str, port: int) -> Any:
        """Start the /metrics HTTP endpoint (port 0 disables it)."""
        if port <= 0:
            return None
        return start_http_server(port, addr=host, registry=self.registry)
