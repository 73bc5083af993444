"""First-run set-up for ``awareness up``: the development fingerprint secret under the data directory."""

from __future__ import annotations

import os
from pathlib import Path

from services.runtime.config import ensure_dev_secret, in_kubernetes

DEV_FINGERPRINT_FILE = "ingest-fingerprint-secret"


def bootstrap_dev(data_dir: Path) -> None:
    """Create ``data_dir/ingest-fingerprint-secret`` (0600) unless configured, existing or in Kubernetes."""
    configured = os.environ.get("AWARENESS_INGEST_FINGERPRINT_SECRET") or os.environ.get(
        "AWARENESS_INGEST_FINGERPRINT_SECRET_FILE"
    )
    if configured or in_kubernetes(os.environ):
        return
    ensure_dev_secret(data_dir / DEV_FINGERPRINT_FILE)
