from __future__ import annotations

import re

import grpc
import pytest

from services.gdpr.domain import errors

ERROR_CLASSES = [
    errors.SubjectNotFoundError,
    errors.SubjectErasedError,
    errors.KeyUnwrapError,
    errors.KeyringError,
    errors.UnknownPurposeError,
]


@pytest.mark.parametrize("error_class", [errors.GdprError, *ERROR_CLASSES])
def test_every_error_names_a_real_grpc_code_and_an_upper_snake_reason(
    error_class: type[errors.GdprError],
) -> None:
    assert issubclass(error_class, errors.GdprError)
    assert grpc.StatusCode[error_class.grpc_code_name].name == error_class.grpc_code_name
    assert re.fullmatch(r"[A-Z][A-Z0-9]*(_[A-Z0-9]+)*", error_class.reason)
    error = error_class("message", metadata={"k": "v"})
    assert str(error) == "message"
    assert error.metadata == {"k": "v"}


def test_reasons_are_distinct() -> None:
    reasons = [error_class.reason for error_class in ERROR_CLASSES]
    assert len(set(reasons)) == len(reasons)


@pytest.mark.parametrize(
    ("error_class", "code", "reason"),
    [
        (errors.SubjectNotFoundError, "NOT_FOUND", "SUBJECT_NOT_FOUND"),
        (errors.SubjectErasedError, "NOT_FOUND", "SUBJECT_ERASED"),
        (errors.UnknownPurposeError, "INVALID_ARGUMENT", "UNKNOWN_PURPOSE"),
    ],
)
def test_specified_codes(error_class: type[errors.GdprError], code: str, reason: str) -> None:
    assert (error_class.grpc_code_name, error_class.reason) == (code, reason)
