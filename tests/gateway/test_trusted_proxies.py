"""Behind the ingress, each client is limited by its own address only if the proxy is trusted.

The chart sets AWARENESS_GATEWAY_FORWARDED_ALLOW_IPS to the ingress controller's addresses
(tests/helm/test_security_hardening.py); here a real gateway process, reached from 127.0.0.1 as
the ingress controller would reach it, shows what that setting changes.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.gateway.processes import gateway_process

LIMIT = 3


def _unauthenticated(url: str, client: str) -> int:
    response = httpx.get(f"{url}/v1/events", headers={"X-Forwarded-For": client}, timeout=10)
    return response.status_code


@pytest.mark.parametrize("trusted", [True, False])
def test_a_client_behind_a_trusted_proxy_has_its_own_bucket(tmp_path: Path, trusted: bool) -> None:
    env = {
        "AWARENESS_GATEWAY_RATE_AUTH_FAILURES_PER_MIN": str(LIMIT),
        "AWARENESS_GATEWAY_FORWARDED_ALLOW_IPS": "127.0.0.1" if trusted else "",
    }
    with gateway_process(tmp_path / "var", **env) as gateway:
        first = [_unauthenticated(gateway.public, "203.0.113.1") for _ in range(LIMIT + 1)]
        assert first == [401] * LIMIT + [429]
        other = _unauthenticated(gateway.public, "203.0.113.2")
    # Trusted: another client has a bucket of its own. Untrusted: every client shares the proxy's.
    assert other == (401 if trusted else 429)
