"""One error root for the suite; each maps to a gRPC code and a ``google.rpc.Status``.

Domain packages subclass these (``class PolicyError(AwarenessError)``) and set
``grpc_code_name`` and ``reason``; the server interceptor turns any of them into a
``google.rpc.Status`` with an ``ErrorInfo`` detail. Nothing else reaches a client:
unexpected exceptions become INTERNAL with an opaque reference, never a stack trace.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

ERROR_DOMAIN = "awareness.dev"


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One invalid field, shaped like ``google.rpc.BadRequest.FieldViolation``."""

    field: str
    description: str

    def with_prefix(self, prefix: str) -> FieldViolation:
        """The same violation nested under ``prefix`` (e.g. ``events[3]``)."""
        return FieldViolation(f"{prefix}.{self.field}" if prefix else self.field, self.description)


class AwarenessError(Exception):
    """Root of every error a service raises on purpose."""

    grpc_code_name: ClassVar[str] = "INTERNAL"
    reason: str = "INTERNAL_ERROR"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        violations: Sequence[FieldViolation] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason
        self.metadata = dict(metadata or {})
        self.violations = tuple(violations)

    @property
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode[self.grpc_code_name]

    def to_status(self, *, domain: str = ERROR_DOMAIN) -> status_pb2.Status:
        details: list[any_pb2.Any] = []
        info = any_pb2.Any()
        info.Pack(error_details_pb2.ErrorInfo(reason=self.reason, domain=domain, metadata=self.metadata))
        details.append(info)
        if self.violations:
            bad_request = error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                    for v in self.violations
                ]
            )
            packed = any_pb2.Any()
            packed.Pack(bad_request)
            details.append(packed)
        return status_pb2.Status(
            code=getattr(code_pb2, self.grpc_code_name), message=self.message, details=details
        )


class InvalidArgumentError(AwarenessError):
    grpc_code_name = "INVALID_ARGUMENT"
    reason = "INVALID_ARGUMENT"


class NotFoundError(AwarenessError):
    grpc_code_name = "NOT_FOUND"
    reason = "NOT_FOUND"


class AlreadyExistsError(AwarenessError):
    grpc_code_name = "ALREADY_EXISTS"
    reason = "ALREADY_EXISTS"


class FailedPreconditionError(AwarenessError):
    grpc_code_name = "FAILED_PRECONDITION"
    reason = "FAILED_PRECONDITION"


class AbortedError(AwarenessError):
    grpc_code_name = "ABORTED"
    reason = "ABORTED"


class PermissionDeniedError(AwarenessError):
    grpc_code_name = "PERMISSION_DENIED"
    reason = "PERMISSION_DENIED"


class UnauthenticatedError(AwarenessError):
    grpc_code_name = "UNAUTHENTICATED"
    reason = "UNAUTHENTICATED"


class ResourceExhaustedError(AwarenessError):
    grpc_code_name = "RESOURCE_EXHAUSTED"
    reason = "RESOURCE_EXHAUSTED"


class UnavailableError(AwarenessError):
    grpc_code_name = "UNAVAILABLE"
    reason = "UNAVAILABLE"


class DependencyUnavailableError(UnavailableError):
    """A downstream service failed or its circuit breaker is open."""

    reason = "DEPENDENCY_UNAVAILABLE"


class DeadlineExceededError(AwarenessError):
    grpc_code_name = "DEADLINE_EXCEEDED"
    reason = "DEADLINE_EXCEEDED"


class UnimplementedError(AwarenessError):
    grpc_code_name = "UNIMPLEMENTED"
    reason = "NOT_IMPLEMENTED_YET"


def error_info(status: status_pb2.Status) -> error_details_pb2.ErrorInfo | None:
    """The ``ErrorInfo`` detail of a status, if any (for clients and tests)."""
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None


def field_violations(status: status_pb2.Status) -> list[FieldViolation]:
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            return [FieldViolation(v.field, v.description) for v in bad_request.field_violations]
    return []
