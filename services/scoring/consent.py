"""Consent checks against the gdpr service: the runtime's checker (services.runtime.consent), which
analytics uses too. Nothing is scored without a known answer; ingest leaves the scores pending for its
reconciler when gdpr cannot answer.
"""

from __future__ import annotations

from services.runtime.consent import (
    MAX_CACHED,
    MAX_PSEUDONYMS_PER_CALL,
    PROFILING,
    TRAINING_DATA,
    ConsentChecker,
    ConsentUnavailableError,
    peer_cause,
)

__all__ = [
    "MAX_CACHED",
    "MAX_PSEUDONYMS_PER_CALL",
    "PROFILING",
    "TRAINING_DATA",
    "ConsentChecker",
    "ConsentUnavailableError",
    "peer_cause",
]
