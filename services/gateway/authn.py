"""Who is calling: API keys from the gateway's store, or JWTs from a configured issuer.

Both arrive as ``Authorization: Bearer <credential>``. A credential starting ``awk_`` is
an API key; anything else is tried as a JWT when JWT authentication is configured.
Every failure is an UnauthenticatedError, which the app answers with 401 and a
``WWW-Authenticate`` challenge (RFC 6750); a key store that cannot be read is an
UnavailableError (503, reason KEY_STORE_UNAVAILABLE), never a 500.

Key records are cached in process for ``AWARENESS_GATEWAY_KEY_CACHE_SECONDS`` (5 s by
default, and never longer) so the hot path reads the store at most once per key per 5 s.
The secret is still checked and the expiry still read on every request; a revocation
reaches every replica within the cache lifetime, so within 5 s, and keys already verified
keep working through a store outage of that length. Concurrent first requests for one key
share a single store read.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import jwt
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.orm import Session, sessionmaker

from services.gateway import repository
from services.gateway.config import GatewayConfig
from services.gateway.domain import keys
from services.gateway.domain.keycache import TtlCache
from services.runtime.auth import ROLES, Principal
from services.runtime.db import run_db
from services.runtime.errors import UnauthenticatedError, UnavailableError

log = logging.getLogger("awareness.gateway.auth")

JWT_ALGORITHMS: Final = ["RS256", "ES256", "EdDSA"]


class JwtVerifier:
    """Signature, issuer, audience and expiry checks; keys from a JWKS file or URL."""

    def __init__(self, config: GatewayConfig) -> None:
        self._config = config
        self._client: jwt.PyJWKClient | None = None
        self._keyset: jwt.PyJWKSet | None = None
        if config.jwks_url:
            self._client = jwt.PyJWKClient(config.jwks_url, cache_keys=True, lifespan=300, timeout=5)
        elif config.jwks_file:
            self._keyset = jwt.PyJWKSet.from_json(Path(config.jwks_file).read_text())

    def _signing_key(self, token: str) -> Any:
        if self._client is not None:
            return self._client.get_signing_key_from_jwt(token).key
        assert self._keyset is not None
        header = jwt.get_unverified_header(token)
        kid = header.get("kid")
        candidates = [k for k in self._keyset.keys if kid is None or k.key_id == kid]
        if not candidates:
            raise jwt.InvalidTokenError("no key in the JWKS matches the token's kid")
        return candidates[0].key

    def verify(self, token: str) -> Principal:
        try:
            claims = jwt.decode(
                token,
                self._signing_key(token),
                algorithms=JWT_ALGORITHMS,
                audience=self._config.jwt_audience,
                issuer=self._config.jwt_issuer,
                leeway=self._config.jwt_leeway_seconds,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.PyJWKClientError as exc:
            raise UnauthenticatedError(
                "cannot fetch the JWT signing keys", reason="JWKS_UNAVAILABLE"
            ) from exc
        except jwt.ExpiredSignatureError as exc:
            raise UnauthenticatedError("token expired", reason="TOKEN_EXPIRED") from exc
        except jwt.InvalidAudienceError as exc:
            raise UnauthenticatedError("token audience is not accepted", reason="BAD_AUDIENCE") from exc
        except jwt.InvalidIssuerError as exc:
            raise UnauthenticatedError("token issuer is not accepted", reason="BAD_ISSUER") from exc
        except jwt.InvalidTokenError as exc:
            raise UnauthenticatedError("invalid token", reason="INVALID_TOKEN") from exc
        return Principal(
            subject=f"jwt:{claims['sub']}", roles=roles_from_claims(claims, self._config.jwt_roles_claim)
        )


def roles_from_claims(claims: Mapping[str, Any], claim: str) -> frozenset[str]:
    """The known roles a token's ``claim`` names (a list, or a space-separated string)."""
    raw = claims.get(claim, [])
    names = raw.split() if isinstance(raw, str) else raw if isinstance(raw, list) else []
    granted = frozenset(str(name) for name in names) & ROLES
    # "service" is for service-to-service calls only; no token can claim it.
    return granted - {"service"}


class Authenticator:
    def __init__(
        self,
        *,
        sessions: sessionmaker[Session],
        config: GatewayConfig,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        cache_clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sessions = sessions
        self._jwt = JwtVerifier(config) if config.jwt_enabled else None
        self._clock = clock
        self._cache: TtlCache[repository.KeyRecord] = TtlCache(
            ttl_seconds=config.key_cache_seconds, max_entries=config.key_cache_entries, clock=cache_clock
        )
        self._pending: dict[str, asyncio.Future[repository.KeyRecord | None]] = {}

    async def authenticate(self, authorization: str | None) -> Principal:
        if not authorization:
            raise UnauthenticatedError(
                "missing credentials: send Authorization: Bearer <key>", reason="NO_CREDENTIALS"
            )
        scheme, _, credential = authorization.strip().partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            raise UnauthenticatedError("use the Bearer scheme", reason="BAD_AUTHORIZATION_HEADER")
        if keys.looks_like_api_key(credential):
            return await self._api_key(credential)
        if self._jwt is not None:
            return await asyncio.to_thread(self._jwt.verify, credential)
        raise UnauthenticatedError("unknown credential", reason="INVALID_CREDENTIALS")

    async def _api_key(self, token: str) -> Principal:
        parsed = keys.parse_token(token)
        if parsed is None:
            raise UnauthenticatedError("malformed API key", reason="INVALID_CREDENTIALS")
        key_id, secret = parsed
        record = await self._key_record(key_id)
        if record is None or not keys.secret_matches(secret, record.secret_hash):
            raise UnauthenticatedError("unknown API key", reason="INVALID_CREDENTIALS")
        return self._key_principal(record)

    async def proven_key(self, key_id: str) -> Principal:
        """The principal of a key whose secret was proven earlier (a portal session's), for as long
        as the key stays usable: a revocation ends the session within the key cache's lifetime."""
        record = await self._key_record(key_id)
        if record is None:
            raise UnauthenticatedError("unknown API key", reason="INVALID_CREDENTIALS")
        return self._key_principal(record)

    def _key_principal(self, record: repository.KeyRecord) -> Principal:
        if record.revoked_at is not None:
            raise UnauthenticatedError("API key revoked", reason="KEY_REVOKED")
        if not record.usable(now=self._clock()):
            raise UnauthenticatedError("API key expired", reason="KEY_EXPIRED")
        return Principal(subject=f"apikey:{record.key_id}", roles=record.roles & ROLES)

    async def _key_record(self, key_id: str) -> repository.KeyRecord | None:
        cached = self._cache.get(key_id)
        if cached is not None:
            return cached
        pending = self._pending.get(key_id)
        if pending is None:
            pending = asyncio.ensure_future(run_db(self._load_key, key_id))
            self._pending[key_id] = pending
            pending.add_done_callback(lambda done: self._settle(key_id, done))
        # shield: one caller giving up (client disconnect) must not cancel the shared read.
        return await asyncio.shield(pending)

    def _settle(self, key_id: str, done: asyncio.Future[repository.KeyRecord | None]) -> None:
        self._pending.pop(key_id, None)
        if done.cancelled() or done.exception() is not None:
            return
        record = done.result()
        if record is not None:  # unknown ids are not cached: a new key works at once
            self._cache.put(key_id, record)

    def _load_key(self, key_id: str) -> repository.KeyRecord | None:
        try:
            with self._sessions() as session:
                return repository.find_key(session, key_id=key_id)
        except (DBAPIError, PoolTimeoutError) as exc:
            log.warning("API key store unavailable", extra={"error": type(exc).__name__})
            raise UnavailableError(
                "the API key store is unavailable; retry later", reason="KEY_STORE_UNAVAILABLE"
            ) from exc


def bearer_challenge(error: UnauthenticatedError) -> str:
    """The RFC 6750 ``WWW-Authenticate`` value for a refused credential."""
    if error.reason == "NO_CREDENTIALS":
        return 'Bearer realm="awareness"'
    description = json.dumps(error.message)  # a quoted-string with quotes escaped
    return f'Bearer realm="awareness", error="invalid_token", error_description={description}'
