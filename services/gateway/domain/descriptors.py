"""The contracts as the gateway sees them: HTTP rules, permissions and comments.

Everything comes from ``awareness/descriptors.binpb``, the FileDescriptorSet shipped in
the generated client package (source info included), so routes, OpenAPI and the
permission of each route have one source of truth: the protos.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final

from google.api import annotations_pb2 as http_annotations_pb2
from google.api import field_behavior_pb2, http_pb2
from google.protobuf import descriptor_pb2

from services.gateway.domain.templates import PathTemplate, parse_template

INTERNAL_PERMISSION: Final = "internal:call"
HTTP_METHODS: Final = ("get", "put", "post", "delete", "patch")

# FileDescriptorProto / DescriptorProto field numbers used by SourceCodeInfo paths.
_FILE_MESSAGE, _FILE_ENUM, _FILE_SERVICE = 4, 5, 6
_MESSAGE_FIELD, _MESSAGE_NESTED, _MESSAGE_ENUM = 2, 3, 4
_ENUM_VALUE, _SERVICE_METHOD = 2, 2


def load_descriptor_set() -> descriptor_pb2.FileDescriptorSet:
    """The shipped descriptor set, parsed with the option extensions registered."""
    _register_extensions()
    data = (importlib.resources.files("awareness") / "descriptors.binpb").read_bytes()
    return descriptor_pb2.FileDescriptorSet.FromString(data)


def _register_extensions() -> None:
    # Importing these registers google.api.http, field_behavior and required_permission,
    # so the options parse as extensions rather than unknown fields.
    from awareness.api.v1 import annotations_pb2  # noqa: F401


def import_generated_modules() -> None:
    """Register every message of the contracts in the default descriptor pool."""
    from google.rpc import error_details_pb2, status_pb2  # noqa: F401

    from services.runtime.protos import _ensure_loaded

    _ensure_loaded()


def required_permission_of(options: descriptor_pb2.MethodOptions) -> str | None:
    from awareness.api.v1 import annotations_pb2

    if not options.HasExtension(annotations_pb2.required_permission):
        return None
    value: str = options.Extensions[annotations_pb2.required_permission]
    return value


@dataclass(frozen=True, slots=True)
class HttpRoute:
    """One HTTP binding of one RPC."""

    rpc: str  # "/awareness.ingest.v1.IngestService/AppendEvent"
    service: str  # backend short name: "ingest"
    http_method: str  # "GET", "POST", ...
    template: PathTemplate
    body: str  # "", "*" or a top-level field name
    response_body: str
    permission: str
    input_type: str  # full message name without leading dot
    output_type: str
    server_streaming: bool
    summary: str
    description: str
    idempotent: bool = False

    @property
    def method_name(self) -> str:
        return self.rpc.rsplit("/", 1)[1]

    @property
    def operation_id(self) -> str:
        service = self.rpc.strip("/").split("/")[0].rsplit(".", 1)[1]
        return f"{service}_{self.method_name}"


@dataclass
class Comments:
    """Leading comments of messages, fields, enums, enum values, services and methods."""

    by_symbol: dict[str, str] = field(default_factory=dict)

    def get(self, symbol: str) -> str:
        return self.by_symbol.get(symbol, "")


def _clean(comment: str) -> str:
    lines = [line[1:] if line.startswith(" ") else line for line in comment.strip("\n").split("\n")]
    return "\n".join(lines).strip()


def collect_comments(descriptor_set: descriptor_pb2.FileDescriptorSet) -> Comments:
    comments = Comments()
    for file in descriptor_set.file:
        by_path = {
            tuple(location.path): _clean(location.leading_comments)
            for location in file.source_code_info.location
            if location.leading_comments
        }
        prefix = file.package
        for index, message in enumerate(file.message_type):
            _message_comments(comments, by_path, message, f"{prefix}.{message.name}", (_FILE_MESSAGE, index))
        for index, enum in enumerate(file.enum_type):
            _enum_comments(comments, by_path, enum, f"{prefix}.{enum.name}", (_FILE_ENUM, index))
        for s_index, service in enumerate(file.service):
            name = f"{prefix}.{service.name}"
            comments.by_symbol[name] = by_path.get((_FILE_SERVICE, s_index), "")
            for m_index, method in enumerate(service.method):
                path = (_FILE_SERVICE, s_index, _SERVICE_METHOD, m_index)
                comments.by_symbol[f"{name}.{method.name}"] = by_path.get(path, "")
    return comments


def _message_comments(
    comments: Comments,
    by_path: dict[tuple[int, ...], str],
    message: descriptor_pb2.DescriptorProto,
    name: str,
    path: tuple[int, ...],
) -> None:
    comments.by_symbol[name] = by_path.get(path, "")
    for index, item in enumerate(message.field):
        comments.by_symbol[f"{name}.{item.name}"] = by_path.get((*path, _MESSAGE_FIELD, index), "")
    for index, nested in enumerate(message.nested_type):
        _message_comments(comments, by_path, nested, f"{name}.{nested.name}", (*path, _MESSAGE_NESTED, index))
    for index, enum in enumerate(message.enum_type):
        _enum_comments(comments, by_path, enum, f"{name}.{enum.name}", (*path, _MESSAGE_ENUM, index))


def _enum_comments(
    comments: Comments,
    by_path: dict[tuple[int, ...], str],
    enum: descriptor_pb2.EnumDescriptorProto,
    name: str,
    path: tuple[int, ...],
) -> None:
    comments.by_symbol[name] = by_path.get(path, "")
    for index, value in enumerate(enum.value):
        comments.by_symbol[f"{name}.{value.name}"] = by_path.get((*path, _ENUM_VALUE, index), "")


def _first_sentence(text: str) -> str:
    paragraph = " ".join(text.split("\n\n", 1)[0].split())
    head, dot, _ = paragraph.partition(". ")
    return head + ("." if dot else "")


def _rules(rule: http_pb2.HttpRule) -> Iterator[http_pb2.HttpRule]:
    yield rule
    yield from rule.additional_bindings


def _verb_and_path(rule: http_pb2.HttpRule) -> tuple[str, str] | None:
    pattern = rule.WhichOneof("pattern")
    if pattern is None:
        return None
    if pattern == "custom":
        return rule.custom.kind.upper(), rule.custom.path
    return pattern.upper(), str(getattr(rule, pattern))


def _backend_name(package: str) -> str:
    # awareness.<service>.v1 -> <service>
    parts = package.split(".")
    return parts[1] if len(parts) >= 3 and parts[0] == "awareness" else package


def build_routes(descriptor_set: descriptor_pb2.FileDescriptorSet, comments: Comments) -> list[HttpRoute]:
    """Every exposable HTTP binding, most specific template first.

    Not exposed: methods without a google.api.http rule, client-streaming methods,
    methods without a declared permission (fail closed), and ``internal:call`` methods.
    """
    routes: list[HttpRoute] = []
    for file in descriptor_set.file:
        for service in file.service:
            service_name = f"{file.package}.{service.name}"
            for method in service.method:
                options = method.options
                if not options.HasExtension(http_annotations_pb2.http) or method.client_streaming:
                    continue
                permission = required_permission_of(options)
                if not permission or permission == INTERNAL_PERMISSION:
                    continue
                text = comments.get(f"{service_name}.{method.name}")
                summary = _first_sentence(text)
                for rule in _rules(options.Extensions[http_annotations_pb2.http]):
                    verb_path = _verb_and_path(rule)
                    if verb_path is None:
                        continue
                    verb, path = verb_path
                    routes.append(
                        HttpRoute(
                            rpc=f"/{service_name}/{method.name}",
                            service=_backend_name(file.package),
                            http_method=verb,
                            template=parse_template(path),
                            body=rule.body,
                            response_body=rule.response_body,
                            permission=permission,
                            input_type=method.input_type.lstrip("."),
                            output_type=method.output_type.lstrip("."),
                            server_streaming=method.server_streaming,
                            summary=summary.strip(),
                            description=text,
                            idempotent=options.idempotency_level
                            in (
                                descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS,
                                descriptor_pb2.MethodOptions.IDEMPOTENT,
                            ),
                        )
                    )
    routes.sort(key=lambda r: r.template.specificity())
    return routes


@dataclass(frozen=True, slots=True)
class DoorMethod:
    """One RPC the gRPC door serves."""

    rpc: str  # "/awareness.ingest.v1.IngestService/StreamAppendEvents"
    service: str  # backend short name: "ingest"
    permission: str
    client_streaming: bool
    server_streaming: bool


def door_methods(descriptor_set: descriptor_pb2.FileDescriptorSet) -> list[DoorMethod]:
    """Every method a caller's role can be granted: the HTTP routes' rule without the need for an
    HTTP binding, so client-streaming methods are in. Not served: ``internal:call`` methods and
    methods without a declared permission (fail closed)."""
    methods: list[DoorMethod] = []
    for file in descriptor_set.file:
        for service in file.service:
            for method in service.method:
                permission = required_permission_of(method.options)
                if not permission or permission == INTERNAL_PERMISSION:
                    continue
                methods.append(
                    DoorMethod(
                        rpc=f"/{file.package}.{service.name}/{method.name}",
                        service=_backend_name(file.package),
                        permission=permission,
                        client_streaming=method.client_streaming,
                        server_streaming=method.server_streaming,
                    )
                )
    return methods


def field_behaviors(options: descriptor_pb2.FieldOptions) -> set[int]:
    return set(options.Extensions[field_behavior_pb2.field_behavior])
