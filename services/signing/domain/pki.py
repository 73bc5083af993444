"""The signing service's PKI: a root CA, a time-stamping key and a checkpoint key, with rotation.

Layout of a key directory (flat, so the same files can be the keys of a Kubernetes Secret):

- ``root-ca.pem``: the root certificate (ECDSA P-384), the trust anchor auditors pin.
- ``root-ca.key.pem``: its private key; only needed to issue or rotate keys, never to load them,
  so production mounts can leave it out.
- ``<purpose>-<key id>.crt.pem`` / ``<purpose>-<key id>.key.pem``: one certificate and private key
  per key generation. Retired generations keep their certificate (so old signatures still verify)
  and lose their private key (so they can never sign again).
- ``keys.json``: the manifest (purpose, key id, state, validity window) of every generation.

A key id is the lowercase hex SHA-256 of the DER SubjectPublicKeyInfo.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from services.signing.domain.errors import KeyNotFoundError, PkiError

ROOT_CERTIFICATE_FILE = "root-ca.pem"
ROOT_PRIVATE_KEY_FILE = "root-ca.key.pem"
MANIFEST_FILE = "keys.json"
_LOCK_FILE = ".pki.lock"
_MANIFEST_VERSION = 1
_ORGANIZATION = "Awareness"
_ROOT_VALIDITY = timedelta(days=20 * 365)
_LEAF_VALIDITY = timedelta(days=10 * 365)
# Certificates start a little in the past so replicas with slightly slow clocks accept them at once.
_CLOCK_SKEW = timedelta(minutes=5)

PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey
PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey


class KeyPurpose(StrEnum):
    CHECKPOINT = "checkpoint"  # Ed25519: checkpoints (C2SP signed notes) and entry digests
    TIMESTAMP = "timestamp"  # ECDSA P-256: RFC 3161 tokens, because OpenSSL cannot verify Ed25519 ones


class KeyState(StrEnum):
    ACTIVE = "active"
    RETIRED = "retired"


_ALGORITHMS: Mapping[KeyPurpose, str] = {
    KeyPurpose.CHECKPOINT: "ed25519",
    KeyPurpose.TIMESTAMP: "ecdsa-p256",
}
_SUBJECT_SUFFIXES: Mapping[KeyPurpose, str] = {
    KeyPurpose.CHECKPOINT: "Checkpoint Signer",
    KeyPurpose.TIMESTAMP: "Time-Stamping Authority",
}


def key_id_of(public_key: CertificatePublicKeyTypes | x509.Certificate) -> str:
    """Lowercase hex SHA-256 of the DER SubjectPublicKeyInfo."""
    if isinstance(public_key, x509.Certificate):
        public_key = public_key.public_key()
    spki = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).hexdigest()


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """One key generation as recorded in ``keys.json``."""

    purpose: KeyPurpose
    key_id: str
    algorithm: str
    state: KeyState
    not_before: datetime
    not_after: datetime | None  # None while active; the retirement time once retired
    certificate_file: str
    private_key_file: str | None  # None once retired: the private key is destroyed

    def is_valid_at(self, when: datetime) -> bool:
        return self.not_before <= when and (self.not_after is None or when < self.not_after)

    def to_json(self) -> dict[str, object]:
        return {
            "purpose": self.purpose.value,
            "key_id": self.key_id,
            "algorithm": self.algorithm,
            "state": self.state.value,
            "not_before": _format_time(self.not_before),
            "not_after": None if self.not_after is None else _format_time(self.not_after),
            "certificate_file": self.certificate_file,
            "private_key_file": self.private_key_file,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, object]) -> KeyInfo:
        try:
            not_after = raw.get("not_after")
            private_key_file = raw.get("private_key_file")
            return cls(
                purpose=KeyPurpose(str(raw["purpose"])),
                key_id=str(raw["key_id"]),
                algorithm=str(raw["algorithm"]),
                state=KeyState(str(raw["state"])),
                not_before=_parse_time(str(raw["not_before"])),
                not_after=None if not_after is None else _parse_time(str(not_after)),
                certificate_file=_plain_file_name(str(raw["certificate_file"])),
                private_key_file=None
                if private_key_file is None
                else _plain_file_name(str(private_key_file)),
            )
        except (KeyError, ValueError) as exc:
            raise PkiError(f"invalid key entry in {MANIFEST_FILE}: {exc}") from exc


@dataclass(frozen=True, slots=True)
class KeyMaterial:
    """A loaded key generation: its manifest entry, certificate and (if still held) private key."""

    info: KeyInfo
    certificate: x509.Certificate
    private_key: PrivateKey | None

    @property
    def key_id(self) -> str:
        return self.info.key_id

    def ed25519_public_key(self) -> ed25519.Ed25519PublicKey:
        public_key = self.certificate.public_key()
        if not isinstance(public_key, ed25519.Ed25519PublicKey):
            raise PkiError(f"key {self.key_id} is not an Ed25519 key")
        return public_key

    def ed25519_private_key(self) -> ed25519.Ed25519PrivateKey:
        if not isinstance(self.private_key, ed25519.Ed25519PrivateKey):
            raise PkiError(f"no Ed25519 private key is held for key {self.key_id}")
        return self.private_key

    def ecdsa_private_key(self) -> ec.EllipticCurvePrivateKey:
        if not isinstance(self.private_key, ec.EllipticCurvePrivateKey):
            raise PkiError(f"no ECDSA private key is held for key {self.key_id}")
        return self.private_key


@dataclass(frozen=True, slots=True)
class Keyring:
    """Every key generation found in a key directory, loaded without writing anything."""

    directory: Path
    root_certificate: x509.Certificate
    keys: tuple[KeyMaterial, ...]

    def for_purpose(self, purpose: KeyPurpose) -> tuple[KeyMaterial, ...]:
        """All generations for a purpose, oldest first."""
        return tuple(key for key in self.keys if key.info.purpose is purpose)

    def active(self, purpose: KeyPurpose) -> KeyMaterial:
        for key in reversed(self.for_purpose(purpose)):
            if key.info.state is KeyState.ACTIVE:
                return key
        raise KeyNotFoundError(f"no active {purpose.value} key in {self.directory}")

    def get(self, key_id: str) -> KeyMaterial:
        for key in self.keys:
            if key.key_id == key_id:
                return key
        raise KeyNotFoundError(f"no key {key_id} in {self.directory}")


@dataclass(frozen=True, slots=True)
class PkiPaths:
    """Where ``init_pki`` left the root and the active keys."""

    directory: Path
    manifest: Path
    root_certificate: Path
    root_private_key: Path
    checkpoint_certificate: Path
    checkpoint_private_key: Path
    timestamp_certificate: Path
    timestamp_private_key: Path


def init_pki(directory: Path, *, common_name_prefix: str = "Awareness Dev", force: bool = False) -> PkiPaths:
    """Create the root CA and one active key per purpose, keeping whatever already exists.

    ``force`` discards the existing root, manifest and key files first (a new trust anchor).
    """
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    with _directory_lock(directory):
        if force:
            _remove_generated_files(directory)
        if (
            not (directory / ROOT_CERTIFICATE_FILE).exists()
            and not (directory / ROOT_PRIVATE_KEY_FILE).exists()
        ):
            _create_root(directory, common_name_prefix=common_name_prefix)
        entries = list(_read_manifest(directory)) if (directory / MANIFEST_FILE).exists() else []
        now = _now()
        for purpose in KeyPurpose:
            if not any(entry.purpose is purpose and entry.state is KeyState.ACTIVE for entry in entries):
                # Only issuing needs the root private key; a complete directory without it is fine.
                entries.append(
                    _issue_key(directory, purpose=purpose, common_name_prefix=common_name_prefix, now=now)
                )
        _write_manifest(directory, entries, common_name_prefix=common_name_prefix)
    return _paths(directory, entries)


def rotate_key(directory: Path, purpose: KeyPurpose) -> KeyInfo:
    """Add a new active key for ``purpose``; retire the previous one, keeping its certificate."""
    with _directory_lock(directory):
        entries = _read_manifest(directory)
        common_name_prefix = _read_common_name_prefix(directory)
        now = _now()
        new_entry = _issue_key(directory, purpose=purpose, common_name_prefix=common_name_prefix, now=now)
        updated: list[KeyInfo] = []
        destroyed: list[Path] = []
        for entry in entries:
            if entry.purpose is purpose and entry.state is KeyState.ACTIVE:
                if entry.private_key_file is not None:
                    destroyed.append(directory / entry.private_key_file)
                entry = replace(entry, state=KeyState.RETIRED, not_after=now, private_key_file=None)
            updated.append(entry)
        updated.append(new_entry)
        _write_manifest(directory, updated, common_name_prefix=common_name_prefix)
        # Only after the manifest no longer needs them: a crash in between leaves a loadable directory.
        for path in destroyed:
            path.unlink(missing_ok=True)
    return new_entry


def load_keyring(directory: Path) -> Keyring:
    """Load every key generation; needs only read access (a mounted Secret is fine)."""
    if not (directory / MANIFEST_FILE).is_file():
        raise PkiError(f"no PKI in {directory}: run `awareness pki init`")
    root_certificate = _load_certificate(directory / ROOT_CERTIFICATE_FILE)
    keys: list[KeyMaterial] = []
    for entry in _read_manifest(directory):
        certificate = _load_certificate(directory / entry.certificate_file)
        if key_id_of(certificate) != entry.key_id:
            raise PkiError(f"{entry.certificate_file} does not hold key {entry.key_id}")
        _check_issued_by(certificate, root_certificate, name=entry.certificate_file)
        private_key: PrivateKey | None = None
        if entry.state is KeyState.ACTIVE:
            if entry.private_key_file is None:
                raise PkiError(f"active key {entry.key_id} has no private key file")
            private_key = _load_private_key(directory / entry.private_key_file)
            if key_id_of(private_key.public_key()) != entry.key_id:
                raise PkiError(
                    f"{entry.private_key_file} does not match certificate {entry.certificate_file}"
                )
        keys.append(KeyMaterial(info=entry, certificate=certificate, private_key=private_key))
    return Keyring(directory=directory, root_certificate=root_certificate, keys=tuple(keys))


# -- issuing ---------------------------------------------------------------------------------------


def _create_root(directory: Path, *, common_name_prefix: str) -> None:
    root_key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{common_name_prefix} Root CA"),
        ]
    )
    now = _now()
    public_key = root_key.public_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + _ROOT_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(key_cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .sign(root_key, hashes.SHA384())
    )
    _write_private_key(directory / ROOT_PRIVATE_KEY_FILE, root_key)
    _write_public_file(
        directory / ROOT_CERTIFICATE_FILE, certificate.public_bytes(serialization.Encoding.PEM)
    )


def _load_root_for_issuing(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key_path = directory / ROOT_PRIVATE_KEY_FILE
    if not key_path.exists():
        raise PkiError(f"{key_path} is missing: keys can only be issued where the root private key is kept")
    certificate = _load_certificate(directory / ROOT_CERTIFICATE_FILE)
    root_key = _load_private_key(key_path)
    if not isinstance(root_key, ec.EllipticCurvePrivateKey) or key_id_of(root_key.public_key()) != key_id_of(
        certificate
    ):
        raise PkiError(f"{key_path} does not match {ROOT_CERTIFICATE_FILE}")
    return certificate, root_key


def _issue_key(
    directory: Path,
    *,
    purpose: KeyPurpose,
    common_name_prefix: str,
    now: datetime,
) -> KeyInfo:
    """A new leaf key for ``purpose``, certified by the root kept in ``directory``."""
    root_certificate, root_key = _load_root_for_issuing(directory)
    private_key: PrivateKey = (
        ed25519.Ed25519PrivateKey.generate()
        if purpose is KeyPurpose.CHECKPOINT
        else ec.generate_private_key(ec.SECP256R1())
    )
    public_key = private_key.public_key()
    key_id = key_id_of(public_key)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORGANIZATION),
            x509.NameAttribute(
                NameOID.COMMON_NAME, f"{common_name_prefix} {_SUBJECT_SUFFIXES[purpose]} {key_id[:8]}"
            ),
        ]
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(root_certificate.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(min(now + _LEAF_VALIDITY, root_certificate.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        # Signing keys sign and nothing else: never encipherment or key agreement.
        .add_extension(_key_usage(digital_signature=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), critical=False
        )
    )
    if purpose is KeyPurpose.TIMESTAMP:
        # RFC 3161 section 2.3: exactly one key purpose, id-kp-timeStamping, and the extension critical.
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.TIME_STAMPING]), critical=True
        )
    certificate = builder.sign(root_key, hashes.SHA384())
    certificate_file = f"{purpose.value}-{key_id}.crt.pem"
    private_key_file = f"{purpose.value}-{key_id}.key.pem"
    _write_private_key(directory / private_key_file, private_key)
    _write_public_file(directory / certificate_file, certificate.public_bytes(serialization.Encoding.PEM))
    return KeyInfo(
        purpose=purpose,
        key_id=key_id,
        algorithm=_ALGORITHMS[purpose],
        state=KeyState.ACTIVE,
        not_before=now,
        not_after=None,
        certificate_file=certificate_file,
        private_key_file=private_key_file,
    )


def _key_usage(*, digital_signature: bool = False, key_cert_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=key_cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


# -- files -----------------------------------------------------------------------------------------


@contextlib.contextmanager
def _directory_lock(directory: Path) -> Iterator[None]:
    """Serialise writers (two replicas initialising the same dev directory on first start)."""
    with open(directory / _LOCK_FILE, "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _remove_generated_files(directory: Path) -> None:
    if (directory / MANIFEST_FILE).exists():
        for entry in _read_manifest(directory):
            (directory / entry.certificate_file).unlink(missing_ok=True)
            if entry.private_key_file is not None:
                (directory / entry.private_key_file).unlink(missing_ok=True)
    for name in (MANIFEST_FILE, ROOT_CERTIFICATE_FILE, ROOT_PRIVATE_KEY_FILE):
        (directory / name).unlink(missing_ok=True)


def _write_private_key(path: Path, private_key: PrivateKey) -> None:
    pem = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    # Created 0600 with O_EXCL, so the key is never readable by others, not even for an instant.
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(pem)
    os.chmod(path, 0o600)


def _write_public_file(path: Path, content: bytes) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(content)
    os.chmod(temporary, 0o644)
    os.replace(temporary, path)


def _write_manifest(directory: Path, entries: list[KeyInfo], *, common_name_prefix: str) -> None:
    document = {
        "version": _MANIFEST_VERSION,
        "common_name_prefix": common_name_prefix,
        "root_certificate_file": ROOT_CERTIFICATE_FILE,
        "keys": [entry.to_json() for entry in entries],
    }
    _write_public_file(directory / MANIFEST_FILE, (json.dumps(document, indent=2) + "\n").encode())


def _read_manifest_document(directory: Path) -> dict[str, object]:
    path = directory / MANIFEST_FILE
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise PkiError(f"cannot read {path}: {exc}") from exc
    if not isinstance(document, dict) or document.get("version") != _MANIFEST_VERSION:
        raise PkiError(f"{path} is not a version {_MANIFEST_VERSION} key manifest")
    return document


def _read_manifest(directory: Path) -> list[KeyInfo]:
    raw_keys = _read_manifest_document(directory).get("keys")
    if not isinstance(raw_keys, list) or not all(isinstance(raw, dict) for raw in raw_keys):
        raise PkiError(f"{directory / MANIFEST_FILE} has no key list")
    return [KeyInfo.from_json(raw) for raw in raw_keys]


def _read_common_name_prefix(directory: Path) -> str:
    return str(_read_manifest_document(directory).get("common_name_prefix", "Awareness Dev"))


def _load_certificate(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise PkiError(f"cannot load certificate {path}: {exc}") from exc


def _load_private_key(path: Path) -> PrivateKey:
    try:
        private_key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise PkiError(f"cannot load private key {path}: {exc}") from exc
    if not isinstance(private_key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey):
        raise PkiError(f"{path} holds an unsupported key type")
    return private_key


def _check_issued_by(certificate: x509.Certificate, issuer: x509.Certificate, *, name: str) -> None:
    try:
        certificate.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise PkiError(f"{name} was not issued by {ROOT_CERTIFICATE_FILE}") from exc


def _plain_file_name(name: str) -> str:
    # The manifest may come from a mounted Secret: never let it point outside the directory.
    if not name or name != Path(name).name or name in {".", ".."}:
        raise ValueError(f"not a plain file name: {name!r}")
    return name


def _paths(directory: Path, entries: list[KeyInfo]) -> PkiPaths:
    def active(purpose: KeyPurpose) -> KeyInfo:
        return next(e for e in reversed(entries) if e.purpose is purpose and e.state is KeyState.ACTIVE)

    checkpoint = active(KeyPurpose.CHECKPOINT)
    timestamp = active(KeyPurpose.TIMESTAMP)
    assert checkpoint.private_key_file is not None and timestamp.private_key_file is not None
    return PkiPaths(
        directory=directory,
        manifest=directory / MANIFEST_FILE,
        root_certificate=directory / ROOT_CERTIFICATE_FILE,
        root_private_key=directory / ROOT_PRIVATE_KEY_FILE,
        checkpoint_certificate=directory / checkpoint.certificate_file,
        checkpoint_private_key=directory / checkpoint.private_key_file,
        timestamp_certificate=directory / timestamp.certificate_file,
        timestamp_private_key=directory / timestamp.private_key_file,
    )


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _format_time(when: datetime) -> str:
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _parse_time(text: str) -> datetime:
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        raise ValueError(f"timestamp without a time zone: {text}")
    return parsed.astimezone(UTC)
