"""Gateway-specific settings, read once from ``Settings.env`` (see docs/gateway.md)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from services.runtime.config import (
    DEFAULT_GATEWAY_ADMIN_PORT,
    DEFAULT_GATEWAY_GRPC_PORT,
    GATEWAY_ADMIN_PORT_VAR,
    GATEWAY_GRPC_PORT_VAR,
    ConfigError,
    Settings,
    env_float,
    env_int,
    env_str,
    in_kubernetes,
    read_secret,
    refuse_generated_secret,
    worker_port,
)

# Methods the contracts do not (yet) model as long-running operations but which run for
# minutes; their HTTP call gets a longer deadline than AWARENESS_CALL_TIMEOUT_SECONDS.
DEFAULT_METHOD_TIMEOUTS = "awareness.scoring.v1.ScoringService/TrainModel=600"
KEY_CACHE_SECONDS_DEFAULT = 5.0
# The promised revocation bound (docs/gateway.md): no replica trusts a cached key longer.
KEY_CACHE_SECONDS_MAX = 5.0
KEY_CACHE_SECONDS_VAR = "AWARENESS_GATEWAY_KEY_CACHE_SECONDS"
GOPHISH_SECRET_FILE = "gophish-webhook-secret"  # noqa: S105 - a file name, not a secret
GOPHISH_SECRET_VAR = "AWARENESS_GOPHISH_SECRET"  # noqa: S105 - a variable name
DOOR_TLS_CERT_VAR = "AWARENESS_GATEWAY_GRPC_TLS_CERT_FILE"
DOOR_TLS_KEY_VAR = "AWARENESS_GATEWAY_GRPC_TLS_KEY_FILE"
# Outside Kubernetes, `awareness up` issues the door's certificate here from the development CA.
DOOR_TLS_DIR = "door-tls"
DOOR_TLS_NAME = "door"


@dataclass(frozen=True, kw_only=True)
class GatewayConfig:
    max_body_bytes: int
    rate_principal_per_min: int
    rate_ip_per_min: int
    rate_global_per_min: int
    rate_key_prefix: str
    redis_timeout_seconds: float
    cors_origins: tuple[str, ...]
    forwarded_allow_ips: str
    jwks_file: str
    jwks_url: str
    jwt_issuer: str
    jwt_audience: str
    jwt_roles_claim: str
    jwt_leeway_seconds: int
    gophish_secret: bytes | None
    keep_alive_seconds: int
    body_timeout_seconds: float
    max_concurrency: int | None
    method_timeouts: dict[str, float]
    key_cache_seconds: float = KEY_CACHE_SECONDS_DEFAULT
    key_cache_entries: int = 10_000
    # /metrics and /health/dependencies listen on this port only (0: not served at all).
    admin_port: int = DEFAULT_GATEWAY_ADMIN_PORT
    rate_auth_failures_per_min: int = 60
    # The gRPC door (0: not served), and its TLS certificate chain and key (PEM files; both or none).
    grpc_port: int = DEFAULT_GATEWAY_GRPC_PORT
    grpc_tls_cert_file: str = ""
    grpc_tls_key_file: str = ""
    # Single appends of one principal sent to ingest together (services/gateway/appends.py): how
    # many of that principal's AppendEvents calls may be in flight at once (0: each request alone).
    append_calls_in_flight: int = 2

    @property
    def jwt_enabled(self) -> bool:
        return bool(self.jwks_file or self.jwks_url)


def load_gateway_config(settings: Settings) -> GatewayConfig:
    env = settings.env
    cors = tuple(
        o.strip() for o in env_str(env, "AWARENESS_GATEWAY_CORS_ORIGINS", "").split(",") if o.strip()
    )
    config = GatewayConfig(
        max_body_bytes=env_int(env, "AWARENESS_GATEWAY_MAX_BODY_BYTES", 1024 * 1024, minimum=1),
        rate_principal_per_min=env_int(env, "AWARENESS_GATEWAY_RATE_PRINCIPAL_PER_MIN", 100),
        rate_ip_per_min=env_int(env, "AWARENESS_GATEWAY_RATE_IP_PER_MIN", 1000),
        rate_global_per_min=env_int(env, "AWARENESS_GATEWAY_RATE_GLOBAL_PER_MIN", 20000),
        rate_key_prefix=env_str(env, "AWARENESS_GATEWAY_RATE_KEY_PREFIX", "awareness:ratelimit"),
        redis_timeout_seconds=env_float(env, "AWARENESS_GATEWAY_REDIS_TIMEOUT_SECONDS", 0.5, minimum=0.01),
        cors_origins=cors,
        forwarded_allow_ips=env_str(env, "AWARENESS_GATEWAY_FORWARDED_ALLOW_IPS", ""),
        jwks_file=env_str(env, "AWARENESS_GATEWAY_JWKS_FILE", ""),
        jwks_url=env_str(env, "AWARENESS_GATEWAY_JWKS_URL", ""),
        jwt_issuer=env_str(env, "AWARENESS_GATEWAY_JWT_ISSUER", ""),
        jwt_audience=env_str(env, "AWARENESS_GATEWAY_JWT_AUDIENCE", ""),
        jwt_roles_claim=env_str(env, "AWARENESS_GATEWAY_JWT_ROLES_CLAIM", "roles"),
        jwt_leeway_seconds=env_int(env, "AWARENESS_GATEWAY_JWT_LEEWAY_SECONDS", 30),
        gophish_secret=_gophish_secret(env, Path(settings.data_dir)),
        keep_alive_seconds=env_int(env, "AWARENESS_GATEWAY_KEEP_ALIVE_SECONDS", 5, minimum=1),
        body_timeout_seconds=env_float(env, "AWARENESS_GATEWAY_BODY_TIMEOUT_SECONDS", 10.0, minimum=0.1),
        max_concurrency=env_int(env, "AWARENESS_GATEWAY_MAX_CONCURRENCY", 0) or None,
        method_timeouts=_method_timeouts(
            env_str(env, "AWARENESS_GATEWAY_METHOD_TIMEOUTS", DEFAULT_METHOD_TIMEOUTS)
        ),
        # How long a verified API key record is trusted without reading the store again: the
        # longest a revocation takes to reach this replica (0 turns the cache off).
        key_cache_seconds=env_float(env, KEY_CACHE_SECONDS_VAR, KEY_CACHE_SECONDS_DEFAULT, minimum=0.0),
        key_cache_entries=env_int(env, "AWARENESS_GATEWAY_KEY_CACHE_ENTRIES", 10_000, minimum=0),
        # Each worker has an admin port of its own (Prometheus scrapes every one): base + 100 * index.
        admin_port=worker_port(
            env_int(env, GATEWAY_ADMIN_PORT_VAR, DEFAULT_GATEWAY_ADMIN_PORT), settings.worker_index
        ),
        # Failed authentications per client address, a bucket of their own (0 = off).
        rate_auth_failures_per_min=env_int(env, "AWARENESS_GATEWAY_RATE_AUTH_FAILURES_PER_MIN", 60),
        grpc_port=env_int(env, GATEWAY_GRPC_PORT_VAR, DEFAULT_GATEWAY_GRPC_PORT),
        grpc_tls_cert_file=env_str(env, DOOR_TLS_CERT_VAR, _dev_door_file(env, settings, "crt")),
        grpc_tls_key_file=env_str(env, DOOR_TLS_KEY_VAR, _dev_door_file(env, settings, "key")),
        append_calls_in_flight=env_int(env, "AWARENESS_GATEWAY_APPEND_CALLS_IN_FLIGHT", 2, minimum=0),
    )
    if config.key_cache_seconds > KEY_CACHE_SECONDS_MAX:
        raise ConfigError(
            f"{KEY_CACHE_SECONDS_VAR} must be <= {KEY_CACHE_SECONDS_MAX:g} (the revocation bound), "
            f"got {config.key_cache_seconds:g}"
        )
    if bool(config.grpc_tls_cert_file) != bool(config.grpc_tls_key_file):
        raise ConfigError(f"the gRPC door's TLS needs both {DOOR_TLS_CERT_VAR} and {DOOR_TLS_KEY_VAR}")
    if config.jwt_enabled and not (config.jwt_issuer and config.jwt_audience):
        raise ConfigError(
            "JWT authentication needs AWARENESS_GATEWAY_JWT_ISSUER and AWARENESS_GATEWAY_JWT_AUDIENCE"
        )
    return config


def _dev_door_file(env: Mapping[str, str], settings: Settings, suffix: str) -> str:
    """The development certificate or key of the door, when `awareness up` issued one here."""
    if in_kubernetes(env) or env.get(DOOR_TLS_CERT_VAR):
        return ""
    path = Path(settings.data_dir) / DOOR_TLS_DIR / f"{DOOR_TLS_NAME}.{suffix}"
    return str(path) if path.exists() else ""


def _gophish_secret(env: Mapping[str, str], data_dir: Path) -> bytes | None:
    """Every replica must verify with one secret: in Kubernetes it comes from a Secret or the pod refuses
    to start; elsewhere the file ``awareness up`` created (absent: the webhook answers WEBHOOK_DISABLED)."""
    kubernetes = in_kubernetes(env)
    secret = read_secret(
        env, GOPHISH_SECRET_VAR, default_file=None if kubernetes else data_dir / GOPHISH_SECRET_FILE
    )
    if secret is None:
        refuse_generated_secret(env, f"{GOPHISH_SECRET_VAR} (or {GOPHISH_SECRET_VAR}_FILE)")
    return secret


def _method_timeouts(raw: str) -> dict[str, float]:
    """``pkg.Service/Method=seconds,...`` -> {"/pkg.Service/Method": seconds}."""
    timeouts: dict[str, float] = {}
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        method, _, seconds = item.partition("=")
        try:
            value = float(seconds)
        except ValueError as exc:
            raise ConfigError(f"AWARENESS_GATEWAY_METHOD_TIMEOUTS: bad entry {item!r}") from exc
        if value <= 0 or "/" not in method:
            raise ConfigError(f"AWARENESS_GATEWAY_METHOD_TIMEOUTS: bad entry {item!r}")
        timeouts["/" + method.strip().lstrip("/")] = value
    return timeouts
