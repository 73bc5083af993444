"""First-run development material for the gateway (called by ``awareness up``)."""

from __future__ import annotations

import os
from pathlib import Path

from services.gateway.config import DOOR_TLS_CERT_VAR, DOOR_TLS_DIR, DOOR_TLS_NAME, GOPHISH_SECRET_FILE
from services.runtime.config import ensure_dev_secret, in_kubernetes
from services.runtime.devtls import ensure_server_certificate


def bootstrap_dev(data_dir: Path) -> None:
    """Create what production provides, under ``data_dir``: the GoPhish webhook secret, and the gRPC
    door's certificate from the development CA (``door-tls/ca.crt`` is what clients trust)."""
    if in_kubernetes(os.environ):
        return
    if not (os.environ.get("AWARENESS_GOPHISH_SECRET") or os.environ.get("AWARENESS_GOPHISH_SECRET_FILE")):
        ensure_dev_secret(data_dir / GOPHISH_SECRET_FILE)
    if not os.environ.get(DOOR_TLS_CERT_VAR):
        ensure_server_certificate(data_dir / DOOR_TLS_DIR, DOOR_TLS_NAME)
