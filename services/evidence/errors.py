"""Errors of the shared evidence formats, each mapped to a gRPC code by the runtime."""

from __future__ import annotations

from typing import ClassVar

from services.runtime.errors import (
    AwarenessError,
    FailedPreconditionError,
    InvalidArgumentError,
)


class EvidenceError(AwarenessError):
    """Root of the evidence formats' errors."""

    reason = "EVIDENCE_ERROR"


class TamperedRecordError(EvidenceError):
    """A stored ciphertext failed authentication (altered, swapped between records, or wrong key)."""

    grpc_code_name: ClassVar[str] = "DATA_LOSS"
    reason: str = "RECORD_TAMPERED"


class NoteError(EvidenceError):
    """Root of the signed-note errors: what a verifier of a checkpoint catches."""

    reason = "NOTE_ERROR"


class MalformedNoteError(NoteError, InvalidArgumentError):
    """A signed note or checkpoint does not follow c2sp.org/signed-note or tlog-checkpoint."""

    reason = "MALFORMED_CHECKPOINT"


class UnknownSignerError(NoteError, FailedPreconditionError):
    """No signature on the note comes from a key the verifier trusts."""

    reason = "UNKNOWN_CHECKPOINT_SIGNER"


class InvalidSignatureError(NoteError, InvalidArgumentError):
    """A signature from a trusted key does not verify."""

    reason = "INVALID_SIGNATURE"
