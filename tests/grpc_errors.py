"""What tests ask of a failed gRPC call: the error itself, and the ErrorInfo reason it carries."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import grpc
import pytest
from grpc_status import rpc_status

from services.runtime.errors import error_info


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
