"""Errors the signing domain raises on purpose, each mapped to a gRPC code by the runtime.

The checkpoint-note errors live with the note format in ``services.evidence.errors``.
"""

from __future__ import annotations

from services.runtime.errors import (
    AwarenessError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
)


class SigningError(AwarenessError):
    """Root of the signing domain's errors."""

    reason = "SIGNING_ERROR"


class PkiError(SigningError, FailedPreconditionError):
    """The key directory is missing, incomplete or inconsistent."""

    reason = "PKI_UNAVAILABLE"


class KeyNotFoundError(SigningError, NotFoundError):
    """No key with that id or purpose is in the keyring."""

    reason = "KEY_NOT_FOUND"


class TimestampVerificationError(SigningError, InvalidArgumentError):
    """An RFC 3161 token or response is malformed, untrusted, or does not cover the data."""

    reason = "TIMESTAMP_INVALID"
