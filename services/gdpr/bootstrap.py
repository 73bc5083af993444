"""First-run development keys for ``awareness up`` (never used when production secrets are configured)."""

from __future__ import annotations

import os
from pathlib import Path

from services.gdpr.keysource import ensure_dev_key_material, production_configured
from services.runtime.config import in_kubernetes


def bootstrap_dev(data_dir: Path) -> None:
    """Create ``data_dir/gdpr-kek.json`` and ``data_dir/gdpr-lookup-secret`` (0600) unless they exist.

    Does nothing when AWARENESS_KEK_FILE, AWARENESS_KEK or AWARENESS_LOOKUP_SECRET(_FILE) is set: those
    name the production secrets, and a generated key beside them would only hide a misconfiguration.
    """
    if production_configured(os.environ) or in_kubernetes(os.environ):
        return
    ensure_dev_key_material(data_dir)
