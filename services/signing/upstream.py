"""An optional upstream RFC 3161 TSA, reached over HTTP behind a circuit breaker.

Installations that want a public TSA's token on each checkpoint set ``AWARENESS_UPSTREAM_TSA_URL``.
Every call has a short timeout and goes through a pybreaker breaker; any failure (transport,
HTTP status, a rejection, a token that does not cover the checkpoint or echo the nonce, or one that
does not verify against the configured upstream CA) returns ``None`` and the caller falls back to
the internal TSA. An open breaker answers ``None`` at once, without touching the network.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Sequence

import httpx
import pybreaker
from cryptography import x509
from prometheus_client import Counter

from services.signing.domain.tsa import (
    IssuedToken,
    build_timestamp_request,
    describe_token,
    parse_timestamp_response,
    verify_timestamp_token,
)

log = logging.getLogger("awareness.signing.upstream")

QUERY_CONTENT_TYPE = "application/timestamp-query"
REPLY_CONTENT_TYPE = "application/timestamp-reply"
MAX_REPLY_BYTES = 64 * 1024


class UpstreamTsaError(Exception):
    """The upstream TSA answered, but not with a usable token (counts as a breaker failure)."""


class UpstreamTsa:
    """Asks one upstream TSA for SHA-256 tokens."""

    def __init__(
        self,
        *,
        url: str,
        timeout_seconds: float,
        breaker: pybreaker.CircuitBreaker,
        trusted_roots: Sequence[x509.Certificate] = (),
        requests: Counter | None = None,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.url = url
        self._timeout = httpx.Timeout(timeout_seconds)
        self.breaker = breaker
        self._trusted_roots = tuple(trusted_roots)
        self._requests = requests
        # No connection is opened until the first request.
        self._client = client or httpx.AsyncClient(timeout=self._timeout, follow_redirects=False)

    async def timestamp(self, data: bytes) -> IssuedToken | None:
        """A token over SHA-256(``data``) from the upstream TSA, or ``None`` to fall back."""
        nonce = secrets.randbits(63)
        query = build_timestamp_request(data=data, nonce=nonce, certificate_requested=True)
        attempted = False
        try:
            with self.breaker.calling():
                attempted = True
                reply = await self._client.post(
                    self.url,
                    content=query,
                    headers={"Content-Type": QUERY_CONTENT_TYPE, "Accept": REPLY_CONTENT_TYPE},
                    timeout=self._timeout,
                )
                token = self._check_reply(reply, data=data, nonce=nonce)
        except pybreaker.CircuitBreakerError:
            # Raised before the call when the breaker is open, and instead of the error of the
            # failure that opens it (then the upstream was reached).
            self._count("error" if attempted else "breaker_open")
            log.warning("upstream TSA breaker open; using the internal TSA", extra={"tsa": self.url})
            return None
        except Exception as exc:  # any failure means: use the internal TSA
            self._count("error")
            log.warning(
                "upstream TSA failed; using the internal TSA",
                extra={"tsa": self.url, "error": type(exc).__name__, "detail": str(exc)[:200]},
            )
            return None
        self._count("ok")
        return token

    def _check_reply(self, reply: httpx.Response, *, data: bytes, nonce: int) -> IssuedToken:
        if reply.status_code != httpx.codes.OK:
            raise UpstreamTsaError(f"HTTP {reply.status_code}")
        if len(reply.content) > MAX_REPLY_BYTES:
            raise UpstreamTsaError("reply too large")
        status = parse_timestamp_response(reply.content)
        if status.status not in {"granted", "granted_with_mods"} or status.token is None:
            raise UpstreamTsaError(f"status {status.status} {sorted(status.failure_info)}")
        token = describe_token(status.token)
        if token.hash_algorithm != "sha256" or token.hashed_message != hashlib.sha256(data).digest():
            raise UpstreamTsaError("the token does not cover the data")
        if token.nonce != nonce:
            raise UpstreamTsaError("the token does not echo the nonce")
        if self._trusted_roots:
            verify_timestamp_token(status.token, data=data, trusted_roots=self._trusted_roots)
        return token

    def _count(self, outcome: str) -> None:
        if self._requests is not None:
            self._requests.labels(outcome).inc()

    async def close(self) -> None:
        await self._client.aclose()
