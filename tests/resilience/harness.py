"""Run the real suite as separate processes, one pid per service, so a test can SIGKILL and
restart any one of them; put a TCP proxy in front of PostgreSQL (or Redis) so "the database
goes down" never touches the machine's own server.

Used by the fault matrix, the metrics test and ``make bench`` (bench/suite.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.loadgen import LoadConfig, LoadGenerator, LoadResult, Outcome
from services.launcher import START_ORDER, grpc_serving, http_ok, prepare_data_dir
from services.runtime.config import SERVICE_NAMES, SERVICES, load_settings
from services.runtime.identity import MtlsFiles, channel_options
from tests.support.resources import free_port
from tests.support.suite import outside_environment, run_module

# Breakers cycle in seconds, calls fail fast, background jobs run often: a fault shows and
# heals within a test's time budget.
FAST_SUITE_ENV: Mapping[str, str] = {
    "AWARENESS_BREAKER_RESET_SECONDS": "2",
    "AWARENESS_BREAKER_FAIL_MAX": "5",
    "AWARENESS_CALL_TIMEOUT_SECONDS": "5",
    "AWARENESS_HEALTH_PROBE_SECONDS": "0.5",
    "AWARENESS_SHUTDOWN_GRACE_SECONDS": "2",
    "AWARENESS_INGEST_INTEGRATE_INTERVAL_MS": "50",
    "AWARENESS_INGEST_CHECKPOINT_INTERVAL_MS": "300",
    "AWARENESS_INGEST_RECONCILE_INTERVAL_SECONDS": "0.5",
    "AWARENESS_INGEST_RECONCILE_SETTLE_SECONDS": "0",
    "AWARENESS_INGEST_KEY_CACHE_SECONDS": "60",
    # Load tests must measure the suite, not the gateway's per-key limit.
    "AWARENESS_GATEWAY_RATE_PRINCIPAL_PER_MIN": "10000000",
    "AWARENESS_GATEWAY_RATE_IP_PER_MIN": "10000000",
    "AWARENESS_GATEWAY_RATE_GLOBAL_PER_MIN": "10000000",
    "AWARENESS_LOG_LEVEL": "INFO",
    "PYTHONUNBUFFERED": "1",
}


def wait_until(probe: Callable[[], Any], *, timeout: float, interval: float = 0.2, what: str) -> Any:
    """Poll ``probe`` until it returns something truthy; AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


# --- a TCP proxy that can "stop the database" --------------------------------------------


class TcpProxy:
    """Forwards 127.0.0.1:<port> to an upstream; ``down()`` refuses and cuts every connection.

    It runs its own event loop in a daemon thread so synchronous tests can drive it.
    """

    def __init__(self, *, upstream_host: str, upstream_port: int, port: int | None = None) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.port = port or free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.connections_accepted = 0

    def _run(self, coroutine: Any, *, timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def start(self) -> TcpProxy:
        self._thread.start()
        self.up()
        return self

    @property
    def is_up(self) -> bool:
        return self._server is not None

    def up(self) -> None:
        self._run(self._listen())

    def down(self) -> None:
        self._run(self._close())

    def close(self) -> None:
        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                self.down()
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)

    async def _listen(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(
                self._handle, host="127.0.0.1", port=self.port, reuse_address=True
            )

    async def _close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        if server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), timeout=2)

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.connections_accepted += 1
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                self.upstream_host, self.upstream_port
            )
        except OSError:
            client_writer.transport.abort()
            return
        pair = {client_writer, upstream_writer}
        self._writers |= pair
        try:
            await asyncio.gather(
                self._pipe(client_reader, upstream_writer), self._pipe(upstream_reader, client_writer)
            )
        finally:
            for writer in pair:
                writer.transport.abort()
            self._writers -= pair

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while chunk := await reader.read(65536):
                writer.write(chunk)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.transport.abort()


class PrivateRedis:
    """A throw-away ``redis-server`` on a free port (no persistence), stopped by pid."""

    def __init__(self, *, directory: Path) -> None:
        self.port = free_port()
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None

    @staticmethod
    def available() -> bool:
        return shutil.which("redis-server") is not None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary is not None
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            cwd=self.directory,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self._answers, timeout=10, interval=0.05, what="redis-server to answer")

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None


# --- the suite ----------------------------------------------------------------------------


@dataclass
class ProcessSuite:
    """Every service and the gateway as separate ``awareness serve`` processes on free ports."""

    data_dir: Path
    database_url: str | None = None
    redis_url: str | None = None
    extra_env: Mapping[str, str] = field(default_factory=dict)
    # Timing settings under the extra ones; the bench passes only the rate limits (defaults otherwise).
    tuning: Mapping[str, str] = field(default_factory=lambda: dict(FAST_SUITE_ENV))
    # Settings for one process only, e.g. {"ingest": {"AWARENESS_BREAKER_FAIL_MAX": "2"}}.
    service_env: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    grpc_ports: dict[str, int] = field(default_factory=dict)
    metrics_ports: dict[str, int] = field(default_factory=dict)
    gateway_port: int = 0
    gateway_admin_port: int = 0
    gateway_grpc_port: int = 0
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.grpc_ports = self.grpc_ports or {s: free_port() for s in SERVICES}
        self.metrics_ports = self.metrics_ports or {s: free_port() for s in SERVICES}
        self.gateway_port = self.gateway_port or free_port()
        self.gateway_admin_port = self.gateway_admin_port or free_port()
        self.gateway_grpc_port = self.gateway_grpc_port or free_port()
        self.data_dir = self.data_dir.resolve()

    # environment ------------------------------------------------------------------------

    def base_env(self) -> dict[str, str]:
        env = {**outside_environment(), **self.tuning, **self.extra_env}
        env["AWARENESS_DATA_DIR"] = str(self.data_dir)
        env["AWARENESS_GATEWAY_PORT"] = str(self.gateway_port)
        env["AWARENESS_GATEWAY_ADMIN_PORT"] = str(self.gateway_admin_port)
        env["AWARENESS_GATEWAY_GRPC_PORT"] = str(self.gateway_grpc_port)
        for service in SERVICES:
            env[f"AWARENESS_{service.upper()}_TARGET"] = f"127.0.0.1:{self.grpc_ports[service]}"
            env[f"AWARENESS_{service.upper()}_METRICS_PORT"] = str(self.metrics_ports[service])
        if self.database_url:
            env["DATABASE_URL"] = self.database_url
        if self.redis_url:
            env["REDIS_URL"] = self.redis_url
        return env

    def process_env(self, service: str) -> dict[str, str]:
        """As services.launcher.Suite.process_env: each process learns its own ports."""
        env = {**self.base_env(), **self.service_env.get(service, {})}
        if service == "gateway":
            env["AWARENESS_GRPC_PORT"] = str(self.gateway_port)
        else:
            env["AWARENESS_GRPC_PORT"] = str(self.grpc_ports[service])
            env["AWARENESS_METRICS_PORT"] = str(self.metrics_ports[service])
        return env

    # processes --------------------------------------------------------------------------

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    def address(self, service: str) -> str:
        return f"127.0.0.1:{self.grpc_ports[service]}"

    def metrics_url(self, service: str) -> str:
        if service == "gateway":
            return f"http://127.0.0.1:{self.gateway_admin_port}/metrics"  # the admin port, not the API's
        return f"http://127.0.0.1:{self.metrics_ports[service]}/metrics"

    def log_path(self, service: str) -> Path:
        return self.data_dir / "logs" / f"{service}.log"

    def prepare(self) -> None:
        prepare_data_dir(self.data_dir)

    def start(self, service: str) -> None:
        existing = self.processes.get(service)
        if existing is not None and existing.poll() is None:
            raise RuntimeError(f"{service} is already running (pid {existing.pid})")
        self.log_path(service).parent.mkdir(parents=True, exist_ok=True)
        with self.log_path(service).open("ab") as log_file:
            self.processes[service] = subprocess.Popen(
                [sys.executable, "-m", "services.cli", "serve", service],
                env=self.process_env(service),
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )

    def healthy(self, service: str) -> bool:
        if service == "gateway":
            return http_ok(f"{self.gateway_url}/health/ready")
        return grpc_serving(
            self.address(service), mtls=self.identity(service), server=service, service=SERVICE_NAMES[service]
        )

    def identity(self, service: str) -> MtlsFiles:
        """As services.launcher.Suite.identity: the service's own certificate, issued under the data
        directory by ``prepare``; the harness runs beside it and asks as the service itself."""
        return load_settings(service, self.process_env(service)).identity

    def serving_status(self, service: str) -> str:
        """SERVING / NOT_SERVING / UNREACHABLE for the full service name (what the probes ask)."""
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        try:
            with grpc.secure_channel(
                self.address(service),
                self.identity(service).channel_credentials(),
                options=channel_options(service),
            ) as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=SERVICE_NAMES[service]), timeout=1.0
                )
        except grpc.RpcError:
            return "UNREACHABLE"
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))

    def wait_healthy(self, services: tuple[str, ...] = START_ORDER, *, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        pending = list(services)
        while pending:
            pending = [s for s in pending if not self.healthy(s)]
            dead = [s for s in services if s in self.processes and self.processes[s].poll() is not None]
            if dead:
                raise AssertionError(f"{', '.join(dead)} exited during start-up\n{self.logs(dead)}")
            if pending and time.monotonic() > deadline:
                raise AssertionError(f"not healthy after {timeout:.0f}s: {', '.join(pending)}\n{self.logs()}")
            if pending:
                time.sleep(0.3)

    def start_all(self, *, timeout: float = 120.0) -> None:
        self.prepare()
        for service in START_ORDER:
            self.start(service)
        self.wait_healthy(timeout=timeout)

    def wait_for_champion_model(self, *, timeout: float) -> bool:
        """Scoring trains and promotes a default model on its first start; wait until it serves one."""

        def serving_champion() -> bool:
            try:
                samples = parse_metrics(self.scrape("scoring"))
            except OSError:
                return False
            return metric_value(samples, "awareness_scoring_model_info", role="champion") >= 1

        try:
            wait_until(serving_champion, timeout=timeout, interval=1.0, what="a champion scoring model")
        except AssertionError:
            return False
        return True

    def keep_logs(self, destination: Path) -> None:
        """Copy the processes' logs (e.g. to a CI artifact directory)."""
        source = self.data_dir / "logs"
        if source.exists():
            shutil.copytree(source, destination, dirs_exist_ok=True)

    def kill(self, service: str) -> None:
        """SIGKILL: no drain, no goodbye; what a crash or an OOM kill looks like."""
        process = self.processes.get(service)
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)

    def restart(self, service: str, *, timeout: float = 60.0) -> None:
        self.kill(service)
        self.start(service)
        self.wait_healthy((service,), timeout=timeout)

    def stop_all(self, *, grace: float = 10.0) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for process in self.processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)

    def logs(self, services: list[str] | tuple[str, ...] | None = None, *, tail: int = 3000) -> str:
        out = []
        for service in services or START_ORDER:
            path = self.log_path(service)
            if path.exists():
                out.append(f"--- {service}.log\n{path.read_text(errors='replace')[-tail:]}")
        return "\n".join(out)

    # tools ------------------------------------------------------------------------------

    def cli(self, *args: str, timeout: float = 60.0, env: Mapping[str, str] | None = None) -> str:
        """Run ``awareness <args>`` against this suite's store; stdout, or AssertionError."""
        completed = run_module("services.cli", *args, env={**self.base_env(), **(env or {})}, timeout=timeout)
        if completed.returncode != 0:
            command = " ".join(args)
            raise AssertionError(
                f"awareness {command} exited {completed.returncode}\n{completed.stdout}\n{completed.stderr}"
            )
        return completed.stdout

    def create_api_key(self, *, name: str = "loadgen", roles: tuple[str, ...] = ("admin",)) -> str:
        role_args = [part for role in roles for part in ("--role", role)]
        stdout = self.cli("keys", "create", "--name", name, *role_args)
        return stdout.strip().splitlines()[0].strip()

    def scrape(self, service: str, *, timeout: float = 3.0) -> str:
        with urllib.request.urlopen(self.metrics_url(service), timeout=timeout) as response:
            body: bytes = response.read()
            return body.decode()


class BackgroundLoad:
    """The open-loop load generator in a thread, running until :meth:`stop` (or its bound)."""

    def __init__(self, config: LoadConfig, *, event_factory: Callable[[int], dict[str, Any]] | None = None):
        self._generator = LoadGenerator(config, event_factory=event_factory)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="load", daemon=True)
        self._error: BaseException | None = None

    def _run(self) -> None:
        try:
            asyncio.run(self._generator.run(should_stop=self._stop.is_set))
        except BaseException as exc:  # surfaced by stop()
            self._error = exc

    @property
    def outcomes(self) -> list[Outcome]:
        """Outcomes so far (the list only grows; safe to read from another thread)."""
        return list(self._generator.result.outcomes)

    def start(self) -> BackgroundLoad:
        self._thread.start()
        return self

    def stop(self, *, timeout: float = 60.0) -> LoadResult:
        self._stop.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError(f"the load generator did not drain within {timeout:.0f}s")
        if self._error is not None:
            raise self._error
        return self._generator.result


# --- HTTP helpers -------------------------------------------------------------------------


def http_json(
    method: str,
    url: str,
    *,
    api_key: str | None = None,
    body: Any = None,
    timeout: float = 10.0,
) -> tuple[int, Any]:
    """(status, parsed JSON body) of one request; error statuses are returned, not raised."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
            status = int(response.status)
    except urllib.error.HTTPError as error:
        raw = error.read()
        status = int(error.code)
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode(errors="replace")


def list_all_events(
    gateway_url: str, *, api_key: str, page_size: int = 100, attempts: int = 5
) -> list[dict[str, Any]]:
    """Every event through GET /v1/events, following AIP-158 page tokens.

    A page that answers 503/504 (a busy machine) is asked again, up to ``attempts`` times.
    """
    events: list[dict[str, Any]] = []
    token = ""
    for _ in range(10_000):
        query = f"pageSize={page_size}" + (f"&pageToken={urllib.parse.quote(token)}" if token else "")
        for attempt in range(attempts):
            status, body = http_json("GET", f"{gateway_url}/v1/events?{query}", api_key=api_key, timeout=30)
            if status not in (503, 504) or attempt + 1 == attempts:
                break
            time.sleep(1.0)
        if status != 200:
            raise AssertionError(f"GET /v1/events answered {status}: {body}")
        events.extend(body.get("events", []))
        token = body.get("nextPageToken", "")
        if not token:
            return events
    raise AssertionError("GET /v1/events did not finish paging")


def parse_metrics(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Samples by name: {name: [(labels, value), ...]} from the Prometheus text format."""
    from prometheus_client.parser import text_string_to_metric_families

    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), float(sample.value)))
    return samples


def metric_value(
    samples: Mapping[str, list[tuple[dict[str, str], float]]], name: str, **labels: str
) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` (0 when absent)."""
    return sum(
        value
        for sample_labels, value in samples.get(name, [])
        if all(sample_labels.get(k) == v for k, v in labels.items())
    )
