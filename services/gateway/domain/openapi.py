"""The OpenAPI 3.1 document, generated from the same descriptors as the routes.

Schemas follow the proto3 JSON mapping the gateway speaks: lowerCamelCase names, enums
as their value names, 64-bit integers as decimal strings, Timestamp as an RFC 3339
date-time, Duration as "1.5s", bytes as base64, maps as objects, oneofs documented and
enforced as "at most one of". Request schemas (suffix ``-Input``) carry the fields marked
``(google.api.field_behavior) = REQUIRED`` and refuse unknown properties, as the gateway
does; response schemas require nothing, because proto3 JSON omits default values.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from google.api import field_behavior_pb2
from google.protobuf import descriptor, descriptor_pool

from services.gateway.domain.descriptors import Comments, HttpRoute

FieldDescriptor = descriptor.FieldDescriptor
STATUS_SCHEMA: Final = "google.rpc.Status"
_INT32 = {"type": "integer", "format": "int32", "minimum": -(2**31), "maximum": 2**31 - 1}
_UINT32 = {"type": "integer", "format": "int64", "minimum": 0, "maximum": 2**32 - 1}
_INT64 = {"type": "string", "format": "int64", "pattern": "^-?[0-9]{1,19}$"}
_UINT64 = {"type": "string", "format": "uint64", "pattern": "^[0-9]{1,20}$"}
_SCALARS: Final[dict[int, dict[str, Any]]] = {
    FieldDescriptor.TYPE_DOUBLE: {"type": "number", "format": "double"},
    FieldDescriptor.TYPE_FLOAT: {"type": "number", "format": "float"},
    FieldDescriptor.TYPE_INT32: _INT32,
    FieldDescriptor.TYPE_SINT32: _INT32,
    FieldDescriptor.TYPE_SFIXED32: _INT32,
    FieldDescriptor.TYPE_UINT32: _UINT32,
    FieldDescriptor.TYPE_FIXED32: _UINT32,
    FieldDescriptor.TYPE_INT64: _INT64,
    FieldDescriptor.TYPE_SINT64: _INT64,
    FieldDescriptor.TYPE_SFIXED64: _INT64,
    FieldDescriptor.TYPE_UINT64: _UINT64,
    FieldDescriptor.TYPE_FIXED64: _UINT64,
    FieldDescriptor.TYPE_BOOL: {"type": "boolean"},
    FieldDescriptor.TYPE_STRING: {"type": "string"},
    FieldDescriptor.TYPE_BYTES: {"type": "string", "format": "byte", "contentEncoding": "base64"},
}
_WRAPPERS: Final = {
    "google.protobuf.DoubleValue": FieldDescriptor.TYPE_DOUBLE,
    "google.protobuf.FloatValue": FieldDescriptor.TYPE_FLOAT,
    "google.protobuf.Int64Value": FieldDescriptor.TYPE_INT64,
    "google.protobuf.UInt64Value": FieldDescriptor.TYPE_UINT64,
    "google.protobuf.Int32Value": FieldDescriptor.TYPE_INT32,
    "google.protobuf.UInt32Value": FieldDescriptor.TYPE_UINT32,
    "google.protobuf.BoolValue": FieldDescriptor.TYPE_BOOL,
    "google.protobuf.StringValue": FieldDescriptor.TYPE_STRING,
    "google.protobuf.BytesValue": FieldDescriptor.TYPE_BYTES,
}
_WELL_KNOWN: Final[dict[str, dict[str, Any]]] = {
    "google.protobuf.Timestamp": {
        "type": "string",
        "format": "date-time",
        "description": "RFC 3339 timestamp, e.g. 2024-05-01T12:00:00Z",
    },
    "google.protobuf.Duration": {
        "type": "string",
        "pattern": "^-?[0-9]{1,12}(\\.[0-9]{1,9})?s$",
        "description": "Duration in seconds with an 's' suffix, e.g. 1.5s",
    },
    "google.protobuf.FieldMask": {
        "type": "string",
        "description": "Comma-separated lowerCamelCase field paths",
    },
    "google.protobuf.Empty": {"type": "object", "additionalProperties": False},
    "google.protobuf.Struct": {"type": "object"},
    "google.protobuf.Value": {},
    "google.protobuf.ListValue": {"type": "array"},
    "google.protobuf.Any": {
        "type": "object",
        "properties": {"@type": {"type": "string"}},
        "required": ["@type"],
        "additionalProperties": True,
    },
}
_QUERY_DEPTH = 3
INPUT_SUFFIX: Final = "-Input"


def _behaviors(field: FieldDescriptor) -> set[int]:
    return set(field.GetOptions().Extensions[field_behavior_pb2.field_behavior])


def _is_map(field: FieldDescriptor) -> bool:
    return bool(field.message_type is not None and field.message_type.GetOptions().map_entry)


def _repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated)


def _real_oneofs(message: descriptor.Descriptor) -> Iterable[descriptor.OneofDescriptor]:
    for oneof in message.oneofs:
        # proto3 `optional` fields sit in a synthetic one-member oneof named "_<field>".
        if len(oneof.fields) == 1 and oneof.name == f"_{oneof.fields[0].name}":
            continue
        yield oneof


@dataclass
class SchemaBuilder:
    comments: Comments
    schemas: dict[str, dict[str, Any]]

    def ref(self, message: descriptor.Descriptor, *, for_input: bool) -> dict[str, Any]:
        name = message.full_name
        if name in _WELL_KNOWN:
            return dict(_WELL_KNOWN[name])
        if name in _WRAPPERS:
            return dict(_SCALARS[_WRAPPERS[name]])
        key = name + (INPUT_SUFFIX if for_input else "")
        if key not in self.schemas:
            self.schemas[key] = {}  # placeholder: recursion-safe
            self.schemas[key] = self.message_schema(message, for_input=for_input)
        return {"$ref": f"#/components/schemas/{key}"}

    def message_schema(
        self, message: descriptor.Descriptor, *, for_input: bool, exclude: Sequence[str] = ()
    ) -> dict[str, Any]:
        properties: dict[str, Any] = {}
        required: list[str] = []
        for field in message.fields:
            if field.name in exclude:
                continue
            schema = self.field_schema(field, for_input=for_input)
            text = self.comments.get(f"{message.full_name}.{field.name}")
            behaviors = _behaviors(field)
            annotations: dict[str, Any] = {}
            if field_behavior_pb2.OUTPUT_ONLY in behaviors:
                annotations["readOnly"] = True
            if text:
                annotations["description"] = text
            if annotations:
                # Keywords beside a $ref are wrapped so every JSON Schema tool reads them.
                schema = {"allOf": [schema], **annotations} if "$ref" in schema else {**schema, **annotations}
            properties[field.json_name] = schema
            if for_input and field_behavior_pb2.REQUIRED in behaviors:
                required.append(field.json_name)
        result: dict[str, Any] = {"type": "object", "properties": properties}
        text = self.comments.get(message.full_name)
        if text:
            result["description"] = text
        if for_input:
            result["additionalProperties"] = False
            if required:
                result["required"] = required
        exclusive = [
            [f.json_name for f in oneof.fields if f.name not in exclude] for oneof in _real_oneofs(message)
        ]
        constraints = [
            {"not": {"required": [a, b]}}
            for members in exclusive
            for i, a in enumerate(members)
            for b in members[i + 1 :]
        ]
        if constraints:
            result["allOf"] = constraints
        return result

    def field_schema(self, field: FieldDescriptor, *, for_input: bool) -> dict[str, Any]:
        if _is_map(field):
            assert field.message_type is not None
            value_field = field.message_type.fields_by_name["value"]
            return {
                "type": "object",
                "additionalProperties": self.single_schema(value_field, for_input=for_input),
            }
        item = self.single_schema(field, for_input=for_input)
        if _repeated(field):
            return {"type": "array", "items": item}
        return item

    def single_schema(self, field: FieldDescriptor, *, for_input: bool) -> dict[str, Any]:
        if field.enum_type is not None:
            return self.enum_schema(field.enum_type)
        if field.message_type is not None:
            return self.ref(field.message_type, for_input=for_input)
        return dict(_SCALARS[field.type])

    def enum_schema(self, enum: descriptor.EnumDescriptor) -> dict[str, Any]:
        name = enum.full_name
        if name not in self.schemas:
            lines = [self.comments.get(name)] if self.comments.get(name) else []
            for value in enum.values:
                text = self.comments.get(f"{name}.{value.name}")
                lines.append(f"- `{value.name}`: {text}" if text else f"- `{value.name}`")
            schema: dict[str, Any] = {"type": "string", "enum": [v.name for v in enum.values]}
            if lines:
                schema["description"] = "\n".join(lines)
            self.schemas[name] = schema
        return {"$ref": f"#/components/schemas/{name}"}

    def query_parameters(
        self, message: descriptor.Descriptor, *, skip: set[str], prefix: str = "", depth: int = 0
    ) -> list[dict[str, Any]]:
        """Every field reachable from the query string (scalars, enums, repeated scalars, WKTs)."""
        params: list[dict[str, Any]] = []
        for field in message.fields:
            proto_path = f"{prefix}{field.name}"
            if proto_path in skip or _is_map(field):
                continue
            name_prefix = ".".join(p for p in prefix.split(".") if p)
            json_path = ".".join(p for p in (_json_prefix(message, name_prefix), field.json_name) if p)
            nested = field.message_type
            if (
                nested is not None
                and nested.full_name not in _WELL_KNOWN
                and nested.full_name not in _WRAPPERS
            ):
                if _repeated(field) or depth + 1 >= _QUERY_DEPTH:
                    continue
                params.extend(
                    self.query_parameters(nested, skip=skip, prefix=f"{proto_path}.", depth=depth + 1)
                )
                continue
            if nested is not None and nested.full_name in ("google.protobuf.Struct", "google.protobuf.Value"):
                continue
            schema = self.field_schema(field, for_input=True)
            param: dict[str, Any] = {"name": json_path, "in": "query", "required": False, "schema": schema}
            if _repeated(field):
                param["style"] = "form"
                param["explode"] = True
            text = self.comments.get(f"{message.full_name}.{field.name}")
            if text:
                param["description"] = text
            params.append(param)
        return params


def _json_prefix(_message: descriptor.Descriptor, proto_prefix: str) -> str:
    # The nested path is rebuilt from the proto names; lowerCamelCase each part.
    return ".".join(_camel(part) for part in proto_prefix.split(".") if part)


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _error_responses() -> dict[str, Any]:
    status_ref = {"$ref": f"#/components/schemas/{STATUS_SCHEMA}"}
    return {
        "default": {
            "description": "An error: a google.rpc.Status with ErrorInfo (and BadRequest for bad fields). "
            "400 invalid argument or failed precondition, 401 unauthenticated, 403 missing permission, "
            "404 not found, 409 conflict, 413 body too large, 415 wrong content type, 429 rate limited, "
            "499 cancelled, 501 not implemented, 503 unavailable, 504 deadline exceeded.",
            "content": {"application/json": {"schema": status_ref}},
        }
    }


def _rate_limit_headers() -> dict[str, Any]:
    integer = {"schema": {"type": "integer", "minimum": 0}}
    return {
        "X-RateLimit-Limit": {"description": "Requests allowed in the window (tightest scope)", **integer},
        "X-RateLimit-Remaining": {"description": "Requests left in the window", **integer},
        "X-RateLimit-Reset": {"description": "Seconds until a request slot frees up", **integer},
    }


def _operation(
    route: HttpRoute, builder: SchemaBuilder, pool: descriptor_pool.DescriptorPool
) -> tuple[str, dict[str, Any]]:
    path, parameter_fields = route.template.openapi_path()
    request = pool.FindMessageTypeByName(route.input_type)
    response = pool.FindMessageTypeByName(route.output_type)
    parameters: list[dict[str, Any]] = []
    for name, field_path in parameter_fields.items():
        parameters.append(
            {
                "name": name,
                "in": "path",
                "required": True,
                "schema": {"type": "string", "minLength": 1},
                "description": f"Last segment of `{field_path}`" if field_path else "Path segment",
            }
        )
    bound_top = {v.field_path.split(".")[0] for v in route.template.variables}
    bound_full = {v.field_path for v in route.template.variables}
    operation: dict[str, Any] = {
        "operationId": route.operation_id,
        "tags": [route.service],
        "summary": route.summary or route.method_name,
        "description": route.description,
        "x-required-permission": route.permission,
        "x-grpc-method": route.rpc,
        "security": [{"bearer": []}],
    }
    if route.body == "*":
        schema = builder.message_schema(request, for_input=True, exclude=sorted(bound_top))
        schema.pop("description", None)
        operation["requestBody"] = {
            "required": bool(schema.get("required")),
            "content": {"application/json": {"schema": schema}},
        }
    elif route.body:
        body_field = request.fields_by_name[route.body]
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": builder.field_schema(body_field, for_input=True)}},
        }
    if route.body != "*":
        skip = set(bound_full) | ({route.body} if route.body else set())
        parameters.extend(builder.query_parameters(request, skip=skip))
    if parameters:
        operation["parameters"] = parameters
    if route.response_body:
        response_schema = builder.field_schema(response.fields_by_name[route.response_body], for_input=False)
    elif route.server_streaming:
        response_schema = {"description": "The concatenated stream: one JSON document"}
    else:
        response_schema = builder.ref(response, for_input=False)
    operation["responses"] = {
        "200": {
            "description": "OK",
            "headers": _rate_limit_headers(),
            "content": {"application/json": {"schema": response_schema}},
        },
        **_error_responses(),
    }
    return path, operation


def _extra_paths(builder: SchemaBuilder) -> dict[str, Any]:
    errors = _error_responses()
    json_object: dict[str, Any] = {"application/json": {"schema": {"type": "object"}}}

    def health_op(operation_id: str, summary: str, *, may_fail: bool = False) -> dict[str, Any]:
        responses: dict[str, Any] = {"200": {"description": "OK", "content": json_object}, **errors}
        if may_fail:
            responses["503"] = {"description": "Not ready", "content": json_object}
        op: dict[str, Any] = {
            "operationId": operation_id,
            "summary": summary,
            "tags": ["health"],
            "security": [],
            "responses": responses,
        }
        return {"get": op}

    timestamp_request = builder.comments.get("awareness.signing.v1.SigningService.Timestamp")
    return {
        "/health/live": health_op("health_live", "The process is alive"),
        "/health/ready": health_op(
            "health_ready", "200 only when the gateway can serve: key store and backends", may_fail=True
        ),
        # /metrics and /health/dependencies are served on the admin port only, not by this API.
        "/openapi.json": health_op("openapi", "This document"),
        "/v1/timestamp": {
            "post": {
                "operationId": "SigningService_Timestamp",
                "tags": ["signing"],
                "summary": "RFC 3161 time-stamping: DER TimeStampReq in, DER TimeStampResp out",
                "description": timestamp_request,
                "x-required-permission": "timestamp:request",
                "x-grpc-method": "/awareness.signing.v1.SigningService/Timestamp",
                "security": [{"bearer": []}],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/timestamp-query": {"schema": {"type": "string", "format": "binary"}}
                    },
                },
                "responses": {
                    "200": {
                        "description": "DER TimeStampResp (a refused request is a TimeStampResp too)",
                        "headers": _rate_limit_headers(),
                        "content": {
                            "application/timestamp-reply": {"schema": {"type": "string", "format": "binary"}}
                        },
                    },
                    **errors,
                },
            }
        },
        "/v1/integrations/gophish": {
            "post": {
                "operationId": "gophish_webhook",
                "tags": ["integrations"],
                "summary": "GoPhish webhook: campaign events become phishing.* events",
                "description": "Signed with `X-Gophish-Signature: sha256=<hex HMAC-SHA256(secret, body)>`. "
                "Re-delivery of the same event is idempotent.",
                "security": [{"gophishSignature": []}],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/GophishEvent"}}
                    },
                },
                "responses": {
                    "202": {"description": "Accepted", "content": json_object},
                    **errors,
                },
            }
        },
    }


_GOPHISH_EVENT: Final = {
    "type": "object",
    "description": "A GoPhish webhook event",
    "properties": {
        "campaign_id": {"type": "integer"},
        "email": {"type": "string"},
        "time": {"type": "string", "format": "date-time"},
        "message": {"type": "string"},
        "details": {"type": "string"},
    },
    "required": ["campaign_id", "email", "time", "message"],
}


def build_openapi(
    routes: Sequence[HttpRoute],
    comments: Comments,
    *,
    pool: descriptor_pool.DescriptorPool | None = None,
    version: str = "1.0.0",
) -> dict[str, Any]:
    pool = pool or descriptor_pool.Default()
    schemas: dict[str, dict[str, Any]] = {}
    builder = SchemaBuilder(comments=comments, schemas=schemas)
    builder.ref(pool.FindMessageTypeByName(STATUS_SCHEMA), for_input=False)
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        if route.rpc == "/awareness.signing.v1.SigningService/Timestamp":
            continue  # served raw (DER), declared below
        path, operation = _operation(route, builder, pool)
        paths.setdefault(path, {})[route.http_method.lower()] = operation
    paths.update(_extra_paths(builder))
    schemas["GophishEvent"] = dict(_GOPHISH_EVENT)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Awareness API",
            "version": version,
            "description": "HTTP/JSON gateway of the Awareness suite, generated from the protobuf contracts "
            "(google.api.http annotations). Bodies use the proto3 JSON mapping.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": dict(sorted(schemas.items())),
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key (`awk_<id>_<secret>`, see `awareness keys create`) or a JWT "
                    "from the configured issuer.",
                },
                "gophishSignature": {"type": "apiKey", "in": "header", "name": "X-Gophish-Signature"},
            },
        },
    }
