"""First-run set-up for ``awareness up``: a development PKI under the data directory."""

from __future__ import annotations

import os
from pathlib import Path

from services.runtime.config import in_kubernetes
from services.signing.domain.pki import init_pki

PKI_DIR_ENVIRONMENT_VARIABLE = "AWARENESS_PKI_DIR"


def dev_pki_dir(data_dir: Path) -> Path:
    return data_dir / "pki"


def bootstrap_dev(data_dir: Path) -> None:
    """Create the development root CA and keys under ``data_dir/pki`` unless they exist.

    Does nothing when ``AWARENESS_PKI_DIR`` is set: in production the keys come from a read-only
    Kubernetes Secret, and no process may generate its own.
    """
    if os.environ.get(PKI_DIR_ENVIRONMENT_VARIABLE, "").strip() or in_kubernetes(os.environ):
        return
    init_pki(dev_pki_dir(data_dir))
