"""``awareness up``: every service and the gateway as separate processes on one machine."""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.gateway.config import DOOR_TLS_CERT_VAR, DOOR_TLS_DIR
from services.runtime.config import (
    ALL_PROCESSES,
    ARCHIVE_DIR_VAR,
    DEFAULT_GATEWAY_ADMIN_PORT,
    DEFAULT_GATEWAY_GRPC_PORT,
    DEFAULT_GATEWAY_PORT,
    DEFAULT_GRPC_PORTS,
    DEFAULT_METRICS_PORTS,
    GATEWAY_ADMIN_PORT_VAR,
    GATEWAY_GRPC_PORT_VAR,
    SERVICE_NAMES,
    WORKER_PORT_STRIDE,
    WORKER_SERVICES,
    load_settings,
    parse_workers,
    with_identity,
    workers_var,
)
from services.runtime.identity import MtlsFiles, channel_options

# Started in dependency order: nothing calls a service that is started after it.
START_ORDER = ("signing", "gdpr", "policy", "scoring", "analytics", "ingest", "gateway")


def grpc_serving(
    address: str, *, mtls: MtlsFiles, server: str, service: str = "", timeout: float = 1.0
) -> bool:
    """Whether ``server`` at ``address`` reports ``service`` SERVING, asked over mTLS as ``mtls``."""
    try:
        with grpc.secure_channel(
            address, mtls.channel_credentials(), options=channel_options(server)
        ) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
            return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
    except grpc.RpcError:
        return False


def http_ok(url: str, *, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback URL we built
            return bool(response.status == 200)
    except OSError:
        return False


def prepare_data_dir(data_dir: Path) -> None:
    """First-run set-up: development secrets, mTLS identities and PKI, generated locally, never committed."""
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "logs").mkdir(exist_ok=True)
    for service in ALL_PROCESSES:
        with_identity(load_settings(service, {**os.environ, "AWARENESS_DATA_DIR": str(data_dir)}))
        with contextlib.suppress(ModuleNotFoundError):
            module = importlib.import_module(f"services.{service}.bootstrap")
            module.bootstrap_dev(data_dir)


class Suite:
    """The child processes of one ``awareness up``; stops only the pids it started."""

    def __init__(self, *, data_dir: Path, env: Mapping[str, str], gateway_port: int) -> None:
        self.data_dir = data_dir
        self.env = dict(env)
        self.gateway_port = gateway_port
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def address(self, service: str) -> str:
        return self.env.get(f"AWARENESS_{service.upper()}_TARGET", f"127.0.0.1:{DEFAULT_GRPC_PORTS[service]}")

    def process_env(self, service: str) -> dict[str, str]:
        env = dict(self.env)
        upper = service.upper()
        if service == "gateway":
            env["AWARENESS_GRPC_PORT"] = str(self.gateway_port)
        else:
            env["AWARENESS_GRPC_PORT"] = self.address(service).rsplit(":", 1)[1]
            env["AWARENESS_METRICS_PORT"] = env.get(
                f"AWARENESS_{upper}_METRICS_PORT", str(DEFAULT_METRICS_PORTS[service])
            )
        return env

    def start(self, service: str) -> None:
        log_path = self.data_dir / "logs" / f"{service}.log"
        log_file = log_path.open("ab")
        self.processes[service] = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "serve", service],
            env=self.process_env(service),
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        log_file.close()

    def healthy(self, service: str) -> bool:
        if service == "gateway":
            return http_ok(f"http://127.0.0.1:{self.gateway_port}/health/ready")
        return grpc_serving(
            self.address(service), mtls=self.identity(service), server=service, service=SERVICE_NAMES[service]
        )

    def identity(self, service: str) -> MtlsFiles:
        """The service's own certificate: the launcher runs beside it and probes it as itself."""
        return load_settings(service, self.env).identity

    def dead(self) -> list[str]:
        return [name for name, proc in self.processes.items() if proc.poll() is not None]

    def stop(self, *, grace: float = 15.0) -> None:
        for proc in self.processes.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in self.processes.values():
            remaining = max(0.1, deadline - time.monotonic())
            try:
                proc.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


def _raise_interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def run_suite(*, data_dir: str | None, gateway_port: int | None, ready_timeout: float) -> int:
    env = dict(os.environ)
    directory = Path(data_dir or env.get("AWARENESS_DATA_DIR") or "var").resolve()
    env["AWARENESS_DATA_DIR"] = str(directory)
    port = gateway_port or int(env.get("AWARENESS_GATEWAY_PORT") or DEFAULT_GATEWAY_PORT)
    env["AWARENESS_GATEWAY_PORT"] = str(port)
    env.setdefault(ARCHIVE_DIR_VAR, str(directory / "archive"))
    env.setdefault("PYTHONUNBUFFERED", "1")
    prepare_data_dir(directory)
    suite = Suite(data_dir=directory, env=env, gateway_port=port)
    print(f"awareness: starting the suite (data in {directory}, logs in {directory / 'logs'})", flush=True)
    workers = {service: parse_workers(env, service) for service in WORKER_SERVICES}
    for service, count in workers.items():
        if count > 1:
            print(f"awareness: {service} runs {count} worker processes ({workers_var(service)})", flush=True)
    interrupted = False
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        for service in START_ORDER:
            suite.start(service)
        deadline = time.monotonic() + ready_timeout
        pending = list(START_ORDER)
        while pending:
            pending = [s for s in pending if not suite.healthy(s)]
            dead = suite.dead()
            if dead:
                print(
                    f"awareness: {', '.join(dead)} exited during start-up; see {directory / 'logs'}",
                    flush=True,
                )
                return 1
            if time.monotonic() > deadline:
                print(f"awareness: not healthy after {ready_timeout:.0f}s: {', '.join(pending)}", flush=True)
                return 1
            if pending:
                time.sleep(0.3)
        print(f"awareness: all services healthy. Gateway: http://127.0.0.1:{port}", flush=True)
        admin_port = env.get(GATEWAY_ADMIN_PORT_VAR) or DEFAULT_GATEWAY_ADMIN_PORT
        per_worker = f" (worker i: port + {WORKER_PORT_STRIDE} * i)" if workers["gateway"] > 1 else ""
        print(
            f"  OpenAPI: http://127.0.0.1:{port}/openapi.json   "
            f"metrics (admin port): http://127.0.0.1:{admin_port}/metrics{per_worker}",
            flush=True,
        )
        door_port = env.get(GATEWAY_GRPC_PORT_VAR) or DEFAULT_GATEWAY_GRPC_PORT
        if str(door_port) != "0":
            ca = directory / DOOR_TLS_DIR / "ca.crt"
            trust = (
                f"TLS, trust {ca}"
                if ca.exists() and not env.get(DOOR_TLS_CERT_VAR)
                else "see docs/gateway.md"
            )
            print(f"  gRPC door (awareness-client stubs): 127.0.0.1:{door_port} ({trust})", flush=True)
        print("  create an API key: .venv/bin/awareness keys create --name me --role admin", flush=True)
        print("  press Ctrl-C to stop", flush=True)
        while True:
            dead = suite.dead()
            if dead:
                print(f"awareness: {', '.join(dead)} stopped unexpectedly; stopping the suite", flush=True)
                return 1
            time.sleep(0.5)
    except KeyboardInterrupt:
        interrupted = True
        return 0
    finally:
        print("awareness: stopping" + (" (Ctrl-C)" if interrupted else ""), flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            suite.stop()
        print("awareness: stopped", flush=True)
