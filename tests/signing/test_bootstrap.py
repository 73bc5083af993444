"""`awareness up` creates the development PKI once, and never where production keys are configured."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.signing.bootstrap import bootstrap_dev
from services.signing.domain.pki import KeyPurpose, load_keyring


def test_bootstrap_creates_the_dev_pki_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWARENESS_PKI_DIR", raising=False)
    bootstrap_dev(tmp_path)
    first = load_keyring(tmp_path / "pki")
    bootstrap_dev(tmp_path)
    second = load_keyring(tmp_path / "pki")
    assert [key.key_id for key in second.keys] == [key.key_id for key in first.keys]
    assert {key.info.purpose for key in first.keys} == {KeyPurpose.CHECKPOINT, KeyPurpose.TIMESTAMP}


def test_bootstrap_does_nothing_when_keys_are_configured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWARENESS_PKI_DIR", str(tmp_path / "mounted-secret"))
    bootstrap_dev(tmp_path)
    assert not (tmp_path / "pki").exists()
    assert not (tmp_path / "mounted-secret").exists()
