"""Domain errors of the ingest service.

Each error carries the gRPC status code name and the google.rpc.ErrorInfo reason the transport
layer reports; the domain itself never imports gRPC. A sealed field that fails authentication
raises ``services.evidence.errors.TamperedRecordError`` (the envelope is shared with gdpr).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from services.runtime.errors import AwarenessError, FieldViolation

__all__ = [
    "EventConflictError",
    "FieldViolation",
    "IngestError",
    "InvalidProofRequestError",
    "MissingTreeNodeError",
    "ValidationError",
]


class IngestError(AwarenessError):
    """Root of the ingest domain errors."""

    grpc_code_name: ClassVar[str] = "INTERNAL"
    reason: str = "INGEST_INTERNAL"


class ValidationError(IngestError):
    """A submitted event breaks one or more rules; carries every violation at once."""

    grpc_code_name: ClassVar[str] = "INVALID_ARGUMENT"
    reason: str = "EVENT_INVALID"

    def __init__(self, violations: Sequence[FieldViolation]) -> None:
        listed = "; ".join(f"{violation.field}: {violation.description}" for violation in violations)
        super().__init__(f"invalid event: {listed}", violations=violations)


class EventConflictError(IngestError):
    """The client's event_id was already used for an event with different content."""

    grpc_code_name: ClassVar[str] = "ALREADY_EXISTS"
    reason: str = "EVENT_ID_CONFLICT"

    def __init__(self, *, event_id: str) -> None:
        self.event_id = event_id
        super().__init__(f"event {event_id} already exists with different content")


class InvalidProofRequestError(IngestError):
    """A Merkle proof or root was asked for sizes or indices that do not describe a tree."""

    grpc_code_name: ClassVar[str] = "INVALID_ARGUMENT"
    reason: str = "INVALID_PROOF_REQUEST"


class MissingTreeNodeError(IngestError):
    """The node store lacks a Merkle node that must exist for the requested tree size."""

    grpc_code_name: ClassVar[str] = "DATA_LOSS"
    reason: str = "MERKLE_NODE_MISSING"

    def __init__(self, *, missing: Sequence[tuple[int, int]]) -> None:
        self.missing: tuple[tuple[int, int], ...] = tuple(sorted(missing))
        super().__init__(f"Merkle nodes missing from the store (level, index): {list(self.missing)}")
