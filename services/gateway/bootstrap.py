"""First-run development material for the gateway (called by ``awareness up``)."""

from __future__ import annotations

import os
from pathlib import Path

from services.gateway.config import GOPHISH_SECRET_FILE
from services.runtime.config import ensure_dev_secret, in_kubernetes


def bootstrap_dev(data_dir: Path) -> None:
    """Create the GoPhish webhook secret under ``data_dir`` unless production provides one."""
    configured = os.environ.get("AWARENESS_GOPHISH_SECRET") or os.environ.get("AWARENESS_GOPHISH_SECRET_FILE")
    if configured or in_kubernetes(os.environ):
        return
    ensure_dev_secret(data_dir / GOPHISH_SECRET_FILE)
