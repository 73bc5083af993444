"""Consent checks against gdpr's CheckConsent, with a short per-pseudonym cache (scoring, analytics).

The cache keeps both answers (granted and withdrawn) for `ttl_seconds`: a withdrawal takes effect within
that time on every replica. When gdpr cannot answer for a pseudonym that is not cached, the check fails
as a whole with UNAVAILABLE (reason CONSENT_UNAVAILABLE): nothing is processed without knowing, and the
caller (ingest) sends the events again later from its reconciler.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Final

from awareness.gdpr.v1 import gdpr_pb2, gdpr_pb2_grpc

from services.runtime.clients import call_peer
from services.runtime.errors import AwarenessError, DependencyUnavailableError

# Purposes of gdpr's consent records (services/gdpr/domain/consent.py) that services check.
PROFILING: Final = "profiling"
TRAINING_DATA: Final = "training_data"
ANALYTICS: Final = "analytics"
MAX_PSEUDONYMS_PER_CALL: Final = 1000
MAX_CACHED: Final = 200_000


class ConsentUnavailableError(DependencyUnavailableError):
    """gdpr could not say whether the subjects consent; nothing was processed."""

    reason = "CONSENT_UNAVAILABLE"


def peer_cause(error: AwarenessError) -> str:
    """What made a peer call fail, for logs and metadata: the peer's status code, else our reason."""
    return error.metadata.get("code") or error.reason


class ConsentChecker:
    def __init__(
        self,
        *,
        gdpr: Callable[[], gdpr_pb2_grpc.GdprServiceStub],
        purpose: str,
        ttl_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._gdpr = gdpr
        self.purpose = purpose
        self._ttl = ttl_seconds
        self._clock = clock
        self._cache: dict[str, tuple[bool, float]] = {}

    async def granted(self, pseudonyms: Sequence[str]) -> dict[str, bool]:
        """Whether each pseudonym's subject allows the purpose; raises ConsentUnavailableError."""
        now = self._clock()
        answers: dict[str, bool] = {}
        missing: list[str] = []
        for pseudonym in dict.fromkeys(pseudonyms):
            cached = self._cache.get(pseudonym)
            if cached is not None and cached[1] > now:
                answers[pseudonym] = cached[0]
            else:
                missing.append(pseudonym)
        for start in range(0, len(missing), MAX_PSEUDONYMS_PER_CALL):
            chunk = missing[start : start + MAX_PSEUDONYMS_PER_CALL]
            try:
                response = await call_peer(
                    self._gdpr().CheckConsent(
                        gdpr_pb2.CheckConsentRequest(pseudonyms=chunk, purpose=self.purpose)
                    ),
                    target="gdpr",
                )
            except AwarenessError as error:
                # Fails closed whatever gdpr said: nothing is processed without a known answer.
                code = peer_cause(error)
                raise ConsentUnavailableError(
                    f"consent to {self.purpose} cannot be checked: gdpr unavailable ({code})",
                    metadata={"purpose": self.purpose, "cause": code},
                ) from error
            for status in response.results:
                answers[status.pseudonym] = status.granted
        if missing and self._ttl > 0:
            self._remember({p: answers[p] for p in missing if p in answers}, expires=now + self._ttl)
        return answers

    def _remember(self, answers: dict[str, bool], *, expires: float) -> None:
        if len(self._cache) + len(answers) > MAX_CACHED:
            now = self._clock()
            self._cache = {k: v for k, v in self._cache.items() if v[1] > now}
            if len(self._cache) + len(answers) > MAX_CACHED:
                self._cache.clear()
        for pseudonym, granted in answers.items():
            self._cache[pseudonym] = (granted, expires)
