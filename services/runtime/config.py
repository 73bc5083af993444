"""Typed settings, read once from environment variables in each process's ``main``.

Every variable has an embedded default, so ``awareness up`` needs no configuration:
SQLite files and development keys under ``./var``, services on 127.0.0.1.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Final, Literal, TypeVar

from services.runtime.identity import MtlsFiles

SERVICES: Final = ("ingest", "policy", "scoring", "signing", "gdpr", "analytics")
ALL_PROCESSES: Final = (*SERVICES, "gateway")

# The gRPC service each process serves; its health status is the readiness signal.
SERVICE_NAMES: Final[Mapping[str, str]] = {
    "ingest": "awareness.ingest.v1.IngestService",
    "policy": "awareness.policy.v1.PolicyService",
    "scoring": "awareness.scoring.v1.ScoringService",
    "signing": "awareness.signing.v1.SigningService",
    "gdpr": "awareness.gdpr.v1.GdprService",
    "analytics": "awareness.analytics.v1.AnalyticsService",
}

# Embedded default ports; in Kubernetes every pod uses its own IP, so these stay fixed there too.
DEFAULT_GRPC_PORTS: Final[Mapping[str, int]] = {
    "ingest": 50051,
    "policy": 50052,
    "scoring": 50053,
    "signing": 50054,
    "gdpr": 50055,
    "analytics": 50056,
}
DEFAULT_METRICS_PORTS: Final[Mapping[str, int]] = {
    "ingest": 9401,
    "policy": 9402,
    "scoring": 9403,
    "signing": 9404,
    "gdpr": 9405,
    "analytics": 9406,
}
DEFAULT_GATEWAY_PORT: Final = 8080
# The gateway's /metrics and /health/dependencies: a port of their own, never routed by the ingress.
DEFAULT_GATEWAY_ADMIN_PORT: Final = 9400
GATEWAY_ADMIN_PORT_VAR: Final = "AWARENESS_GATEWAY_ADMIN_PORT"
DEFAULT_GATEWAY_GRPC_PORT: Final = 8081
GATEWAY_GRPC_PORT_VAR: Final = "AWARENESS_GATEWAY_GRPC_PORT"

# Worker processes: local replicas of a service on one machine (docs/architecture.md, "Workers").
WORKER_SERVICES: Final = ("gateway", "ingest")
# One process per service: on two busy cores a second worker cost throughput (docs/benchmarks.md).
DEFAULT_WORKERS: Final = 1
# Set by the supervisor in each worker's environment (0..N-1); a process without it is no worker.
WORKER_INDEX_VAR: Final = "AWARENESS_WORKER_INDEX"
# A worker's own ports (metrics, the gateway's admin port) are the base + this many times its index.
WORKER_PORT_STRIDE: Final = 100

# The longest deadline any caller in the suite sets (the retraining job's TrainModel call, 1800 s):
# a connection that reaches its maximum age must not cut a call that is still within its deadline.
DEFAULT_MAX_CONNECTION_AGE_GRACE_SECONDS: Final = 1800.0

TracesExporter = Literal["none", "console", "otlp", "memory"]
EventLoop = Literal["uvloop", "asyncio"]


class ConfigError(ValueError):
    """A setting has a value that cannot be used."""


ARCHIVE_DIR_VAR = "AWARENESS_ARCHIVE_DIR"


def archive_dir(env: Mapping[str, str]) -> Path | None:
    """Where ingest archives the log and gdpr its erasure tombstones (docs/disaster-recovery.md);
    None when unset. ``awareness up`` sets it to ``<data dir>/archive``; the chart to its backup volume."""
    value = env.get(ARCHIVE_DIR_VAR, "").strip()
    return Path(value) if value else None


def env_str(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name, "").strip()
    return value or default


_Number = TypeVar("_Number", int, float)


def env_int(env: Mapping[str, str], name: str, default: int, *, minimum: int = 0) -> int:
    return _env_number(env, name, default, minimum=minimum, parse=int, expected="an integer")


def env_float(env: Mapping[str, str], name: str, default: float, *, minimum: float = 0.0) -> float:
    return _env_number(env, name, default, minimum=minimum, parse=float, expected="a number")


def _env_number(
    env: Mapping[str, str],
    name: str,
    default: _Number,
    *,
    minimum: _Number,
    parse: Callable[[str], _Number],
    expected: str,
) -> _Number:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = parse(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be {expected}, got {raw!r}") from exc
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    return value


def env_bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name} must be a boolean, got {raw!r}")


def workers_var(service: str) -> str:
    return f"AWARENESS_{service.upper()}_WORKERS"


def parse_workers(env: Mapping[str, str], service: str) -> int:
    """``AWARENESS_<SERVICE>_WORKERS``: a positive integer, or ``auto`` (one per CPU); 1 for a service
    that has no workers."""
    if service not in WORKER_SERVICES:
        return 1
    name = workers_var(service)
    raw = env.get(name, "").strip().lower()
    if raw == "auto":
        return os.cpu_count() or 1
    try:
        return env_int(env, name, DEFAULT_WORKERS, minimum=1)
    except ConfigError as exc:
        raise ConfigError(f"{name} must be a positive integer or auto, got {raw!r}") from exc


def parse_worker_index(env: Mapping[str, str], workers: int) -> int | None:
    """This worker's index, from the supervisor; None for a process that is no worker."""
    if not env.get(WORKER_INDEX_VAR, "").strip():
        return None
    index = env_int(env, WORKER_INDEX_VAR, 0)
    if index >= workers:
        raise ConfigError(f"{WORKER_INDEX_VAR} must be between 0 and {workers - 1}, got {index}")
    return index


def worker_port(base: int, worker_index: int | None) -> int:
    """A port of one worker's own: worker i listens on base + WORKER_PORT_STRIDE * i (0 stays 0: none)."""
    if base == 0 or not worker_index:
        return base
    port = base + WORKER_PORT_STRIDE * worker_index
    if port > 65535:
        raise ConfigError(
            f"worker {worker_index}'s port {base} + {WORKER_PORT_STRIDE} * {worker_index} > 65535"
        )
    return port


def read_secret(
    env: Mapping[str, str], name: str, *, default_file: Path | None = None, min_bytes: int = 16
) -> bytes | None:
    """A secret from ``NAME`` (hex or text) or ``NAME_FILE`` (a mounted Kubernetes Secret)."""
    path = env.get(f"{name}_FILE", "").strip()
    if path:
        value = Path(path).read_bytes().strip()
    elif env.get(name, "").strip():
        value = env[name].strip().encode()
    elif default_file is not None and default_file.exists():
        value = default_file.read_bytes().strip()
    else:
        return None
    if len(value) < min_bytes:
        raise ConfigError(f"{name} must hold at least {min_bytes} bytes")
    return value


ENVIRONMENT_VAR: Final = "AWARENESS_ENVIRONMENT"
# AWARENESS_ENVIRONMENT values (the chart sets "kubernetes") under which no process generates a secret.
MANAGED_ENVIRONMENTS: Final = frozenset({"kubernetes", "production"})


class MissingSecretError(ConfigError):
    """A secret that must come from the platform (a Kubernetes Secret) is not configured."""


def in_kubernetes(env: Mapping[str, str]) -> bool:
    """True in a pod (the kubelet sets KUBERNETES_SERVICE_HOST) or when the chart says so explicitly."""
    if env.get("KUBERNETES_SERVICE_HOST", "").strip():
        return True
    return env.get(ENVIRONMENT_VAR, "").strip().lower() in MANAGED_ENVIRONMENTS


def refuse_generated_secret(env: Mapping[str, str], what: str) -> None:
    """Raise in Kubernetes, where a generated secret would differ on every replica and die with the pod."""
    if in_kubernetes(env):
        raise MissingSecretError(
            f"{what} is not configured; in Kubernetes it must come from a Secret and is never generated"
        )


def load_secret(
    env: Mapping[str, str], name: str, *, dev_file: Path, min_bytes: int = 16, nbytes: int = 32
) -> bytes:
    """``NAME`` / ``NAME_FILE``; else, outside Kubernetes only, the dev file (created on first run)."""
    value = read_secret(env, name, min_bytes=min_bytes)
    if value is not None:
        return value
    refuse_generated_secret(env, f"{name} (or {name}_FILE)")
    return ensure_dev_secret(dev_file, nbytes=nbytes)


MTLS_DIR_VAR: Final = "AWARENESS_MTLS_DIR"
MTLS_FILE_VARS: Final = ("AWARENESS_MTLS_CERT_FILE", "AWARENESS_MTLS_KEY_FILE", "AWARENESS_MTLS_CA_FILE")
SERVICE_SECRET_VAR: Final = "AWARENESS_SERVICE_SECRET"  # noqa: S105 - a variable name


def _mtls_files(env: Mapping[str, str], data_dir: Path, service: str) -> MtlsFiles | None:
    """The configured certificate files; else, outside Kubernetes, the development layout."""
    cert, key, ca = (env.get(name, "").strip() for name in MTLS_FILE_VARS)
    if cert or key or ca:
        if not (cert and key and ca):
            raise ConfigError(f"set all of {', '.join(MTLS_FILE_VARS)}, or none")
        return MtlsFiles(Path(cert), Path(key), Path(ca))
    if in_kubernetes(env):
        return None
    return MtlsFiles.in_directory(Path(env_str(env, MTLS_DIR_VAR, str(data_dir / "mtls"))), service)


def _dev_service_secret_file(data_dir: Path, service: str) -> Path:
    return data_dir / "service-secrets" / service


def with_identity(settings: Settings) -> Settings:
    """Settings whose mTLS identity and service secret exist: configured, or, outside Kubernetes,
    made for development on first use (``awareness up`` makes them all before starting anything)."""
    mtls = settings.mtls
    if mtls is None or not mtls.exist():
        what = f"the mTLS certificate of {settings.service} ({', '.join(MTLS_FILE_VARS)})"
        refuse_generated_secret(settings.env, what)
        if mtls is None or any(settings.env.get(name, "").strip() for name in MTLS_FILE_VARS):
            raise MissingSecretError(f"{what}: the files do not exist")
        from services.runtime.devtls import ensure_identity_certificate

        ensure_identity_certificate(mtls.cert_file.parent, settings.service)
    if settings.service_secret:
        return settings
    refuse_generated_secret(settings.env, f"{SERVICE_SECRET_VAR} (or {SERVICE_SECRET_VAR}_FILE)")
    secret = ensure_dev_secret(_dev_service_secret_file(settings.data_dir, settings.service))
    return replace(settings, service_secret=secret)


def ensure_dev_secret(path: Path, *, nbytes: int = 32) -> bytes:
    """Create a development secret file (0600) on first run; reuse it afterwards."""
    if path.exists():
        return path.read_bytes().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_hex(nbytes).encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(value)
    return value


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Settings shared by every service process."""

    service: str
    host: str = "127.0.0.1"
    grpc_port: int = 0
    # A plaintext port serving only grpc.health.v1, for kubelet's probes (0 = none).
    health_port: int = 0
    metrics_port: int = 0
    data_dir: Path = Path("var")
    database_url: str = ""
    redis_url: str | None = None
    targets: Mapping[str, str] = field(default_factory=dict)
    log_level: str = "INFO"
    traces_exporter: TracesExporter = "none"
    # The event loop of the process: uvloop (libuv) unless AWARENESS_EVENT_LOOP=asyncio.
    event_loop: EventLoop = "uvloop"
    shutdown_grace_seconds: float = 10.0
    call_timeout_seconds: float = 5.0
    breaker_fail_max: int = 5
    breaker_reset_seconds: float = 15.0
    retry_attempts: int = 3
    health_probe_seconds: float = 2.0
    # 0 = connections live forever (one machine). In Kubernetes a finite age makes clients
    # reconnect and re-resolve DNS, so replicas added by the autoscaler get calls too.
    grpc_max_connection_age_seconds: float = 0.0
    # Calls in flight when the age is reached may finish within this grace.
    grpc_max_connection_age_grace_seconds: float = DEFAULT_MAX_CONNECTION_AGE_GRACE_SECONDS
    # This process's mTLS identity (services.runtime.identity); None only in Kubernetes when unset.
    mtls: MtlsFiles | None = None
    # Known only to the replicas of this service: the key of its page tokens (and the gateway's
    # API-key pepper). No other service holds it.
    service_secret: bytes = b""
    require_services: bool = False
    # Worker processes of this service on this machine (gateway and ingest; 1 elsewhere), and which
    # of them this process is (None: not a worker, e.g. the only process, or the supervisor).
    workers: int = DEFAULT_WORKERS
    worker_index: int | None = None
    env: Mapping[str, str] = field(default_factory=dict, repr=False)

    @property
    def is_postgres(self) -> bool:
        return self.database_url.startswith("postgresql")

    @property
    def identity(self) -> MtlsFiles:
        """The mTLS identity ``with_identity`` made sure of."""
        if self.mtls is None or not self.mtls.exist():
            raise MissingSecretError(f"{self.service} has no mTLS identity; load it with with_identity")
        return self.mtls

    def target(self, service: str) -> str:
        return self.targets[service]


def default_database_url(data_dir: Path, service: str) -> str:
    return f"sqlite:///{(data_dir / f'{service}.db').resolve()}"


def _checked_workers(env: Mapping[str, str], service: str, database_url: str) -> int:
    """The worker count, refused above 1 on SQLite: several processes must not share one SQLite log."""
    workers = parse_workers(env, service)
    if workers > 1 and not database_url.startswith("postgresql"):
        raise ConfigError(
            f"{workers_var(service)}={workers} needs PostgreSQL (DATABASE_URL or "
            f"AWARENESS_{service.upper()}_DATABASE_URL): several processes must not share one SQLite database"
        )
    return workers


def load_settings(service: str, env: Mapping[str, str] | None = None) -> Settings:
    """Read settings once; call from ``main``, never at import time."""
    source: Mapping[str, str] = dict(os.environ if env is None else env)
    if service not in ALL_PROCESSES and not service.startswith("test"):
        raise ConfigError(f"unknown service {service!r}; expected one of {', '.join(ALL_PROCESSES)}")
    upper = service.upper()
    data_dir = Path(env_str(source, "AWARENESS_DATA_DIR", "var"))
    database_url = env_str(
        source,
        f"AWARENESS_{upper}_DATABASE_URL",
        env_str(source, "DATABASE_URL", default_database_url(data_dir, service)),
    )
    targets = {
        name: env_str(source, f"AWARENESS_{name.upper()}_TARGET", f"127.0.0.1:{port}")
        for name, port in DEFAULT_GRPC_PORTS.items()
    }
    exporter = env_str(source, "AWARENESS_TRACES_EXPORTER", "none").lower()
    if exporter not in ("none", "console", "otlp", "memory"):
        raise ConfigError(f"AWARENESS_TRACES_EXPORTER must be none, console or otlp, got {exporter!r}")
    event_loop = env_str(source, "AWARENESS_EVENT_LOOP", "uvloop").lower()
    if event_loop not in ("uvloop", "asyncio"):
        raise ConfigError(f"AWARENESS_EVENT_LOOP must be uvloop or asyncio, got {event_loop!r}")
    # In Kubernetes a file under the data directory could only be one a pod generated: ignore it.
    dev_secret = None if in_kubernetes(source) else _dev_service_secret_file(data_dir, service)
    secret = read_secret(source, SERVICE_SECRET_VAR, default_file=dev_secret)
    if service == "gateway":
        default_port = env_int(source, "AWARENESS_GATEWAY_PORT", DEFAULT_GATEWAY_PORT)
        default_metrics = 0
    else:
        default_port = DEFAULT_GRPC_PORTS.get(service, 0)
        default_metrics = DEFAULT_METRICS_PORTS.get(service, 0)
    workers = _checked_workers(source, service, database_url)
    worker_index = parse_worker_index(source, workers) if service in WORKER_SERVICES else None
    return Settings(
        service=service,
        host=env_str(source, "AWARENESS_HOST", "127.0.0.1"),
        grpc_port=env_int(source, "AWARENESS_GRPC_PORT", default_port),
        health_port=env_int(source, "AWARENESS_HEALTH_PORT", 0),
        metrics_port=worker_port(env_int(source, "AWARENESS_METRICS_PORT", default_metrics), worker_index),
        data_dir=data_dir,
        database_url=database_url,
        redis_url=source.get("REDIS_URL") or None,
        targets=targets,
        log_level=env_str(source, "AWARENESS_LOG_LEVEL", "INFO").upper(),
        traces_exporter=exporter,  # type: ignore[arg-type]
        event_loop=event_loop,  # type: ignore[arg-type]
        shutdown_grace_seconds=env_float(source, "AWARENESS_SHUTDOWN_GRACE_SECONDS", 10.0),
        call_timeout_seconds=env_float(source, "AWARENESS_CALL_TIMEOUT_SECONDS", 5.0, minimum=0.01),
        breaker_fail_max=env_int(source, "AWARENESS_BREAKER_FAIL_MAX", 5, minimum=1),
        breaker_reset_seconds=env_float(source, "AWARENESS_BREAKER_RESET_SECONDS", 15.0, minimum=0.01),
        retry_attempts=env_int(source, "AWARENESS_RETRY_ATTEMPTS", 3, minimum=1),
        health_probe_seconds=env_float(source, "AWARENESS_HEALTH_PROBE_SECONDS", 2.0, minimum=0.05),
        grpc_max_connection_age_seconds=env_float(source, "AWARENESS_GRPC_MAX_CONNECTION_AGE_SECONDS", 0.0),
        grpc_max_connection_age_grace_seconds=env_float(
            source,
            "AWARENESS_GRPC_MAX_CONNECTION_AGE_GRACE_SECONDS",
            DEFAULT_MAX_CONNECTION_AGE_GRACE_SECONDS,
        ),
        mtls=_mtls_files(source, data_dir, service),
        service_secret=secret or b"",
        require_services=env_bool(source, "AWARENESS_REQUIRE_SERVICES", False),
        workers=workers,
        worker_index=worker_index,
        env=source,
    )
