from __future__ import annotations

from pathlib import Path

import pytest

from services.signing.domain.pki import Keyring, PkiPaths, init_pki, load_keyring


@pytest.fixture(scope="module")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("pki")
    init_pki(directory, common_name_prefix="Awareness Test")
    return directory


@pytest.fixture(scope="module")
def pki_paths(pki_dir: Path) -> PkiPaths:
    # init_pki is idempotent: this returns the paths of what the pki_dir fixture created.
    return init_pki(pki_dir, common_name_prefix="Awareness Test")


@pytest.fixture(scope="module")
def keyring(pki_dir: Path) -> Keyring:
    return load_keyring(pki_dir)
