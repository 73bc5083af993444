"""Domain errors of the policy service.

Every error carries an UPPER_SNAKE ``reason`` (for ``google.rpc.ErrorInfo``) and the name of the gRPC status
code it maps to, so the transport layer translates them with a table lookup instead of per-class code.
Each one that has a runtime counterpart also subclasses it under a ``Policy`` name of its own: one error
root, and no runtime error name redefined.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from services.runtime.errors import (
    AwarenessError,
    InvalidArgumentError,
    PermissionDeniedError,
    UnauthenticatedError,
)


class PolicyError(AwarenessError):
    """Root of every policy-domain error; ``metadata`` holds ErrorInfo facts (rule position, state)."""

    reason: str = "POLICY_ERROR"
    grpc_code_name: ClassVar[str] = "UNKNOWN"

    def __init__(self, message: str, *, reason: str | None = None, metadata: Mapping[str, str] | None = None):
        super().__init__(message, reason=reason, metadata=metadata)


class PolicyInvalidArgumentError(PolicyError, InvalidArgumentError):
    """A request field is missing or malformed (e.g. a reject without a reason, an unknown severity).

    When several fields of one request are invalid, the first one's error is raised and ``others`` holds the
    rest, so one answer can name every invalid field.
    """

    reason = "INVALID_ARGUMENT"
    grpc_code_name = "INVALID_ARGUMENT"
    others: tuple[PolicyInvalidArgumentError, ...] = ()


class InvalidRuleError(PolicyInvalidArgumentError):
    """A CEL rule failed to parse or type-check, is not boolean, or is too long.

    ``line`` and ``column`` are 1-based, ``offset`` is the 0-based character offset into the rule; all three
    are ``None`` when the compiler reported no position (e.g. its nesting limit was hit).
    """

    reason = "INVALID_RULE"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        line: int | None = None,
        column: int | None = None,
        offset: int | None = None,
    ):
        metadata = {}
        if line is not None and column is not None:
            metadata = {"line": str(line), "column": str(column)}
        if offset is not None:
            metadata["offset"] = str(offset)
        super().__init__(message, reason=reason, metadata=metadata)
        self.line = line
        self.column = column
        self.offset = offset


class RuleEvaluationError(PolicyError):
    """A compiled rule failed while evaluating one event (missing map key, division by zero, budget...)."""

    reason = "RULE_EVALUATION_FAILED"
    grpc_code_name = "INTERNAL"


class IllegalTransitionError(PolicyError):
    """The requested lifecycle action is not allowed from the policy version's current state."""

    reason = "ILLEGAL_TRANSITION"
    grpc_code_name = "FAILED_PRECONDITION"


class PolicyPermissionDeniedError(PolicyError, PermissionDeniedError):
    """The principal lacks the permission the action needs."""

    reason = "PERMISSION_DENIED"
    grpc_code_name = "PERMISSION_DENIED"


class SeparationOfDutiesError(PolicyPermissionDeniedError):
    """The approver wrote or submitted the very version they try to approve."""

    reason = "SEPARATION_OF_DUTIES"


class PolicyUnauthenticatedError(PolicyError, UnauthenticatedError):
    """No principal was given."""

    reason = "UNAUTHENTICATED"
    grpc_code_name = "UNAUTHENTICATED"


class EtagMismatchError(PolicyError):
    """The caller's etag is stale: the policy version changed since it was read."""

    reason = "ETAG_MISMATCH"
    grpc_code_name = "ABORTED"
