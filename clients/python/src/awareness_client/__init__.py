"""Connect to the Awareness gateway's gRPC door and use the generated stubs unchanged.

    import os
    import awareness_client
    from awareness.ingest.v1 import ingest_pb2_grpc

    channel = awareness_client.connect("awareness.example.org:8081", api_key=os.environ["AWARENESS_API_KEY"])
    ingest = ingest_pb2_grpc.IngestServiceStub(channel)

``connect`` returns a channel that sends ``authorization: Bearer <key>`` on every call and
retries the methods the contracts mark idempotent (``NO_SIDE_EFFECTS`` or ``IDEMPOTENT``)
when the door answers UNAVAILABLE. ``connect_aio`` does the same for ``grpc.aio``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from importlib import resources
from typing import Any

import grpc
from google.protobuf import descriptor_pb2

__all__ = ["connect", "connect_aio", "retry_service_config"]

AUTHORIZATION = "authorization"
RETRY_POLICY = {
    "maxAttempts": 4,
    "initialBackoff": "0.1s",
    "maxBackoff": "2s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}
_IDEMPOTENT = (descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS, descriptor_pb2.MethodOptions.IDEMPOTENT)


def retry_service_config() -> str:
    """gRPC service config: retries for every idempotent method of the contracts in this wheel."""
    raw = resources.files("awareness").joinpath("descriptors.binpb").read_bytes()
    names = [
        {"service": f"{file.package}.{service.name}", "method": method.name}
        for file in descriptor_pb2.FileDescriptorSet.FromString(raw).file
        if file.package.startswith("awareness.")
        for service in file.service
        for method in service.method
        if method.options.idempotency_level in _IDEMPOTENT
    ]
    return json.dumps({"methodConfig": [{"name": names, "retryPolicy": RETRY_POLICY}]})


def _credentials(tls: bool | bytes) -> grpc.ChannelCredentials | None:
    if tls is False:
        return None
    return grpc.ssl_channel_credentials(root_certificates=None if tls is True else tls)


def _options(extra: Sequence[tuple[str, Any]]) -> list[tuple[str, Any]]:
    return [("grpc.service_config", retry_service_config()), ("grpc.enable_retries", 1), *extra]


def _with_bearer(metadata: Sequence[tuple[str, str | bytes]] | None, bearer: str) -> list[tuple[str, Any]]:
    kept = [(key, value) for key, value in metadata or () if key != AUTHORIZATION]
    return [*kept, (AUTHORIZATION, bearer)]


def _bearer(api_key: str | None, token: str | None) -> str:
    if bool(api_key) == bool(token):
        raise ValueError("give exactly one of api_key (an awk_ key) or token (a JWT)")
    return f"Bearer {api_key or token}"


_SYNC_KINDS: tuple[type[Any], ...] = (
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
)


class _Bearer(*_SYNC_KINDS):  # type: ignore[misc]
    """Adds the credential to every call of a synchronous channel."""

    def __init__(self, bearer: str) -> None:
        self._bearer = bearer

    def _details(self, details: Any) -> Any:
        return _CallDetails(
            details.method,
            details.timeout,
            _with_bearer(details.metadata, self._bearer),
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Callable[..., Any], details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation: Callable[..., Any], details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)


class _CallDetails(grpc.ClientCallDetails):  # type: ignore[misc]
    def __init__(
        self,
        method: str,
        timeout: float | None,
        metadata: Any,
        credentials: Any,
        wait_for_ready: bool | None,
        compression: Any,
    ) -> None:
        self.method = method
        self.timeout = timeout
        self.metadata = metadata
        self.credentials = credentials
        self.wait_for_ready = wait_for_ready
        self.compression = compression


def connect(
    target: str,
    *,
    api_key: str | None = None,
    token: str | None = None,
    tls: bool | bytes = True,
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.Channel:
    """A channel to the door at ``target`` (``host:port``) that authenticates every call.

    ``tls``: True checks the door's certificate against the system's roots, PEM bytes against
    that root instead, False sends in plaintext (only for a door on this machine).
    """
    bearer = _bearer(api_key, token)
    credentials = _credentials(tls)
    channel = (
        grpc.insecure_channel(target, options=_options(options))
        if credentials is None
        else grpc.secure_channel(target, credentials, options=_options(options))
    )
    return grpc.intercept_channel(channel, _Bearer(bearer))


def connect_aio(
    target: str,
    *,
    api_key: str | None = None,
    token: str | None = None,
    tls: bool | bytes = True,
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.aio.Channel:
    """``connect`` for asyncio code: a ``grpc.aio`` channel."""
    bearer = _bearer(api_key, token)
    credentials = _credentials(tls)
    interceptors = [kind(bearer) for kind in _AIO_KINDS]
    if credentials is None:
        return grpc.aio.insecure_channel(target, options=_options(options), interceptors=interceptors)
    return grpc.aio.secure_channel(target, credentials, options=_options(options), interceptors=interceptors)


def _aio_details(details: grpc.aio.ClientCallDetails, bearer: str) -> grpc.aio.ClientCallDetails:
    return grpc.aio.ClientCallDetails(
        method=details.method,
        timeout=details.timeout,
        metadata=grpc.aio.Metadata(*_with_bearer(details.metadata, bearer)),
        credentials=details.credentials,
        wait_for_ready=details.wait_for_ready,
    )


class _AioUnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    def __init__(self, bearer: str) -> None:
        self._bearer = bearer

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_aio_details(details, self._bearer), request)


class _AioUnaryStream(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    def __init__(self, bearer: str) -> None:
        self._bearer = bearer

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_aio_details(details, self._bearer), request)


class _AioStreamUnary(grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[misc]
    def __init__(self, bearer: str) -> None:
        self._bearer = bearer

    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(_aio_details(details, self._bearer), requests)


class _AioStreamStream(grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc]
    def __init__(self, bearer: str) -> None:
        self._bearer = bearer

    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(_aio_details(details, self._bearer), requests)


# grpc.aio files each interceptor under the first kind it matches: one class per kind.
_AIO_KINDS = (_AioUnaryUnary, _AioUnaryStream, _AioStreamUnary, _AioStreamStream)
