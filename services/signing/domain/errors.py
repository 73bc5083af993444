"""Errors the signing domain raises on purpose, each mapped to a gRPC code by the runtime."""

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


class MalformedNoteError(SigningError, InvalidArgumentError):
    """A signed note or checkpoint does not follow c2sp.org/signed-note or tlog-checkpoint."""

    reason = "MALFORMED_CHECKPOINT"


class UnknownSignerError(SigningError, FailedPreconditionError):
    """No signature on the note comes from a key the verifier trusts."""

    reason = "UNKNOWN_CHECKPOINT_SIGNER"


class InvalidSignatureError(SigningError, InvalidArgumentError):
    """A signature from a trusted key does not verify."""

    reason = "INVALID_SIGNATURE"


class TimestampVerificationError(SigningError, InvalidArgumentError):
    """An RFC 3161 token or response is malformed, untrusted, or does not cover the data."""

    reason = "TIMESTAMP_INVALID"
