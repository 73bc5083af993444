"""An OpenID Connect provider for end-to-end tests, over a real socket on 127.0.0.1.

It implements what the portal's sign-in relies on, and checks it as a real provider would:
discovery, the authorization endpoint (code flow; PKCE with S256 required), the token endpoint
(client_secret_basic, single-use codes, the verifier checked against the challenge) and a JWKS.
It signs in whoever the test names in ``user``, without a login form.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode

import jwt
import uvicorn
from cryptography.hazmat.primitives.asymmetric import ec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from tests.support.resources import free_port


@dataclass
class Grant:
    redirect_uri: str
    challenge: str
    nonce: str
    user: dict[str, Any]


@dataclass
class OidcProvider:
    client_id: str = "awareness-portal"
    client_secret: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    issuer: str = ""
    # Who the next authorization signs in: claims added to the ID token (sub, roles, ...).
    user: dict[str, Any] = field(default_factory=lambda: {"sub": "olga", "roles": ["analyst"]})
    key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    grants: dict[str, Grant] = field(default_factory=dict)
    # What the token endpoint saw, for the tests to check (PKCE verified, codes refused on replay).
    redeemed: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        return {
            "AWARENESS_PORTAL_OIDC_ISSUER": self.issuer,
            "AWARENESS_PORTAL_OIDC_CLIENT_ID": self.client_id,
            "AWARENESS_PORTAL_OIDC_CLIENT_SECRET": self.client_secret,
        }

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/.well-known/openid-configuration", self.discovery),
                Route("/authorize", self.authorize),
                Route("/token", self.token, methods=["POST"]),
                Route("/jwks", self.jwks),
            ]
        )

    async def discovery(self, _request: Request) -> Response:
        return JSONResponse(
            {
                "issuer": self.issuer,
                "authorization_endpoint": f"{self.issuer}/authorize",
                "token_endpoint": f"{self.issuer}/token",
                "jwks_uri": f"{self.issuer}/jwks",
                "response_types_supported": ["code"],
                "code_challenge_methods_supported": ["S256"],
                "id_token_signing_alg_values_supported": ["ES256"],
            }
        )

    async def authorize(self, request: Request) -> Response:
        params = request.query_params
        problems = [
            name
            for name, ok in (
                ("client_id", params.get("client_id") == self.client_id),
                ("response_type", params.get("response_type") == "code"),
                ("code_challenge_method", params.get("code_challenge_method") == "S256"),
                ("code_challenge", bool(params.get("code_challenge"))),
                ("scope", "openid" in params.get("scope", "").split()),
                ("state", bool(params.get("state"))),
                ("nonce", bool(params.get("nonce"))),
            )
            if not ok
        ]
        if problems:
            self.refused.append(f"authorize: {problems}")
            return JSONResponse({"error": "invalid_request", "bad": problems}, status_code=400)
        code = secrets.token_urlsafe(16)
        self.grants[code] = Grant(
            params["redirect_uri"], params["code_challenge"], params["nonce"], dict(self.user)
        )
        query = urlencode({"code": code, "state": params["state"]})
        return RedirectResponse(f"{params['redirect_uri']}?{query}", status_code=302)

    async def token(self, request: Request) -> Response:
        form = dict(parse_qsl((await request.body()).decode()))  # no multipart parser needed
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        client = base64.b64decode(credentials).decode() if scheme.lower() == "basic" else ""
        grant = self.grants.pop(str(form.get("code", "")), None)  # single use
        verifier = str(form.get("code_verifier", ""))
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        if client != f"{self.client_id}:{self.client_secret}":
            return self._refuse("invalid_client")
        if grant is None:
            return self._refuse("invalid_grant")
        if form.get("redirect_uri") != grant.redirect_uri or challenge != grant.challenge:
            return self._refuse("invalid_grant: redirect_uri or PKCE verifier")
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "aud": self.client_id,
            "iat": now,
            "exp": now + 300,
            "nonce": grant.nonce,
        }
        id_token = jwt.encode({**claims, **grant.user}, self.key, algorithm="ES256", headers={"kid": "test"})
        self.redeemed.append(verifier)
        return JSONResponse(
            {
                "access_token": secrets.token_urlsafe(16),
                "token_type": "Bearer",
                "expires_in": 300,
                "id_token": id_token,
            }
        )

    def _refuse(self, error: str) -> Response:
        self.refused.append(error)
        return JSONResponse({"error": error.split(":")[0]}, status_code=400)

    async def jwks(self, _request: Request) -> Response:
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.key.public_key()))
        jwk.update({"kid": "test", "alg": "ES256", "use": "sig"})
        return JSONResponse({"keys": [jwk]})


@contextmanager
def running_provider() -> Iterator[OidcProvider]:
    """The provider served by uvicorn in a thread on a free port, stopped afterwards."""
    port = free_port()
    provider = OidcProvider(issuer=f"http://127.0.0.1:{port}")
    server = uvicorn.Server(uvicorn.Config(provider.app(), host="127.0.0.1", port=port, log_config=None))
    thread = threading.Thread(target=server.run, name="oidc-provider", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("the test OpenID provider did not start")
        time.sleep(0.05)
    try:
        yield provider
    finally:
        server.should_exit = True
        thread.join(timeout=10)
