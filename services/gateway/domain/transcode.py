"""HTTP request -> protobuf request message, and protobuf -> JSON, per the proto3 JSON mapping.

Bindings follow google/api/http.proto: path variables first, then the body (``*`` or one
top-level field), then query parameters for every field neither binds. Parsing is strict:
duplicate JSON keys, unknown fields and unknown query parameters are refused with the
offending field named, never silently dropped. JSON nested deeper than MAX_JSON_DEPTH is
refused before any recursive walk can overflow the stack.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

from google.protobuf import descriptor, json_format, message

from services.gateway.domain import protojson

_WELL_KNOWN_SCALARS = frozenset(
    {
        "google.protobuf.Timestamp",
        "google.protobuf.Duration",
        "google.protobuf.FieldMask",
        "google.protobuf.DoubleValue",
        "google.protobuf.FloatValue",
        "google.protobuf.Int64Value",
        "google.protobuf.UInt64Value",
        "google.protobuf.Int32Value",
        "google.protobuf.UInt32Value",
        "google.protobuf.BoolValue",
        "google.protobuf.StringValue",
        "google.protobuf.BytesValue",
    }
)
# Well-known types whose JSON form is not an object with the message's own fields.
_OPAQUE_JSON = _WELL_KNOWN_SCALARS | {
    "google.protobuf.Any",
    "google.protobuf.Struct",
    "google.protobuf.Value",
    "google.protobuf.ListValue",
    "google.protobuf.Empty",
}
# Deeper JSON would reach the recursion limits of json_format and of the unknown-field
# check; no contract message needs more than a few levels.
MAX_JSON_DEPTH = 64
_PARSE_CHAIN = re.compile(r"Failed to parse ([A-Za-z0-9_]+) field")
_PARSE_LOCATION = re.compile(r" at \"?([A-Za-z0-9_.\[\]]+?)\"?\.*$")


class RequestError(ValueError):
    """The HTTP request cannot become a valid protobuf request; ``field`` names the culprit."""

    def __init__(self, field: str, description: str) -> None:
        super().__init__(f"{field}: {description}" if field else description)
        self.field = field
        self.description = description


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    built = dict(pairs)  # in C; only a short dict means there is a duplicate to name
    if len(built) == len(pairs):
        return built
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise RequestError(key, f"duplicate key {key!r} in JSON object")
        seen.add(key)
    raise AssertionError("unreachable: a shorter dict has a repeated key")


def _refuse_constant(name: str) -> Any:
    raise RequestError("", f"{name} is not valid JSON")


def _too_deep() -> RequestError:
    return RequestError("body", f"JSON nested deeper than {MAX_JSON_DEPTH} levels")


def _check_depth(value: Any) -> None:
    """Iteratively, so the check itself cannot overflow the stack."""
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > MAX_JSON_DEPTH:
            raise _too_deep()
        pending.extend((child, depth + 1) for child in children if isinstance(child, dict | list))


def strict_json_loads(raw: bytes) -> Any:
    """Parse a JSON document, refusing duplicate keys, NaN/Infinity literals and deep nesting."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError("", "request body is not UTF-8") from exc
    try:
        value = json.loads(text, object_pairs_hook=_refuse_duplicates, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise RequestError("", f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from exc
    except RecursionError as exc:  # deeper than the parser's own stack allows
        raise _too_deep() from exc
    # Fewer brackets than the limit cannot nest past it: the walk is skipped on most bodies.
    if raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH:
        _check_depth(value)
    return value


def _field_by_json_key(
    message_descriptor: descriptor.Descriptor, key: str
) -> descriptor.FieldDescriptor | None:
    found = message_descriptor.fields_by_name.get(key)
    if found is not None:
        return found
    for candidate in message_descriptor.fields:
        if candidate.json_name == key:
            return candidate
    return None


def _is_map(field: descriptor.FieldDescriptor) -> bool:
    entry = field.message_type
    return bool(entry is not None and entry.GetOptions().map_entry)


def _is_repeated(field: descriptor.FieldDescriptor) -> bool:
    return bool(field.is_repeated)


def find_unknown_field(value: Any, message_descriptor: Any, prefix: str = "") -> str | None:
    """The path of the first key in ``value`` the message does not define, if any."""
    if message_descriptor.full_name in _OPAQUE_JSON or not isinstance(value, dict):
        return None
    for key, item in value.items():
        path = f"{prefix}.{key}" if prefix else key
        field = _field_by_json_key(message_descriptor, key)
        if field is None:
            return path
        if field.message_type is None or item is None:
            continue
        if _is_map(field):
            value_field = field.message_type.fields_by_name["value"]
            if value_field.message_type is not None and isinstance(item, dict):
                for map_key, map_value in item.items():
                    found = find_unknown_field(map_value, value_field.message_type, f"{path}[{map_key}]")
                    if found:
                        return found
        elif _is_repeated(field) and isinstance(item, list):
            for index, element in enumerate(item):
                found = find_unknown_field(element, field.message_type, f"{path}[{index}]")
                if found:
                    return found
        else:
            found = find_unknown_field(item, field.message_type, path)
            if found:
                return found
    return None


def _parse_error_field(error: json_format.ParseError) -> str:
    text = str(error).split("\n", 1)[0]
    chain = _PARSE_CHAIN.findall(text)
    if chain:
        return ".".join(chain)
    match = _PARSE_LOCATION.search(text)
    if not match:
        return ""
    location = match.group(1).split(".")
    return ".".join(location[1:])  # drop the message type name


def parse_into(target: message.Message, value: Any, *, prefix: str = "") -> None:
    """Merge the proto3 JSON ``value`` into ``target``, strictly."""
    if not target.ListFields() and protojson.fill(target, value):
        return  # the compiled fast path understood all of it
    unknown = find_unknown_field(value, target.DESCRIPTOR)
    if unknown:
        path = f"{prefix}.{unknown}" if prefix else unknown
        raise RequestError(path, f"unknown field {path!r}")
    try:
        json_format.ParseDict(value, target, ignore_unknown_fields=False)
    except json_format.ParseError as exc:
        located = _parse_error_field(exc)
        path = ".".join(p for p in (prefix, located) if p)
        raise RequestError(path, str(exc).split("\n", 1)[0]) from exc
    except (TypeError, ValueError, AttributeError) as exc:
        raise RequestError(prefix, f"invalid value: {exc}") from exc


def _resolve(
    message_descriptor: Any, dotted: str
) -> tuple[list[descriptor.FieldDescriptor], descriptor.FieldDescriptor]:
    """Fields along a dotted path (proto or JSON names) and the leaf field."""
    chain: list[descriptor.FieldDescriptor] = []
    current = message_descriptor
    parts = dotted.split(".")
    for index, part in enumerate(parts):
        field = _field_by_json_key(current, part)
        if field is None:
            raise RequestError(dotted, f"unknown field {dotted!r}")
        if index < len(parts) - 1:
            if (
                field.message_type is None
                or _is_repeated(field)
                or field.message_type.full_name in _OPAQUE_JSON
            ):
                raise RequestError(dotted, f"{part!r} is not a message field")
            chain.append(field)
            current = field.message_type
        else:
            return chain, field
    raise RequestError(dotted, "empty field path")


def _leaf_json(field: descriptor.FieldDescriptor, raw: str, dotted: str) -> Any:
    """A query/path string as the JSON value json_format expects for this field."""
    if field.type == descriptor.FieldDescriptor.TYPE_BOOL or (
        field.message_type is not None and field.message_type.full_name == "google.protobuf.BoolValue"
    ):
        lowered = raw.lower()
        if lowered in ("true", "1"):
            return True
        if lowered in ("false", "0"):
            return False
        raise RequestError(dotted, f"expected true or false, got {raw!r}")
    if field.type in (descriptor.FieldDescriptor.TYPE_DOUBLE, descriptor.FieldDescriptor.TYPE_FLOAT):
        try:
            number = float(raw)
        except ValueError as exc:
            raise RequestError(dotted, f"expected a number, got {raw!r}") from exc
        if math.isnan(number) or math.isinf(number):
            return raw  # json_format spells these "NaN" / "Infinity"
        return number
    return raw


def set_field(target: message.Message, dotted: str, values: Sequence[str]) -> None:
    """Set a (possibly nested) field from path or query strings."""
    chain, leaf = _resolve(target.DESCRIPTOR, dotted)
    if _is_map(leaf):
        raise RequestError(dotted, "map fields cannot be set from the query string")
    if leaf.message_type is not None and leaf.message_type.full_name not in _WELL_KNOWN_SCALARS:
        raise RequestError(dotted, "message fields cannot be set from the query string; name a sub-field")
    if not _is_repeated(leaf) and len(values) > 1:
        raise RequestError(dotted, "field is not repeated but was given several times")
    holder = target
    for field in chain:
        holder = getattr(holder, field.name)
    converted = [_leaf_json(leaf, raw, dotted) for raw in values]
    value: Any = converted if _is_repeated(leaf) else converted[0]
    scratch = type(holder)()
    try:
        parse_into(scratch, {leaf.name: value})
    except RequestError as exc:
        raise RequestError(dotted, exc.description) from exc
    if not _is_repeated(leaf):
        holder.ClearField(leaf.name)
    holder.MergeFrom(scratch)


def _canonical(message_descriptor: Any, dotted: str) -> str:
    chain, leaf = _resolve(message_descriptor, dotted)
    return ".".join([f.name for f in chain] + [leaf.name])


MessageT = TypeVar("MessageT", bound=message.Message)


def build_request(
    request: MessageT,
    *,
    body_field: str,
    body: Any,
    path_values: dict[str, str],
    query: Iterable[tuple[str, str]],
) -> MessageT:
    """Fill ``request`` from the three HTTP sources; returns it for convenience."""
    descriptor_ = request.DESCRIPTOR
    if body_field == "*":
        parse_into(request, {} if body is None else body)
    elif body_field:
        field = descriptor_.fields_by_name[body_field]
        if body is not None:
            parse_into(request, {field.name: body})
    bound = {_canonical(descriptor_, path) for path in path_values}
    for path, value in path_values.items():
        set_field(request, path, [value])
    grouped: dict[str, list[str]] = {}
    for key, value in query:
        grouped.setdefault(key, []).append(value)
    for key, values in grouped.items():
        canonical = _canonical(descriptor_, key)
        top = canonical.split(".", 1)[0]
        if body_field == "*" or top == body_field:
            raise RequestError(key, f"{key!r} is bound by the request body, not the query string")
        if canonical in bound:
            raise RequestError(key, f"{key!r} is bound by the URL path")
        set_field(request, key, values)
    return request


def to_json(response: message.Message) -> Any:
    """The proto3 JSON mapping: lowerCamelCase names, int64 as strings, enums by name."""
    return protojson.to_dict(response)
