"""Where the gdpr service's secrets come from: the KEK keyring and the subject-lookup secret.

Production (Kubernetes): ``AWARENESS_KEK_FILE`` and ``AWARENESS_LOOKUP_SECRET_FILE`` name files of a
mounted Secret (read-only), or ``AWARENESS_KEK`` / ``AWARENESS_LOOKUP_SECRET`` hold the values. A KEK
value is either the JSON keyring (``{"active": ..., "keys": {...}}``, several KEKs during a rotation) or
a single KEK: base64 text of 32 random bytes, as the Helm chart generates it.

Development (``awareness up``): ``<data dir>/gdpr-kek.json`` (a writable JSON keyring, so RotateKek can
rewrite it) and ``<data dir>/gdpr-lookup-secret``, created on first run.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from services.gdpr.domain.errors import KeyringError
from services.gdpr.domain.keys import (
    KEK_BYTES,
    KEK_ID_PREFIX,
    MIN_LOOKUP_SECRET_BYTES,
    Keyring,
    generate_kek_file,
    load_keyring,
)
from services.runtime.config import ConfigError, ensure_dev_secret, read_secret, refuse_generated_secret

KEK_FILE_VAR = "AWARENESS_KEK_FILE"
KEK_VAR = "AWARENESS_KEK"
LOOKUP_SECRET_VAR = "AWARENESS_LOOKUP_SECRET"  # noqa: S105 - a variable name, not a secret
PRODUCTION_VARS = (KEK_FILE_VAR, KEK_VAR, LOOKUP_SECRET_VAR, f"{LOOKUP_SECRET_VAR}_FILE")
DEV_KEK_FILE = "gdpr-kek.json"
DEV_LOOKUP_SECRET_FILE = "gdpr-lookup-secret"  # noqa: S105 - a file name


@dataclass(frozen=True, slots=True)
class KeyMaterial:
    """The secrets the service runs with. ``keyring_file`` is set only for a writable dev keyring."""

    keyring: Keyring
    lookup_secret: bytes
    keyring_file: Path | None

    def __repr__(self) -> str:
        return f"KeyMaterial(keyring={self.keyring!r}, keyring_file={self.keyring_file!r})"


def single_kek_id(kek: bytes) -> str:
    """A stable id for a KEK given without one: every replica and restart derives the same id."""
    digest = hashlib.sha256(b"awareness.gdpr.kek-id/v1\n" + kek).digest()[:16]
    return KEK_ID_PREFIX + base64.b32encode(digest).decode("ascii").rstrip("=").lower()


def parse_keyring(data: bytes) -> Keyring:
    """A keyring from a JSON keyring, or from one KEK as base64 text (or 32 raw bytes)."""
    stripped = data.strip()
    if stripped.startswith(b"{"):
        return Keyring.from_json(stripped)
    kek: bytes | None = None
    try:
        decoded = base64.b64decode(stripped, validate=True)
    except (binascii.Error, ValueError):
        decoded = b""
    if len(decoded) == KEK_BYTES:
        kek = decoded
    elif len(data) == KEK_BYTES:
        kek = data  # a Secret created with raw bytes (kubectl create secret --from-file)
    if kek is None:
        raise KeyringError(f"KEK must be a JSON keyring or base64 text of {KEK_BYTES} random bytes")
    kek_id = single_kek_id(kek)
    return Keyring(active_id=kek_id, keys={kek_id: kek})


def production_configured(env: Mapping[str, str]) -> bool:
    return any(env.get(name, "").strip() for name in PRODUCTION_VARS)


def ensure_dev_key_material(data_dir: Path) -> None:
    """Create the development keyring and lookup secret under ``data_dir`` unless they exist."""
    generate_kek_file(data_dir / DEV_KEK_FILE)
    ensure_dev_secret(data_dir / DEV_LOOKUP_SECRET_FILE)


def load_key_material(*, env: Mapping[str, str], data_dir: Path) -> KeyMaterial:
    """Read the configured secrets; in development (no production variable set) create them if needed.

    Once any production variable is set, both the KEK and the lookup secret must be configured: a
    missing one is an error rather than a silently generated key that would vanish with the pod.
    """
    if not production_configured(env):
        # In Kubernetes a generated KEK would differ per replica and vanish with the pod.
        refuse_generated_secret(env, f"{KEK_FILE_VAR} (the gdpr KEK Secret) with {LOOKUP_SECRET_VAR}_FILE")
        ensure_dev_key_material(data_dir)
        path = data_dir / DEV_KEK_FILE
        secret = (data_dir / DEV_LOOKUP_SECRET_FILE).read_bytes().strip()
        return KeyMaterial(keyring=load_keyring(path), lookup_secret=_check_secret(secret), keyring_file=path)
    kek_file = env.get(KEK_FILE_VAR, "").strip()
    kek_value = env.get(KEK_VAR, "").strip()
    if kek_file:
        try:
            keyring = parse_keyring(Path(kek_file).read_bytes())
        except OSError as exc:
            raise KeyringError(f"cannot read {KEK_FILE_VAR} {kek_file}: {exc.strerror}") from exc
    elif kek_value:
        keyring = parse_keyring(kek_value.encode())
    else:
        raise KeyringError(f"{KEK_FILE_VAR} or {KEK_VAR} must be set with the lookup secret")
    try:
        configured = read_secret(env, LOOKUP_SECRET_VAR, min_bytes=MIN_LOOKUP_SECRET_BYTES)
    except (OSError, ConfigError) as exc:
        raise KeyringError(f"{LOOKUP_SECRET_VAR}(_FILE) is unusable: {exc}") from exc
    if configured is None:
        raise KeyringError(f"{LOOKUP_SECRET_VAR} or {LOOKUP_SECRET_VAR}_FILE must be set with the KEK")
    return KeyMaterial(keyring=keyring, lookup_secret=_check_secret(configured), keyring_file=None)


def _check_secret(secret: bytes) -> bytes:
    if len(secret) < MIN_LOOKUP_SECRET_BYTES:
        raise KeyringError(f"the lookup secret must hold at least {MIN_LOOKUP_SECRET_BYTES} bytes")
    return secret


def describe_keyring(keyring: Keyring) -> str:
    """Non-secret summary for logs: the KEK ids only."""
    return json.dumps({"active": keyring.active_id, "kek_ids": sorted(keyring)})
