"""grpc.health.v1 that tells the truth: NOT_SERVING while the service's own store is down."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer

from services.runtime.metrics import ServiceMetrics

log = logging.getLogger("awareness.health")

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class HealthReporter:
    """Probes readiness periodically and publishes it for every service name.

    The overall service ``""`` stays SERVING while the process runs: it is the liveness
    signal, so a database outage marks the pods unready without restarting them.
    """

    def __init__(
        self,
        *,
        service_names: Sequence[str],
        probe: Callable[[], bool],
        interval_seconds: float,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        self.servicer = HealthServicer()
        self._names = tuple(service_names)
        self._probe = probe
        self._interval = interval_seconds
        self._metrics = metrics
        self._serving: bool | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    async def check_once(self) -> bool:
        try:
            healthy = await asyncio.wait_for(
                asyncio.to_thread(self._probe), timeout=max(self._interval, 1.0) * 3
            )
        except Exception:
            healthy = False
        await self._publish(healthy)
        return healthy

    async def _publish(self, healthy: bool) -> None:
        if self._stopping:
            return
        await self.servicer.set("", SERVING)
        if healthy != self._serving:
            log.log(logging.INFO if healthy else logging.ERROR, "health changed", extra={"serving": healthy})
            self._serving = healthy
        for name in self._names:
            await self.servicer.set(name, SERVING if healthy else NOT_SERVING)
        if self._metrics is not None:
            self._metrics.health.set(1 if healthy else 0)

    async def _loop(self) -> None:
        while True:
            await self.check_once()
            await asyncio.sleep(self._interval)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="health-probe")

    async def shutdown(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
        await self.servicer.enter_graceful_shutdown()
