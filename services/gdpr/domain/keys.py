"""Subject lookup, pseudonyms, per-period data keys and their wrapping under key-encryption keys (KEKs).

Crypto-shredding rests on three pieces kept apart:

* ``lookup_key``: HMAC-SHA256 of the normalised identifier under a server secret. It finds a subject's
  pseudonym row without storing the identifier; deleting the row unlinks the person for good.
* ``new_pseudonym``: random, never derived from the identifier, so once the row is gone nothing (not
  even the secret) leads from the person to the pseudonym left in the log.
* data keys (AES-256-GCM, one per subject per period) stored only wrapped under a KEK with AES-256-GCM.
  The AAD binds pseudonym, period and key id, so a wrapped key copied onto another subject's row
  does not unwrap. Deleting a subject's wrapped keys shreds its ciphertext.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import secrets
import struct
import unicodedata
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from services.gdpr.domain.errors import KeyringError, KeyUnwrapError

DATA_KEY_BYTES = 32
KEK_BYTES = 32
GCM_NONCE_BYTES = 12
MIN_LOOKUP_SECRET_BYTES = 32
PSEUDONYM_PREFIX = "psn_"
DATA_KEY_ID_PREFIX = "dk_"
KEK_ID_PREFIX = "kek_"
_AAD_DOMAIN = b"awareness.gdpr.data-key/v1"

PeriodGranularity = Literal["month", "year"]
_PERIOD_PATTERN = re.compile(r"(?P<year>[0-9]{4})(?:-(?P<month>[0-9]{2}))?")


def _random_token(nbytes: int = 16) -> str:
    # Lower-case base32 without padding: 26 characters for 128 bits, safe in URLs and resource names.
    return base64.b32encode(secrets.token_bytes(nbytes)).decode("ascii").rstrip("=").lower()


# --- subject lookup and pseudonyms -------------------------------------------------------------------


def normalise_identifier(identifier: str) -> str:
    """Return the canonical form of a subject identifier (e-mail address or IdP user id).

    NFKC, then strip surrounding whitespace, then ``str.casefold``. RFC 5321 lets the local part of an
    address be case-sensitive, but mail providers and IdPs treat it case-insensitively, and the same
    person must reach the same pseudonym however a source system spelled it. Provider-specific rewrites
    (dropping ``+tags`` or dots) are deliberately NOT applied: they would merge distinct mailboxes.
    """
    normalised = unicodedata.normalize("NFKC", identifier).strip().casefold()
    if not normalised:
        raise ValueError("subject identifier is empty after normalisation")
    return normalised


def lookup_key(identifier: str, *, secret: bytes) -> bytes:
    """HMAC-SHA256 (32 bytes) of the normalised identifier: the index used to find a pseudonym row."""
    if len(secret) < MIN_LOOKUP_SECRET_BYTES:
        raise ValueError(f"lookup secret must be at least {MIN_LOOKUP_SECRET_BYTES} bytes")
    mac = hmac.HMAC(secret, hashes.SHA256())
    mac.update(normalise_identifier(identifier).encode("utf-8"))
    return mac.finalize()


def new_pseudonym() -> str:
    """A fresh random pseudonym, ``psn_`` + 128 random bits (base32). Independent of the identifier."""
    return PSEUDONYM_PREFIX + _random_token()


# --- data keys and periods ---------------------------------------------------------------------------


def key_period(occurred_at: datetime, *, granularity: PeriodGranularity = "month") -> str:
    """The period an event's data key belongs to, in UTC: ``"2026-11"`` (month) or ``"2026"`` (year)."""
    if occurred_at.tzinfo is None or occurred_at.utcoffset() is None:
        raise ValueError("occurred_at must be timezone-aware")
    utc = occurred_at.astimezone(UTC)
    if granularity == "month":
        return f"{utc.year:04d}-{utc.month:02d}"
    if granularity == "year":
        return f"{utc.year:04d}"
    raise ValueError(f"unknown period granularity {granularity!r}")


def period_bounds(period: str) -> tuple[datetime, datetime]:
    """``[start, end)`` in UTC of a period produced by ``key_period`` (``"2026-11"`` or ``"2026"``)."""
    match = _PERIOD_PATTERN.fullmatch(period)
    if match is None:
        raise ValueError(f"malformed period {period!r}")
    year = int(match["year"])
    if match["month"] is None:
        return datetime(year, 1, 1, tzinfo=UTC), datetime(year + 1, 1, 1, tzinfo=UTC)
    month = int(match["month"])
    if not 1 <= month <= 12:
        raise ValueError(f"malformed period {period!r}")
    next_year, next_month_zero_based = divmod(year * 12 + month, 12)
    return datetime(year, month, 1, tzinfo=UTC), datetime(next_year, next_month_zero_based + 1, 1, tzinfo=UTC)


def new_data_key() -> bytes:
    """32 random bytes: an AES-256-GCM key for one subject's personal fields in one period."""
    return secrets.token_bytes(DATA_KEY_BYTES)


def new_key_id() -> str:
    """A fresh data key id, ``dk_`` + 128 random bits (base32)."""
    return DATA_KEY_ID_PREFIX + _random_token()


def data_key_aad(*, pseudonym: str, period: str, key_id: str) -> bytes:
    """Associated data binding a wrapped data key to its owner, period and id.

    Length-prefixed fields, so no choice of values can make two different triples encode alike.
    """
    parts = [_AAD_DOMAIN, pseudonym.encode("utf-8"), period.encode("utf-8"), key_id.encode("utf-8")]
    return b"".join(struct.pack(">I", len(part)) + part for part in parts)


# --- KEK wrapping ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WrappedKey:
    """A data key encrypted under the KEK ``kek_id``; ``ciphertext`` includes the 16-byte GCM tag."""

    kek_id: str
    nonce: bytes
    ciphertext: bytes

    def __repr__(self) -> str:
        return f"WrappedKey(kek_id={self.kek_id!r}, nonce=<{len(self.nonce)} bytes>, ciphertext=<...>)"


def wrap_key(data_key: bytes, *, kek: bytes, kek_id: str, aad: bytes) -> WrappedKey:
    """Encrypt ``data_key`` under ``kek`` with AES-256-GCM and a fresh random 96-bit nonce."""
    if len(kek) != KEK_BYTES:
        raise ValueError(f"KEK must be {KEK_BYTES} bytes")
    if len(data_key) != DATA_KEY_BYTES:
        raise ValueError(f"data key must be {DATA_KEY_BYTES} bytes")
    nonce = secrets.token_bytes(GCM_NONCE_BYTES)
    return WrappedKey(kek_id=kek_id, nonce=nonce, ciphertext=AESGCM(kek).encrypt(nonce, data_key, aad))


def unwrap_key(wrapped: WrappedKey, *, keks: Mapping[str, bytes], aad: bytes) -> bytes:
    """Decrypt a wrapped data key with the KEK it names. A ``Keyring`` is a valid ``keks`` mapping.

    Raises ``KeyUnwrapError`` when the KEK id is unknown, or the AAD, nonce or ciphertext do not match.
    """
    kek = keks.get(wrapped.kek_id)
    if kek is None:
        raise KeyUnwrapError("wrapped key names an unknown KEK", metadata={"kek_id": wrapped.kek_id})
    try:
        data_key = AESGCM(kek).decrypt(wrapped.nonce, wrapped.ciphertext, aad)
    except (InvalidTag, ValueError) as exc:
        raise KeyUnwrapError(
            "wrapped key failed authentication (wrong KEK, wrong owner/period, or tampered)",
            metadata={"kek_id": wrapped.kek_id},
        ) from exc
    if len(data_key) != DATA_KEY_BYTES:
        raise KeyUnwrapError("unwrapped data key has the wrong length", metadata={"kek_id": wrapped.kek_id})
    return data_key


def rewrap(
    wrapped: WrappedKey,
    *,
    old_keks: Mapping[str, bytes],
    new_kek: bytes,
    new_kek_id: str,
    aad: bytes,
) -> WrappedKey:
    """Re-encrypt a wrapped data key under the new KEK (KEK rotation); the data key itself is unchanged.

    A key already under ``new_kek_id`` is returned as is, so an interrupted rotation can simply rerun.
    """
    if wrapped.kek_id == new_kek_id:
        return wrapped
    data_key = unwrap_key(wrapped, keks=old_keks, aad=aad)
    return wrap_key(data_key, kek=new_kek, kek_id=new_kek_id, aad=aad)


# --- keyring -----------------------------------------------------------------------------------------


def new_kek() -> bytes:
    """32 random bytes for a new KEK."""
    return secrets.token_bytes(KEK_BYTES)


def new_kek_id() -> str:
    """A fresh KEK id, ``kek_`` + 128 random bits (base32)."""
    return KEK_ID_PREFIX + _random_token()


class Keyring(Mapping[str, bytes]):
    """KEKs by id with exactly one active (used for new wraps); the others only unwrap.

    Serialised as JSON ``{"active": "<id>", "keys": {"<id>": "<base64 of 32 bytes>", ...}}``: the format
    of the dev file under ./var, of the Kubernetes Secret mount, and of an environment variable value.
    Immutable: rotation returns a new Keyring.
    """

    __slots__ = ("_active_id", "_keys")

    def __init__(self, *, active_id: str, keys: Mapping[str, bytes]) -> None:
        if not keys:
            raise KeyringError("keyring holds no keys")
        for kek_id, kek in keys.items():
            if not kek_id:
                raise KeyringError("keyring has an empty KEK id")
            if len(kek) != KEK_BYTES:
                raise KeyringError(f"KEK must be {KEK_BYTES} bytes", metadata={"kek_id": kek_id})
        if active_id not in keys:
            raise KeyringError("active KEK id is not in the keyring", metadata={"kek_id": active_id})
        self._active_id = active_id
        self._keys: dict[str, bytes] = dict(keys)

    # Mapping protocol: lets a Keyring be passed wherever unwrap_key/rewrap take ``keks``.
    def __getitem__(self, kek_id: str) -> bytes:
        return self._keys[kek_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        # Never print key material.
        return f"Keyring(active_id={self._active_id!r}, kek_ids={sorted(self._keys)!r})"

    @property
    def active_id(self) -> str:
        return self._active_id

    @property
    def active_kek(self) -> bytes:
        return self._keys[self._active_id]

    def wrap(self, data_key: bytes, *, aad: bytes) -> WrappedKey:
        """Wrap under the active KEK."""
        return wrap_key(data_key, kek=self.active_kek, kek_id=self._active_id, aad=aad)

    def unwrap(self, wrapped: WrappedKey, *, aad: bytes) -> bytes:
        return unwrap_key(wrapped, keks=self, aad=aad)

    def rewrap(self, wrapped: WrappedKey, *, aad: bytes) -> WrappedKey:
        """Re-wrap under the active KEK, unwrapping with whichever KEK of this keyring wrapped it."""
        return rewrap(wrapped, old_keks=self, new_kek=self.active_kek, new_kek_id=self._active_id, aad=aad)

    def with_new_active(self, *, kek_id: str | None = None, kek: bytes | None = None) -> Keyring:
        """A keyring with a new (generated unless given) active KEK; old KEKs stay for unwrapping."""
        new_id = kek_id or new_kek_id()
        if new_id in self._keys:
            raise KeyringError("KEK id already in the keyring", metadata={"kek_id": new_id})
        return Keyring(active_id=new_id, keys={**self._keys, new_id: kek if kek is not None else new_kek()})

    def without(self, kek_id: str) -> Keyring:
        """A keyring with ``kek_id`` retired (after every key was re-wrapped). The active KEK cannot go."""
        if kek_id == self._active_id:
            raise KeyringError("cannot remove the active KEK", metadata={"kek_id": kek_id})
        if kek_id not in self._keys:
            raise KeyringError("KEK id not in the keyring", metadata={"kek_id": kek_id})
        return Keyring(active_id=self._active_id, keys={k: v for k, v in self._keys.items() if k != kek_id})

    @classmethod
    def generate(cls) -> Keyring:
        """A keyring with a single fresh active KEK."""
        kek_id = new_kek_id()
        return cls(active_id=kek_id, keys={kek_id: new_kek()})

    def to_json(self) -> str:
        keys = {kek_id: base64.b64encode(kek).decode("ascii") for kek_id, kek in sorted(self._keys.items())}
        return json.dumps({"active": self._active_id, "keys": keys}, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> Keyring:
        """Parse the JSON form (file contents or an environment variable value)."""
        try:
            document = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise KeyringError("keyring is not valid JSON") from exc
        if not isinstance(document, dict):
            raise KeyringError("keyring must be a JSON object")
        active = document.get("active")
        encoded_keys = document.get("keys")
        if not isinstance(active, str) or not isinstance(encoded_keys, dict):
            raise KeyringError('keyring needs "active" (string) and "keys" (object)')
        keys: dict[str, bytes] = {}
        for kek_id, encoded in encoded_keys.items():
            if not isinstance(encoded, str):
                raise KeyringError("KEK must be a base64 string", metadata={"kek_id": str(kek_id)})
            try:
                keys[str(kek_id)] = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise KeyringError("KEK is not valid base64", metadata={"kek_id": str(kek_id)}) from exc
        return cls(active_id=active, keys=keys)


def load_keyring(path: Path) -> Keyring:
    """Read a keyring file. Read-only: a production Secret mount is never written."""
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise KeyringError(f"cannot read keyring file {path}: {exc.strerror}") from exc
    return Keyring.from_json(text)


def _write_private_temp(path: Path, text: str) -> Path:
    """Write ``text`` to a fresh 0600 file next to ``path`` and return its name."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            os.fchmod(handle.fileno(), 0o600)  # the umask can only narrow the mode; be exact regardless
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return temporary


def write_keyring_file(path: Path, keyring: Keyring) -> None:
    """Atomically replace a dev keyring file with mode 0600 (for local KEK rotation; never a Secret)."""
    temporary = _write_private_temp(path, keyring.to_json())
    try:
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def generate_kek_file(path: Path) -> bool:
    """Create the development keyring at ``path`` (mode 0600) unless it exists. True when created.

    The file is written under a temporary name and hard-linked into place: the link fails if the path
    exists, so two processes starting together agree on one keyring and neither reads a partial file.
    """
    if path.exists():
        return False
    temporary = _write_private_temp(path, Keyring.generate().to_json())
    try:
        os.link(temporary, path)
    except FileExistsError:
        return False
    finally:
        temporary.unlink(missing_ok=True)
    return True
