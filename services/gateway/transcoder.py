"""Generic HTTP -> gRPC transcoding: one Starlette endpoint serves every annotated RPC."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import descriptor, descriptor_pool, message, message_factory

from services.gateway.domain.descriptors import HttpRoute
from services.gateway.domain.transcode import RequestError, build_request, strict_json_loads, to_json
from services.runtime.clients import ChannelFactory

log = logging.getLogger("awareness.gateway.transcoder")

JSON_TYPES = ("application/json",)


class MediaTypeError(RequestError):
    """The body is not in a media type the route accepts (415)."""


@dataclass(frozen=True, slots=True)
class RouteMatch:
    route: HttpRoute
    bindings: dict[str, str]


@dataclass
class Router:
    """Routes in specificity order; ``match`` also reports the methods a path allows (405)."""

    routes: list[HttpRoute]
    _by_method: dict[str, list[HttpRoute]] = field(default_factory=dict, init=False)
    # (method, path) -> the route a path without variables picks; the scan would pick the same.
    _exact: dict[tuple[str, str], HttpRoute] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        for route in self.routes:  # keeps the specificity order within each method
            self._by_method.setdefault(route.http_method, []).append(route)
        for method, routes in self._by_method.items():
            for index, route in enumerate(routes):
                template = route.template
                if any(segment.kind != "literal" for segment in template.segments):
                    continue
                path = "/" + "/".join(segment.text for segment in template.segments)
                path += f":{template.verb}" if template.verb else ""
                if not any(earlier.template.match(path) is not None for earlier in routes[:index]):
                    self._exact.setdefault((method, path), route)

    def match(self, method: str, raw_path: str) -> RouteMatch | set[str] | None:
        exact = self._exact.get((method, raw_path))
        if exact is not None:  # the busiest routes (POST /v1/events) skip the scan
            return RouteMatch(route=exact, bindings={})
        # Only this method's routes on the hot path; the full scan is for the 405 answer.
        for route in self._by_method.get(method, ()):
            bindings = route.template.match(raw_path)
            if bindings is not None:
                return RouteMatch(route=route, bindings=bindings)
        allowed: set[str] = set()
        for route in self.routes:
            bindings = route.template.match(raw_path)
            if bindings is None:
                continue
            if route.http_method == method:
                return RouteMatch(route=route, bindings=bindings)
            allowed.add(route.http_method)
        return allowed or None


@dataclass
class Backend:
    """Message classes and multi-callables, made once per RPC and reused."""

    channels: ChannelFactory
    timeout_seconds: float
    method_timeouts: dict[str, float] = field(default_factory=dict)
    pool: descriptor_pool.DescriptorPool = field(default_factory=descriptor_pool.Default)
    _callables: dict[str, Any] = field(default_factory=dict)
    _classes: dict[str, type[message.Message]] = field(default_factory=dict)

    def message_class(self, full_name: str) -> type[message.Message]:
        known = self._classes.get(full_name)
        if known is None:
            found: descriptor.Descriptor = self.pool.FindMessageTypeByName(full_name)
            known = self._classes[full_name] = message_factory.GetMessageClass(found)
        return known

    def _callable(self, route: HttpRoute) -> Any:
        key = route.rpc
        if key not in self._callables:
            request_class = self.message_class(route.input_type)
            response_class = self.message_class(route.output_type)
            channel = self.channels.channel(route.service)
            factory = channel.unary_stream if route.server_streaming else channel.unary_unary
            self._callables[key] = factory(
                route.rpc,
                request_serializer=request_class.SerializeToString,
                response_deserializer=response_class.FromString,
            )
        return self._callables[key]

    async def unary(self, route: HttpRoute, request: message.Message) -> message.Message:
        timeout = self.method_timeouts.get(route.rpc, self.timeout_seconds)
        response: message.Message = await self._callable(route)(request, timeout=timeout)
        return response

    async def stream(self, route: HttpRoute, request: message.Message) -> tuple[bytes, AsyncIterator[bytes]]:
        """The first chunk (so errors surface before the status line) and the rest."""
        call = self._callable(route)(
            request, timeout=self.method_timeouts.get(route.rpc, self.timeout_seconds)
        )
        iterator = call.__aiter__()
        try:
            first = await iterator.__anext__()
        except StopAsyncIteration:
            first = None

        async def rest() -> AsyncIterator[bytes]:
            async for item in iterator:
                yield stream_chunk(item)

        return (stream_chunk(first) if first is not None else b""), rest()


def stream_chunk(item: message.Message) -> bytes:
    """A message with a single bytes field streams as those bytes; anything else as JSON lines."""
    fields = item.DESCRIPTOR.fields
    if len(fields) == 1 and fields[0].type == descriptor.FieldDescriptor.TYPE_BYTES:
        data: bytes = getattr(item, fields[0].name)
        return data
    return (json.dumps(to_json(item), separators=(",", ":")) + "\n").encode()


def is_json_content_type(value: str | None) -> bool:
    if not value:
        return False
    media_type = value.split(";", 1)[0].strip().lower()
    return media_type in JSON_TYPES or media_type.endswith("+json")


def parse_http_request(
    *,
    route: HttpRoute,
    request_class: type[message.Message],
    bindings: dict[str, str],
    query: list[tuple[str, str]],
    body: bytes,
    content_type: str | None,
) -> message.Message:
    """The protobuf request for this HTTP request; RequestError names what is wrong."""
    parsed: Any = None
    if body.strip():
        if not route.body:
            raise RequestError("", "this route takes no request body")
        if not is_json_content_type(content_type):
            raise MediaTypeError("", "request body must be application/json")
        parsed = strict_json_loads(body)
    return build_request(
        request_class(), body_field=route.body, body=parsed, path_values=bindings, query=query
    )


def response_payload(route: HttpRoute, response: message.Message) -> Any:
    if route.response_body:
        return to_json(response).get(response.DESCRIPTOR.fields_by_name[route.response_body].json_name)
    return to_json(response)


def is_rpc_error(exc: BaseException) -> bool:
    return isinstance(exc, grpc.aio.AioRpcError)
