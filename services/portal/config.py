"""Portal settings, read once from ``Settings.env`` (see docs/portal.md)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from services.runtime.config import ConfigError, env_bool, env_int, env_str, read_secret

IDLE_SECONDS_VAR = "AWARENESS_PORTAL_SESSION_IDLE_SECONDS"
MAX_SECONDS_VAR = "AWARENESS_PORTAL_SESSION_MAX_SECONDS"
SECURE_COOKIES_VAR = "AWARENESS_PORTAL_SECURE_COOKIES"
OIDC_ISSUER_VAR = "AWARENESS_PORTAL_OIDC_ISSUER"
OIDC_CLIENT_ID_VAR = "AWARENESS_PORTAL_OIDC_CLIENT_ID"
OIDC_CLIENT_SECRET_VAR = "AWARENESS_PORTAL_OIDC_CLIENT_SECRET"  # noqa: S105 - a variable name


@dataclass(frozen=True, kw_only=True)
class OidcConfig:
    """Sign-in with an OpenID Connect provider (authorization code flow with PKCE)."""

    issuer: str
    client_id: str
    client_secret: str
    # Where the provider's token names the person's roles (as AWARENESS_GATEWAY_JWT_ROLES_CLAIM).
    roles_claim: str = "roles"
    scopes: str = "openid profile email"
    # The portal's public address as the provider knows it (https://awareness.example.org), when
    # the gateway sits behind a proxy; else taken from the request.
    public_url: str = ""


@dataclass(frozen=True, kw_only=True)
class PortalConfig:
    # A session ends after this long without a request, and in any case this long after sign-in.
    idle_seconds: int = 30 * 60
    max_seconds: int = 12 * 60 * 60
    # Mark the cookie Secure even when the request reached the gateway over plain HTTP (TLS ends at
    # a proxy the gateway does not trust for X-Forwarded-Proto). Requests over HTTPS always get it.
    secure_cookies: bool = False
    oidc: OidcConfig | None = None


def load_portal_config(env: Mapping[str, str]) -> PortalConfig:
    return PortalConfig(
        idle_seconds=env_int(env, IDLE_SECONDS_VAR, 30 * 60, minimum=1),
        max_seconds=env_int(env, MAX_SECONDS_VAR, 12 * 60 * 60, minimum=1),
        secure_cookies=env_bool(env, SECURE_COOKIES_VAR, False),
        oidc=_oidc(env),
    )


def _oidc(env: Mapping[str, str]) -> OidcConfig | None:
    issuer = env_str(env, OIDC_ISSUER_VAR, "")
    if not issuer:
        return None
    client_id = env_str(env, OIDC_CLIENT_ID_VAR, "")
    secret = read_secret(env, OIDC_CLIENT_SECRET_VAR, min_bytes=1)
    if not client_id or secret is None:
        raise ConfigError(
            f"{OIDC_ISSUER_VAR} needs {OIDC_CLIENT_ID_VAR} and "
            f"{OIDC_CLIENT_SECRET_VAR} (or {OIDC_CLIENT_SECRET_VAR}_FILE)"
        )
    return OidcConfig(
        issuer=issuer,
        client_id=client_id,
        client_secret=secret.decode(),
        roles_claim=env_str(
            env,
            "AWARENESS_PORTAL_OIDC_ROLES_CLAIM",
            env_str(env, "AWARENESS_GATEWAY_JWT_ROLES_CLAIM", "roles"),
        ),
        scopes=env_str(env, "AWARENESS_PORTAL_OIDC_SCOPES", "openid profile email"),
        public_url=env_str(env, "AWARENESS_PORTAL_PUBLIC_URL", "").rstrip("/"),
    )
