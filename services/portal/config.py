"""Portal settings, read once from ``Settings.env`` (see docs/portal.md)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from services.runtime.config import env_bool, env_int

IDLE_SECONDS_VAR = "AWARENESS_PORTAL_SESSION_IDLE_SECONDS"
MAX_SECONDS_VAR = "AWARENESS_PORTAL_SESSION_MAX_SECONDS"
SECURE_COOKIES_VAR = "AWARENESS_PORTAL_SECURE_COOKIES"


@dataclass(frozen=True, kw_only=True)
class PortalConfig:
    # A session ends after this long without a request, and in any case this long after sign-in.
    idle_seconds: int = 30 * 60
    max_seconds: int = 12 * 60 * 60
    # Mark the cookie Secure even when the request reached the gateway over plain HTTP (TLS ends at
    # a proxy the gateway does not trust for X-Forwarded-Proto). Requests over HTTPS always get it.
    secure_cookies: bool = False


def load_portal_config(env: Mapping[str, str]) -> PortalConfig:
    return PortalConfig(
        idle_seconds=env_int(env, IDLE_SECONDS_VAR, 30 * 60, minimum=1),
        max_seconds=env_int(env, MAX_SECONDS_VAR, 12 * 60 * 60, minimum=1),
        secure_cookies=env_bool(env, SECURE_COOKIES_VAR, False),
    )
