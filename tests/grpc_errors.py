"""What tests ask of a failed gRPC call: the error itself, the ErrorInfo reason and the fields it
blames."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import grpc
import pytest
from grpc_status import rpc_status

from services.runtime.errors import error_info, field_violations


async def rpc_error(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    """Await a call that must fail, and return its error."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


def reason_of(error: grpc.aio.AioRpcError) -> str:
    """The google.rpc.ErrorInfo reason of a failed call (it must carry one)."""
    status = rpc_status.from_call(error)
    assert status is not None
    info = error_info(status)
    assert info is not None
    return str(info.reason)


def violated_fields(error: grpc.aio.AioRpcError) -> set[str]:
    """The fields a failed call's google.rpc.BadRequest names (the call must carry a Status)."""
    status = rpc_status.from_call(error)
    assert status is not None
    return {violation.field for violation in field_violations(status)}
