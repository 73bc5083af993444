"""Where the KEK and lookup secret come from: dev files, JSON keyrings, Helm's base64 Secret files."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import pytest

from services.gdpr.bootstrap import bootstrap_dev
from services.gdpr.domain.errors import KeyringError
from services.gdpr.domain.keys import Keyring, load_keyring
from services.gdpr.keysource import load_key_material, parse_keyring, single_kek_id


def test_bootstrap_creates_private_dev_keyring_and_lookup_secret_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in (
        "AWARENESS_KEK_FILE",
        "AWARENESS_KEK",
        "AWARENESS_LOOKUP_SECRET",
        "AWARENESS_LOOKUP_SECRET_FILE",
    ):
        monkeypatch.delenv(name, raising=False)
    bootstrap_dev(tmp_path)
    keyring_file, secret_file = tmp_path / "gdpr-kek.json", tmp_path / "gdpr-lookup-secret"
    first = (keyring_file.read_bytes(), secret_file.read_bytes())
    for path in (keyring_file, secret_file):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(load_keyring(keyring_file)) == 1
    assert len(secret_file.read_bytes().strip()) >= 32
    bootstrap_dev(tmp_path)
    assert (keyring_file.read_bytes(), secret_file.read_bytes()) == first


@pytest.mark.parametrize("variable", ["AWARENESS_KEK_FILE", "AWARENESS_LOOKUP_SECRET", "AWARENESS_KEK"])
def test_bootstrap_generates_nothing_when_production_secrets_are_configured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    monkeypatch.setenv(variable, "/etc/awareness/gdpr/kek")
    bootstrap_dev(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_single_base64_kek_becomes_a_keyring_with_a_stable_derived_id() -> None:
    kek = bytes(range(32))
    from_secret = parse_keyring(base64.b64encode(kek) + b"\n")
    assert len(from_secret) == 1 and from_secret.active_kek == kek
    assert from_secret.active_id == single_kek_id(kek) == parse_keyring(base64.b64encode(kek)).active_id
    assert single_kek_id(bytes(32)) != single_kek_id(kek)
    assert parse_keyring(kek).active_kek == kek  # a Secret made from the raw bytes
    keyring = Keyring.generate()
    assert parse_keyring(keyring.to_json().encode()).active_id == keyring.active_id
    with pytest.raises(KeyringError):
        parse_keyring(base64.b64encode(b"too short"))


def test_production_mode_needs_both_secrets_and_never_writes(tmp_path: Path) -> None:
    kek_file = tmp_path / "kek"
    kek_file.write_text(base64.b64encode(bytes(range(32))).decode())
    secret_file = tmp_path / "lookup-secret"
    secret_file.write_text(base64.b64encode(bytes(range(100, 132))).decode())
    data_dir = tmp_path / "var"
    material = load_key_material(
        env={"AWARENESS_KEK_FILE": str(kek_file), "AWARENESS_LOOKUP_SECRET_FILE": str(secret_file)},
        data_dir=data_dir,
    )
    assert material.keyring_file is None  # read-only: RotateKek refuses
    assert material.lookup_secret == secret_file.read_bytes().strip()
    assert not data_dir.exists()
    with pytest.raises(KeyringError, match="LOOKUP_SECRET"):
        load_key_material(env={"AWARENESS_KEK_FILE": str(kek_file)}, data_dir=data_dir)
    with pytest.raises(KeyringError, match="KEK"):
        load_key_material(env={"AWARENESS_LOOKUP_SECRET_FILE": str(secret_file)}, data_dir=data_dir)
    printed = repr(material)
    assert material.keyring.active_id in printed
    assert kek_file.read_text() not in printed and secret_file.read_text() not in printed


def test_dev_mode_creates_and_then_reuses_the_files(tmp_path: Path) -> None:
    first = load_key_material(env={}, data_dir=tmp_path)
    second = load_key_material(env={}, data_dir=tmp_path)
    assert first.keyring_file == tmp_path / "gdpr-kek.json"
    assert (first.keyring.active_id, first.lookup_secret) == (second.keyring.active_id, second.lookup_secret)
