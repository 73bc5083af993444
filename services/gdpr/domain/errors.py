"""Errors raised by the gdpr domain.

Each class names the gRPC status code (``grpc_code_name``) and the ``google.rpc.ErrorInfo`` reason
(UPPER_SNAKE) the transport layer reports for it, so api.py maps errors without a lookup table.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from services.runtime.errors import AwarenessError


class GdprError(AwarenessError):
    """Root of every gdpr domain error. ``metadata`` goes to ErrorInfo: never an identifier or key."""

    grpc_code_name: ClassVar[str] = "INTERNAL"
    reason: str = "GDPR_ERROR"

    def __init__(self, message: str, *, metadata: Mapping[str, str] | None = None) -> None:
        super().__init__(message, metadata=metadata)


class SubjectNotFoundError(GdprError):
    """No pseudonym is registered for the identifier (or the pseudonym is unknown)."""

    grpc_code_name = "NOT_FOUND"
    reason = "SUBJECT_NOT_FOUND"


class SubjectErasedError(GdprError):
    """The subject was erased: its mapping and data keys are gone, so nothing can be decrypted."""

    # NOT_FOUND rather than FAILED_PRECONDITION: the resource no longer exists and never will again.
    grpc_code_name = "NOT_FOUND"
    reason = "SUBJECT_ERASED"


class KeyUnwrapError(GdprError):
    """A wrapped data key could not be unwrapped: unknown KEK id, wrong AAD, or tampered ciphertext."""

    grpc_code_name = "INTERNAL"
    reason = "KEY_UNWRAP_FAILED"


class KeyringError(GdprError):
    """The KEK keyring (file, env value or Secret mount) is missing or malformed."""

    grpc_code_name = "INTERNAL"
    reason = "KEYRING_INVALID"


class UnknownPurposeError(GdprError):
    """A consent purpose that is not in the purposes registry."""

    grpc_code_name = "INVALID_ARGUMENT"
    reason = "UNKNOWN_PURPOSE"
