"""HTTP responses the gateway builds itself: Status JSON errors, rate-limit headers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import grpc
from google.rpc import status_pb2
from grpc_status import rpc_status
from starlette.responses import JSONResponse

from services.gateway.authn import bearer_challenge
from services.gateway.domain.ratelimit import Decision
from services.gateway.domain.status import code_from_number, http_status, make_status, status_json
from services.runtime.errors import AwarenessError, UnauthenticatedError


def status_response(
    status: status_pb2.Status, *, http: int | None = None, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    code = code_from_number(status.code)
    all_headers = dict(headers or {})
    if code == grpc.StatusCode.UNAUTHENTICATED and "WWW-Authenticate" not in all_headers:
        all_headers["WWW-Authenticate"] = 'Bearer realm="awareness"'
    return JSONResponse(status_json(status), status_code=http or http_status(code), headers=all_headers)


def error_response(
    code: grpc.StatusCode,
    message: str,
    *,
    reason: str,
    http: int | None = None,
    metadata: Mapping[str, str] | None = None,
    violations: Sequence[tuple[str, str]] = (),
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    status = make_status(code, message, reason=reason, metadata=metadata, violations=violations)
    return status_response(status, http=http, headers=headers)


def awareness_error_response(
    error: AwarenessError, *, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    all_headers = dict(headers or {})
    if isinstance(error, UnauthenticatedError):
        all_headers["WWW-Authenticate"] = bearer_challenge(error)
    return status_response(error.to_status(), headers=all_headers)


def rpc_error_response(
    error: grpc.aio.AioRpcError, *, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """The backend's own google.rpc.Status (from grpc-status-details-bin), or one built from its code."""
    status: Any = None
    try:
        status = rpc_status.from_call(error)
    except ValueError:
        status = None
    if status is None:
        code = error.code()
        status = status_pb2.Status(code=code.value[0], message=error.details() or code.name)
    return status_response(status, headers=headers)


def rate_limit_headers(decision: Decision) -> dict[str, str]:
    if decision.scope is None:
        return {}
    headers = {
        "X-RateLimit-Limit": str(decision.limit),
        "X-RateLimit-Remaining": str(decision.remaining),
        "X-RateLimit-Reset": str(decision.reset_seconds),
    }
    if not decision.allowed:
        headers["Retry-After"] = str(decision.retry_after_seconds)
    return headers
