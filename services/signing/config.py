"""The signing service's own settings, read once from the environment in ``create_app``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from services.runtime.config import ConfigError, env_float, env_int, env_str
from services.signing.bootstrap import PKI_DIR_ENVIRONMENT_VARIABLE, dev_pki_dir
from services.signing.domain.tsa import DEFAULT_POLICY_OID

DEFAULT_LOG_ORIGIN = "awareness.local/log"


@dataclass(frozen=True, kw_only=True)
class SigningConfig:
    pki_dir: Path
    pki_dir_from_environment: bool  # True in production: a mounted Secret, never generated here
    log_origin: str
    policy_oid: str
    accepted_policies: tuple[str, ...]
    accuracy_seconds: int
    upstream_tsa_url: str | None
    upstream_timeout_seconds: float
    upstream_trusted_roots: tuple[x509.Certificate, ...]
    key_reload_seconds: float


def load_signing_config(env: Mapping[str, str], *, data_dir: Path) -> SigningConfig:
    configured_dir = env_str(env, PKI_DIR_ENVIRONMENT_VARIABLE, "")
    origin = env_str(env, "AWARENESS_LOG_ORIGIN", DEFAULT_LOG_ORIGIN)
    if any(character.isspace() or character == "+" for character in origin):
        raise ConfigError("AWARENESS_LOG_ORIGIN must have no spaces and no '+' (it names the note key)")
    policy_oid = env_str(env, "AWARENESS_TSA_POLICY_OID", DEFAULT_POLICY_OID)
    accepted = tuple(
        oid.strip()
        for oid in env_str(env, "AWARENESS_TSA_ACCEPTED_POLICY_OIDS", "").split(",")
        if oid.strip()
    )
    upstream_url = env_str(env, "AWARENESS_UPSTREAM_TSA_URL", "") or None
    if upstream_url is not None and not upstream_url.startswith(("http://", "https://")):
        raise ConfigError("AWARENESS_UPSTREAM_TSA_URL must be an http(s) URL")
    roots_file = env_str(env, "AWARENESS_UPSTREAM_TSA_CA_FILE", "")
    try:
        roots = tuple(x509.load_pem_x509_certificates(Path(roots_file).read_bytes())) if roots_file else ()
    except (OSError, ValueError) as exc:
        raise ConfigError(f"AWARENESS_UPSTREAM_TSA_CA_FILE cannot be read: {exc}") from exc
    return SigningConfig(
        pki_dir=Path(configured_dir) if configured_dir else dev_pki_dir(data_dir),
        pki_dir_from_environment=bool(configured_dir),
        log_origin=origin,
        policy_oid=policy_oid,
        accepted_policies=accepted,
        accuracy_seconds=env_int(env, "AWARENESS_TSA_ACCURACY_SECONDS", 1),
        upstream_tsa_url=upstream_url,
        upstream_timeout_seconds=env_float(env, "AWARENESS_UPSTREAM_TSA_TIMEOUT_SECONDS", 3.0, minimum=0.05),
        upstream_trusted_roots=roots,
        key_reload_seconds=env_float(env, "AWARENESS_PKI_RELOAD_SECONDS", 30.0, minimum=0.05),
    )
