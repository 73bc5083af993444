"""gRPC status -> HTTP status, and ``google.rpc.Status`` as the JSON error body.

The mapping is grpc-gateway's (runtime/errors.go HTTPStatusFromCode), so clients that
know one gateway know this one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

import grpc
from google.protobuf import any_pb2, json_format
from google.rpc import code_pb2, error_details_pb2, status_pb2

from services.runtime.errors import ERROR_DOMAIN, AwarenessError, error_info, field_violations

HTTP_STATUS_BY_CODE: Final[Mapping[grpc.StatusCode, int]] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
}
_CODE_BY_NUMBER: Final = {code.value[0]: code for code in grpc.StatusCode}


def http_status(code: grpc.StatusCode) -> int:
    return HTTP_STATUS_BY_CODE.get(code, 500)


def code_from_number(number: int) -> grpc.StatusCode:
    return _CODE_BY_NUMBER.get(number, grpc.StatusCode.UNKNOWN)


def make_status(
    code: grpc.StatusCode,
    message: str,
    *,
    reason: str,
    metadata: Mapping[str, str] | None = None,
    violations: Sequence[tuple[str, str]] = (),
) -> status_pb2.Status:
    """A Status raised by the gateway itself, with ErrorInfo (and BadRequest when fields are at fault)."""
    details: list[any_pb2.Any] = []
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN, metadata=dict(metadata or {})))
    details.append(info)
    if violations:
        bad = any_pb2.Any()
        bad.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=f, description=d) for f, d in violations
                ]
            )
        )
        details.append(bad)
    return status_pb2.Status(code=getattr(code_pb2, code.name), message=message, details=details)


def status_json(status: status_pb2.Status) -> dict[str, Any]:
    """The Status as JSON; details whose type the gateway does not know are dropped, not fatal."""
    body: dict[str, Any] = {"code": status.code, "message": status.message, "details": []}
    for detail in status.details:
        try:
            body["details"].append(json_format.MessageToDict(detail, preserving_proto_field_name=False))
        except (json_format.SerializeToJsonError, TypeError, KeyError):
            body["details"].append({"@type": detail.type_url})
    return body


class StatusError(AwarenessError):
    """A ``google.rpc.Status`` a service answered for one item of a batch, as that item's error."""

    def __init__(self, status: status_pb2.Status) -> None:
        info = error_info(status)
        super().__init__(
            status.message,
            reason=info.reason if info is not None else "UNKNOWN",
            metadata=dict(info.metadata) if info is not None else None,
            violations=field_violations(status),
        )
        self.status = status

    @property
    def code(self) -> grpc.StatusCode:
        return code_from_number(self.status.code)

    def to_status(self, *, domain: str = ERROR_DOMAIN) -> status_pb2.Status:
        return self.status


def as_single_item(
    status: status_pb2.Status, *, index: int, batch_field: str, single_field: str
) -> status_pb2.Status:
    """Item ``index``'s error in a batch call, worded as the one-item call would word it.

    A batch names the item's fields ``events[3].type``; the one-item call names them
    ``event.type``. Field violations and the message are rewritten; other details are kept.
    """
    batch_prefix, single_prefix = f"{batch_field}[{index}]", single_field
    single = status_pb2.Status(
        code=status.code, message=_renamed(status.message, batch_prefix, single_prefix)
    )
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            for violation in bad_request.field_violations:
                violation.field = _renamed_path(violation.field, batch_prefix, single_prefix)
            single.details.add().Pack(bad_request)
        else:
            single.details.add().CopyFrom(detail)
    return single


def _renamed_path(path: str, old: str, new: str) -> str:
    if path == old or path.startswith((old + ".", old + "[")):
        return new + path[len(old) :]
    return path


def _renamed(message: str, old: str, new: str) -> str:
    return message.replace(old + ".", new + ".").replace(old + "[", new + "[")
