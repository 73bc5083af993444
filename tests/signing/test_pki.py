from __future__ import annotations

import hashlib
import json
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID

from services.signing.domain.errors import KeyNotFoundError, PkiError
from services.signing.domain.pki import (
    MANIFEST_FILE,
    ROOT_PRIVATE_KEY_FILE,
    KeyPurpose,
    KeyState,
    PkiPaths,
    init_pki,
    load_keyring,
    rotate_key,
)


def _certificate(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _spki_sha256(certificate: x509.Certificate) -> str:
    spki = certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).hexdigest()


def test_root_is_a_p384_ca(pki_paths: PkiPaths) -> None:
    root = _certificate(pki_paths.root_certificate)
    public_key = root.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert public_key.curve.name == "secp384r1"
    constraints = root.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca
    usage = root.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign and not usage.digital_signature
    assert root.subject == root.issuer
    root.verify_directly_issued_by(root)


def test_tsa_certificate_has_only_critical_timestamping_eku(pki_paths: PkiPaths) -> None:
    root = _certificate(pki_paths.root_certificate)
    tsa = _certificate(pki_paths.timestamp_certificate)
    tsa.verify_directly_issued_by(root)
    public_key = tsa.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert public_key.curve.name in {"secp256r1", "secp384r1"}

    eku = tsa.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    assert eku.critical
    assert list(eku.value) == [ExtendedKeyUsageOID.TIME_STAMPING]
    usage = tsa.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    assert usage.value.digital_signature
    assert not (usage.value.key_encipherment or usage.value.data_encipherment or usage.value.key_agreement)
    assert not usage.value.key_cert_sign
    constraints = tsa.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.value.ca is False


def test_checkpoint_certificate_is_ed25519_for_signing_only(pki_paths: PkiPaths) -> None:
    root = _certificate(pki_paths.root_certificate)
    checkpoint = _certificate(pki_paths.checkpoint_certificate)
    checkpoint.verify_directly_issued_by(root)
    assert isinstance(checkpoint.public_key(), ed25519.Ed25519PublicKey)
    usage = checkpoint.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature
    assert not (usage.value.key_encipherment or usage.value.data_encipherment or usage.value.key_agreement)
    assert checkpoint.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    with pytest.raises(x509.ExtensionNotFound):
        checkpoint.extensions.get_extension_for_class(x509.ExtendedKeyUsage)


def test_key_ids_are_sha256_of_spki(pki_dir: Path, pki_paths: PkiPaths) -> None:
    manifest = json.loads((pki_dir / MANIFEST_FILE).read_text())
    for entry in manifest["keys"]:
        certificate = _certificate(pki_dir / entry["certificate_file"])
        assert entry["key_id"] == _spki_sha256(certificate)
        assert entry["key_id"] in entry["certificate_file"]
    # Cross-check one key id with openssl itself.
    public_pem = subprocess.run(
        ["openssl", "x509", "-in", str(pki_paths.timestamp_certificate), "-noout", "-pubkey"],
        capture_output=True,
        check=True,
        timeout=30,
    ).stdout
    spki_der = subprocess.run(
        ["openssl", "pkey", "-pubin", "-outform", "DER"],
        input=public_pem,
        capture_output=True,
        check=True,
        timeout=30,
    ).stdout
    timestamp_entry = next(e for e in manifest["keys"] if e["purpose"] == "timestamp")
    assert hashlib.sha256(spki_der).hexdigest() == timestamp_entry["key_id"]


def test_private_keys_are_0600_pkcs8(pki_dir: Path, pki_paths: PkiPaths) -> None:
    private_keys = sorted(pki_dir.glob("*.key.pem"))
    assert {
        pki_paths.root_private_key,
        pki_paths.checkpoint_private_key,
        pki_paths.timestamp_private_key,
    } <= set(private_keys)
    for path in private_keys:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8, unencrypted
    assert stat.S_IMODE(pki_paths.root_certificate.stat().st_mode) == 0o644


def test_init_is_idempotent_and_force_starts_over(tmp_path: Path) -> None:
    first = init_pki(tmp_path)
    snapshot = {path.name: path.read_bytes() for path in tmp_path.iterdir() if path.is_file()}
    second = init_pki(tmp_path)
    assert second == first
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir() if path.is_file()} == snapshot

    forced = init_pki(tmp_path, force=True)
    assert forced.root_certificate.read_bytes() != snapshot[first.root_certificate.name]
    assert forced.timestamp_certificate != first.timestamp_certificate
    assert not first.timestamp_private_key.exists()
    assert len(load_keyring(tmp_path).keys) == 2


def test_loading_needs_neither_the_root_key_nor_write_access(pki_dir: Path, tmp_path: Path) -> None:
    # What a Kubernetes Secret mount holds: no root private key, read-only files.
    mounted = tmp_path / "mounted"
    mounted.mkdir()
    for path in pki_dir.iterdir():
        if path.is_file() and path.name != ROOT_PRIVATE_KEY_FILE and not path.name.startswith("."):
            shutil.copy(path, mounted / path.name)
            (mounted / path.name).chmod(0o400)
    mounted.chmod(0o500)
    before = sorted(path.name for path in mounted.iterdir())
    try:
        keyring = load_keyring(mounted)
        assert sorted(path.name for path in mounted.iterdir()) == before
        assert keyring.active(KeyPurpose.TIMESTAMP).private_key is not None
        assert keyring.active(KeyPurpose.CHECKPOINT).ed25519_private_key() is not None
        # A complete directory needs nothing issued, so init succeeds without the root key too.
        init_pki(mounted)
        with pytest.raises(PkiError, match="root private key"):
            rotate_key(mounted, KeyPurpose.CHECKPOINT)
    finally:
        mounted.chmod(0o700)


def test_rotation_retires_the_old_key_and_keeps_its_certificate(tmp_path: Path) -> None:
    paths = init_pki(tmp_path)
    old = load_keyring(tmp_path).active(KeyPurpose.TIMESTAMP)

    new_info = rotate_key(tmp_path, KeyPurpose.TIMESTAMP)

    keyring = load_keyring(tmp_path)
    generations = keyring.for_purpose(KeyPurpose.TIMESTAMP)
    assert [key.key_id for key in generations] == [old.key_id, new_info.key_id]
    retired = keyring.get(old.key_id)
    assert retired.info.state is KeyState.RETIRED
    assert retired.info.not_after == new_info.not_before
    assert retired.private_key is None
    assert retired.certificate == old.certificate
    assert paths.timestamp_certificate.exists()
    assert not paths.timestamp_private_key.exists()  # a retired key can never sign again
    assert keyring.active(KeyPurpose.TIMESTAMP).key_id == new_info.key_id
    assert new_info.key_id != old.key_id
    # The other purpose is untouched.
    assert len(keyring.for_purpose(KeyPurpose.CHECKPOINT)) == 1
    with pytest.raises(KeyNotFoundError):
        keyring.get("0" * 64)


def test_manifest_cannot_point_outside_the_directory(tmp_path: Path) -> None:
    init_pki(tmp_path)
    manifest_path = tmp_path / MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text())
    manifest["keys"][0]["certificate_file"] = "../../etc/passwd"
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(PkiError):
        load_keyring(tmp_path)


def test_swapped_certificate_is_detected(tmp_path: Path) -> None:
    paths = init_pki(tmp_path)
    shutil.copy(paths.checkpoint_certificate, paths.timestamp_certificate)
    with pytest.raises(PkiError, match="does not hold key"):
        load_keyring(tmp_path)


def test_missing_directory_is_a_pki_error(tmp_path: Path) -> None:
    with pytest.raises(PkiError, match="pki init"):
        load_keyring(tmp_path / "absent")
