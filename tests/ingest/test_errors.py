from __future__ import annotations

import re

import pytest

from services.ingest.domain import errors
from services.ingest.domain.errors import FieldViolation

GRPC_CODE_NAMES = {
    "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
    "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
    "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
}  # fmt: skip

ERROR_CLASSES = [
    errors.IngestError,
    errors.ValidationError,
    errors.EventConflictError,
    errors.InvalidProofRequestError,
    errors.MissingTreeNodeError,
]


@pytest.mark.parametrize("error_class", ERROR_CLASSES)
def test_every_error_names_a_grpc_code_and_an_upper_snake_reason(error_class):
    assert issubclass(error_class, errors.IngestError)
    assert error_class.grpc_code_name in GRPC_CODE_NAMES
    assert re.fullmatch(r"[A-Z][A-Z0-9]*(_[A-Z0-9]+)*", error_class.reason)


def test_specific_codes():
    assert errors.ValidationError.grpc_code_name == "INVALID_ARGUMENT"
    assert errors.EventConflictError.grpc_code_name == "ALREADY_EXISTS"
    assert errors.EventConflictError.reason == "EVENT_ID_CONFLICT"


def test_validation_error_carries_all_violations():
    violations = [FieldViolation("event.type", "unknown"), FieldViolation("event.subject", "empty")]
    error = errors.ValidationError(violations)
    assert error.violations == tuple(violations)
    assert "event.type" in str(error) and "event.subject" in str(error)


def test_field_violation_prefix():
    assert FieldViolation("subject", "empty").with_prefix("events[2]") == FieldViolation(
        "events[2].subject", "empty"
    )


def test_conflict_names_the_event():
    error = errors.EventConflictError(event_id="abc")
    assert error.event_id == "abc" and "abc" in str(error)
