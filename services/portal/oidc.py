"""Sign-in with OpenID Connect: the authorization code flow with PKCE (RFC 7636), for people whose
organisation has an identity provider.

Authlib builds the authorization request (state, nonce, S256 code challenge) and redeems the code;
PyJWT, as for the gateway's bearer JWTs, checks the ID token's signature against the provider's
JWKS, its issuer, audience, expiry and nonce. Roles come from the token's roles claim, as for JWTs.

Between the redirect to the provider and its answer, the flow's state, nonce, PKCE verifier and
where to go next wait in a short-lived HttpOnly cookie, MACed with the gateway's own secret. The
callback is refused unless its ``state`` matches that cookie, so an attacker cannot finish a
sign-in they started in somebody else's browser.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from typing import Any, Final

import httpx
import jwt
from authlib.common.security import generate_token
from authlib.integrations.httpx_client import AsyncOAuth2Client

from services.gateway.authn import JWT_ALGORITHMS, roles_from_claims
from services.portal.config import OidcConfig
from services.runtime import auth
from services.runtime.errors import UnauthenticatedError

PENDING_SECONDS: Final = 600
DISCOVERY_SECONDS: Final = 300
HTTP_TIMEOUT_SECONDS: Final = 10.0


@dataclass(frozen=True, slots=True)
class Pending:
    """A sign-in sent to the provider and not yet back."""

    state: str
    nonce: str
    code_verifier: str
    next_path: str
    expires: int


@dataclass(frozen=True, slots=True)
class Started:
    authorization_url: str
    cookie: str


class OidcSignIn:
    def __init__(self, config: OidcConfig, *, secret: bytes) -> None:
        self.config = config
        self._secret = secret
        self._metadata: dict[str, Any] | None = None
        self._metadata_time = 0.0
        self._jwks: jwt.PyJWKClient | None = None

    async def _discovery(self) -> dict[str, Any]:
        """The provider's metadata (OpenID Connect Discovery), cached for a few minutes."""
        if self._metadata is None or time.monotonic() - self._metadata_time > DISCOVERY_SECONDS:
            url = self.config.issuer.rstrip("/") + "/.well-known/openid-configuration"
            try:
                async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_SECONDS) as client:
                    response = await client.get(url)
                    response.raise_for_status()
                    metadata = response.json()
            except (httpx.HTTPError, ValueError) as exc:
                raise UnauthenticatedError(
                    "the identity provider cannot be reached", reason="OIDC_UNAVAILABLE"
                ) from exc
            if metadata.get("issuer") != self.config.issuer:
                raise UnauthenticatedError(
                    "the identity provider names another issuer", reason="OIDC_BAD_ISSUER"
                )
            self._metadata, self._metadata_time = metadata, time.monotonic()
            self._jwks = jwt.PyJWKClient(str(metadata["jwks_uri"]), cache_keys=True, lifespan=300, timeout=5)
        return self._metadata

    def _client(self, redirect_uri: str) -> AsyncOAuth2Client:
        return AsyncOAuth2Client(
            client_id=self.config.client_id,
            client_secret=self.config.client_secret,
            scope=self.config.scopes,
            redirect_uri=redirect_uri,
            code_challenge_method="S256",
            timeout=HTTP_TIMEOUT_SECONDS,
        )

    async def start(self, *, next_path: str, redirect_uri: str) -> Started:
        """Where to send the browser, and the cookie that remembers this sign-in until it returns."""
        metadata = await self._discovery()
        pending = Pending(
            state=generate_token(32),
            nonce=generate_token(32),
            code_verifier=generate_token(64),
            next_path=next_path,
            expires=int(time.time()) + PENDING_SECONDS,
        )
        async with self._client(redirect_uri) as client:
            url, _state = client.create_authorization_url(
                metadata["authorization_endpoint"],
                state=pending.state,
                code_verifier=pending.code_verifier,
                nonce=pending.nonce,
            )
        return Started(authorization_url=url, cookie=self._seal(pending))

    async def finish(
        self, *, cookie: str | None, state: str, code: str, redirect_uri: str
    ) -> tuple[auth.Principal, str]:
        """The person the provider signed in, and where they were going."""
        pending = self._open(cookie)
        if pending is None or not hmac.compare_digest(pending.state, state):
            raise UnauthenticatedError(
                "this sign-in was not started here, or took too long", reason="OIDC_STATE"
            )
        metadata = await self._discovery()
        try:
            async with self._client(redirect_uri) as client:
                token = await client.fetch_token(
                    metadata["token_endpoint"], code=code, code_verifier=pending.code_verifier
                )
        except Exception as exc:  # Authlib raises its own OAuthError, httpx its transport errors
            raise UnauthenticatedError(
                "the identity provider refused the sign-in", reason="OIDC_TOKEN"
            ) from exc
        id_token = token.get("id_token")
        if not isinstance(id_token, str):
            raise UnauthenticatedError("the identity provider sent no ID token", reason="OIDC_TOKEN")
        claims = await asyncio.to_thread(self._verified_claims, id_token)
        if not hmac.compare_digest(str(claims.get("nonce", "")), pending.nonce):
            raise UnauthenticatedError("the ID token is not for this sign-in", reason="OIDC_NONCE")
        roles = roles_from_claims(claims, self.config.roles_claim)
        return auth.Principal(subject=f"oidc:{claims['sub']}", roles=roles), pending.next_path

    def _verified_claims(self, id_token: str) -> dict[str, Any]:
        assert self._jwks is not None
        try:
            key = self._jwks.get_signing_key_from_jwt(id_token).key
            claims: dict[str, Any] = jwt.decode(
                id_token,
                key,
                algorithms=JWT_ALGORITHMS,
                audience=self.config.client_id,
                issuer=self.config.issuer,
                leeway=30,
                options={"require": ["exp", "iss", "aud", "sub", "iat"]},
            )
        except jwt.PyJWTError as exc:
            raise UnauthenticatedError("the ID token does not verify", reason="OIDC_ID_TOKEN") from exc
        return claims

    def _seal(self, pending: Pending) -> str:
        body = base64.urlsafe_b64encode(
            json.dumps(
                [pending.state, pending.nonce, pending.code_verifier, pending.next_path, pending.expires]
            ).encode()
        ).decode()
        return f"{body}.{self._mac(body)}"

    def _open(self, cookie: str | None) -> Pending | None:
        body, _, mac = (cookie or "").partition(".")
        if not body or not hmac.compare_digest(mac, self._mac(body)):
            return None
        try:
            state, nonce, verifier, next_path, expires = json.loads(base64.urlsafe_b64decode(body))
        except (ValueError, TypeError):
            return None
        if int(expires) < time.time():
            return None
        return Pending(str(state), str(nonce), str(verifier), str(next_path), int(expires))

    def _mac(self, body: str) -> str:
        return hmac.new(self._secret, b"portal-oidc\n" + body.encode(), hashlib.sha256).hexdigest()
