"""An identity provider for end-to-end tests: a signing key, the JWKS file the gateway trusts, and
tokens with the claims the gateway checks."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec


@dataclass(frozen=True)
class IdentityProvider:
    issuer: str
    audience: str
    kid: str = "e2e"
    key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))

    def gateway_env(self, directory: Path) -> dict[str, str]:
        """Writes ``jwks.json`` (the public half) under ``directory``; the gateway's JWT settings."""
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.key.public_key()))
        jwk.update({"kid": self.kid, "alg": "ES256", "use": "sig"})
        jwks = directory / "jwks.json"
        jwks.write_text(json.dumps({"keys": [jwk]}))
        return {
            "AWARENESS_GATEWAY_JWKS_FILE": str(jwks),
            "AWARENESS_GATEWAY_JWT_ISSUER": self.issuer,
            "AWARENESS_GATEWAY_JWT_AUDIENCE": self.audience,
        }

    def token(self, **claims: Any) -> str:
        """A signed token for subject "erin" as an analyst, valid 5 minutes; ``claims`` override."""
        payload = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": "erin",
            "exp": int(time.time()) + 300,
            "roles": ["analyst"],
            **claims,
        }
        return jwt.encode(payload, self.key, algorithm="ES256", headers={"kid": self.kid})
