"""The proto3 JSON mapping on the hot path, compiled once per message type.

``json_format`` walks a message's descriptor in Python for every field of every request and
response: for a batch of 50 events that walk was the gateway's largest CPU item
(docs/benchmarks.md). Here each message type's fields are looked up once, and ``parse`` and
``to_dict`` then only convert values.

``parse`` accepts a strict subset of what ``json_format`` accepts: JSON names or proto names,
strings, booleans, integers (or integer strings), finite doubles, enum names, maps, lists,
nested messages and RFC 3339 timestamps. Anything else (null, a wrong type, bytes, another
well-known type, an unknown key, a float32 field) makes it decline with None, and the caller
asks ``json_format``, which then builds the message or phrases the error. So a request is
accepted or refused exactly as before, with the same field violations. ``to_dict`` prints
every message exactly as ``json_format.MessageToDict`` does, delegating well-known types to
it. tests/gateway/test_protojson.py checks both against ``json_format`` on random messages.
"""

from __future__ import annotations

import base64
import functools
import math
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any, Final, TypeVar

from google.protobuf import descriptor, json_format, message
from google.protobuf.internal import type_checkers

MessageT = TypeVar("MessageT", bound=message.Message)
FD = descriptor.FieldDescriptor

# json_format's bounds for a Timestamp (0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z).
_TIMESTAMP_SECONDS_MIN: Final = -62135596800
_TIMESTAMP_SECONDS_MAX: Final = 253402300799
_EPOCH: Final = datetime(1970, 1, 1)
# ASCII digits only: strptime refuses other scripts' digits where int() would take them.
_RFC3339: Final = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-5][0-9])(?:\.([0-9]{1,9}))?"
    r"(?:Z|([+-])([0-9]{2}):([0-9]{2}))"
)
_INTEGER: Final = re.compile(r"-?[0-9]{1,20}")
# Nested messages beyond this decline (json_format refuses beyond 100; deep input never recurses far).
_MAX_DEPTH: Final = 64
# json.loads turns escaped pairs into one code point: a surrogate left in a str is unpaired.
_SURROGATE: Final = re.compile("[\ud800-\udfff]")
_SAFE_DOUBLE_INT: Final = 2**53
_INT_TYPES: Final = frozenset({FD.CPPTYPE_INT32, FD.CPPTYPE_INT64, FD.CPPTYPE_UINT32, FD.CPPTYPE_UINT64})
_INT64_TYPES: Final = frozenset({FD.CPPTYPE_INT64, FD.CPPTYPE_UINT64})
_TIMESTAMP: Final = "google.protobuf.Timestamp"
# Well-known types printed by their own ToJsonString, as json_format does.
_OWN_JSON_STRING: Final = frozenset({_TIMESTAMP, "google.protobuf.Duration", "google.protobuf.FieldMask"})


# Sets one field of a message at a nesting depth from its JSON value, or raises _DeclinedError.
_Setter = Callable[[message.Message, Any, int], None]


class _DeclinedError(Exception):
    """The value is outside the fast path's subset: json_format decides.

    Raised as a fresh instance each time: a shared one would grow its traceback on every raise."""


def parse(value: Any, message_class: type[MessageT]) -> MessageT | None:
    """What ``json_format.ParseDict(value, message_class())`` builds, or None to ask it instead."""
    target = message_class()
    return target if fill(target, value) else None


def fill(target: message.Message, value: Any) -> bool:
    """Fill the empty ``target`` as ``json_format.ParseDict`` would, or clear it and return False."""
    if type(value) is not dict or target.DESCRIPTOR.full_name.startswith("google.protobuf."):
        return False
    try:
        _fill(target, value, 1)
    except (_DeclinedError, ValueError, TypeError, OverflowError):  # e.g. an int out of the field's range
        target.Clear()
        return False
    return True


def to_dict(msg: message.Message) -> Any:
    """Exactly ``json_format.MessageToDict(msg, preserving_proto_field_name=False)``."""
    if msg.DESCRIPTOR.full_name.startswith("google.protobuf."):
        return json_format.MessageToDict(msg, preserving_proto_field_name=False)
    return _print_regular(msg)


# --- parsing ------------------------------------------------------------------------------------


def _fill(target: message.Message, value: dict[str, Any], depth: int) -> None:
    fields = _fields_by_key(target.DESCRIPTOR)
    seen: set[str] = set()  # field and oneof names: a second spelling or member declines
    for key, item in value.items():
        found = fields.get(key)
        if found is None or item is None:
            raise _DeclinedError
        field, setter = found
        if field.name in seen:
            raise _DeclinedError
        seen.add(field.name)
        oneof = field.containing_oneof
        if oneof is not None:
            if oneof.name in seen:
                raise _DeclinedError
            seen.add(oneof.name)
        setter(target, item, depth)


@functools.cache
def _fields_by_key(
    message_descriptor: descriptor.Descriptor,
) -> dict[str, tuple[FD, _Setter]]:
    if message_descriptor.full_name.startswith("google.protobuf."):
        return {}  # well-known types have their own JSON forms: every key declines
    by_key: dict[str, tuple[FD, _Setter]] = {}
    for field in message_descriptor.fields:
        entry = (field, _setter(field))
        by_key[field.json_name] = entry
        by_key[field.name] = entry
    return by_key


def _setter(field: FD) -> _Setter:
    name = field.name
    entry = field.message_type
    if entry is not None and entry.GetOptions().map_entry:
        key_field, value_field = entry.fields_by_name["key"], entry.fields_by_name["value"]
        if key_field.cpp_type != FD.CPPTYPE_STRING:
            return _decline_setter
        if value_field.cpp_type == FD.CPPTYPE_MESSAGE:
            fill_value = _message_filler(value_field.message_type)

            def set_message_map(target: message.Message, value: Any, depth: int) -> None:
                if type(value) is not dict:
                    raise _DeclinedError
                container = getattr(target, name)
                for key, item in value.items():
                    fill_value(container[key], item, depth + 1)

            return set_message_map
        convert_value = _scalar(value_field)

        def set_scalar_map(target: message.Message, value: Any, depth: int) -> None:
            if type(value) is not dict:
                raise _DeclinedError
            getattr(target, name).update({key: convert_value(item) for key, item in value.items()})

        return set_scalar_map
    if field.is_repeated:
        if field.cpp_type == FD.CPPTYPE_MESSAGE:
            fill_item = _message_filler(field.message_type)

            def set_messages(target: message.Message, value: Any, depth: int) -> None:
                if type(value) is not list:
                    raise _DeclinedError
                container = getattr(target, name)
                for item in value:
                    fill_item(container.add(), item, depth + 1)

            return set_messages
        convert_item = _scalar(field)

        def set_scalars(target: message.Message, value: Any, depth: int) -> None:
            if type(value) is not list:
                raise _DeclinedError
            getattr(target, name).extend([convert_item(item) for item in value])

        return set_scalars
    if field.cpp_type == FD.CPPTYPE_MESSAGE:
        fill = _message_filler(field.message_type)

        def set_message(target: message.Message, value: Any, depth: int) -> None:
            fill(getattr(target, name), value, depth + 1)

        return set_message
    convert = _scalar(field)

    def set_scalar(target: message.Message, value: Any, depth: int) -> None:
        setattr(target, name, convert(value))

    return set_scalar


def _decline_setter(target: message.Message, value: Any, depth: int) -> None:
    raise _DeclinedError


def _message_filler(message_descriptor: descriptor.Descriptor | None) -> _Setter:
    if message_descriptor is None:
        return _decline_setter
    if message_descriptor.full_name == _TIMESTAMP:
        return _fill_timestamp
    if message_descriptor.full_name.startswith("google.protobuf."):
        return _decline_setter  # Struct, Value, Any, wrappers, Duration: json_format's own forms

    def fill(target: message.Message, value: Any, depth: int) -> None:
        if type(value) is not dict or depth > _MAX_DEPTH:
            raise _DeclinedError
        target.SetInParent()  # present even when empty, as json_format leaves it
        _fill(target, value, depth)

    return fill


def _fill_timestamp(target: message.Message, value: Any, depth: int) -> None:
    """Timestamp.FromJsonString's arithmetic, for the RFC 3339 spellings it accepts."""
    if type(value) is not str:
        raise _DeclinedError
    match = _RFC3339.fullmatch(value)
    if match is None:
        raise _DeclinedError
    year, month, day, hour, minute, second, fraction, sign, offset_hours, offset_minutes = match.groups()
    moment = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second))
    delta = moment - _EPOCH
    seconds = delta.seconds + delta.days * 86400
    nanos = round(float("0." + fraction) * 1e9) if fraction else 0
    if sign is not None:
        offset = (int(offset_hours) * 60 + int(offset_minutes)) * 60
        seconds += -offset if sign == "+" else offset
    if not _TIMESTAMP_SECONDS_MIN <= seconds <= _TIMESTAMP_SECONDS_MAX or nanos >= 1_000_000_000:
        raise _DeclinedError
    target.SetInParent()
    target.seconds = seconds  # type: ignore[attr-defined]
    target.nanos = nanos  # type: ignore[attr-defined]


def _scalar(field: FD) -> Callable[[Any], Any]:
    kind = field.cpp_type
    if kind == FD.CPPTYPE_STRING:
        return _decline if field.type == FD.TYPE_BYTES else _string
    if kind == FD.CPPTYPE_BOOL:
        return _bool
    if kind in _INT_TYPES:
        return _integer
    if kind == FD.CPPTYPE_DOUBLE:
        return _double
    if kind == FD.CPPTYPE_ENUM:
        return _enum(field.enum_type)
    return _decline  # float32 (json_format checks its range) and anything unforeseen


def _decline(value: Any) -> Any:
    raise _DeclinedError


def _string(value: Any) -> str:
    if type(value) is not str or _SURROGATE.search(value):
        raise _DeclinedError
    return value


def _bool(value: Any) -> bool:
    if type(value) is not bool:
        raise _DeclinedError
    return value


def _integer(value: Any) -> int:
    if type(value) is int:
        return value
    if type(value) is str and _INTEGER.fullmatch(value):
        return int(value)
    raise _DeclinedError  # floats, exponents, spaces: json_format's own rules


def _double(value: Any) -> float:
    if type(value) is float and math.isfinite(value):
        return value
    if type(value) is int and -_SAFE_DOUBLE_INT <= value <= _SAFE_DOUBLE_INT:
        return float(value)
    raise _DeclinedError


def _enum(enum_type: descriptor.EnumDescriptor | None) -> Callable[[Any], int]:
    if enum_type is None:
        return _decline
    numbers = {value.name: value.number for value in enum_type.values}
    known = frozenset(numbers.values())

    def convert(value: Any) -> int:
        if type(value) is str:
            number = numbers.get(value)
            if number is not None:
                return number
        elif type(value) is int and value in known:
            return value
        raise _DeclinedError

    return convert


# --- printing -----------------------------------------------------------------------------------


def _print_regular(msg: message.Message) -> dict[str, Any]:
    printers = _printers(msg.DESCRIPTOR)
    out: dict[str, Any] = {}
    for field, value in msg.ListFields():
        printer = printers.get(field.number)
        if printer is None or field.is_extension:
            return json_format.MessageToDict(msg, preserving_proto_field_name=False)
        name, convert = printer
        out[name] = convert(value)
    return out


@functools.cache
def _printers(message_descriptor: descriptor.Descriptor) -> dict[int, tuple[str, Callable[[Any], Any]]]:
    return {field.number: (field.json_name, _field_printer(field)) for field in message_descriptor.fields}


def _field_printer(field: FD) -> Callable[[Any], Any]:
    entry = field.message_type
    if entry is not None and entry.GetOptions().map_entry:
        convert_value = _value_printer(entry.fields_by_name["value"])

        def print_map(value: Any) -> dict[str, Any]:
            return {_map_key(key): convert_value(value[key]) for key in value}

        return print_map
    convert = _value_printer(field)
    if field.is_repeated:

        def print_list(value: Any) -> list[Any]:
            return [convert(item) for item in value]

        return print_list
    return convert


def _map_key(key: Any) -> str:
    if isinstance(key, bool):
        return "true" if key else "false"
    return str(key)


def _value_printer(field: FD) -> Callable[[Any], Any]:
    kind = field.cpp_type
    if kind == FD.CPPTYPE_MESSAGE:
        message_type = field.message_type
        if message_type is not None and message_type.full_name in _OWN_JSON_STRING:
            return _own_json_string
        return to_dict
    if kind == FD.CPPTYPE_ENUM and field.enum_type is not None:
        if field.enum_type.full_name == "google.protobuf.NullValue":
            return _null
        names = {value.number: value.name for value in field.enum_type.values}

        def print_enum(value: int) -> Any:
            return names.get(value, value)  # an open enum's unknown number prints as the number

        return print_enum
    if kind == FD.CPPTYPE_STRING:
        return _print_bytes if field.type == FD.TYPE_BYTES else _identity
    if kind == FD.CPPTYPE_BOOL:
        return bool
    if kind in _INT64_TYPES:
        return str
    if kind == FD.CPPTYPE_DOUBLE:
        return _print_double
    if kind == FD.CPPTYPE_FLOAT:
        return _print_float
    return _identity


def _null(value: Any) -> None:
    return None


def _own_json_string(value: Any) -> str:
    text: str = value.ToJsonString()
    return text


def _identity(value: Any) -> Any:
    return value


def _print_bytes(value: bytes) -> str:
    return base64.b64encode(value).decode("utf-8")


def _special_float(value: float) -> str | None:
    if math.isinf(value):
        return "-Infinity" if value < 0 else "Infinity"
    if math.isnan(value):
        return "NaN"
    return None


def _print_double(value: float) -> Any:
    return _special_float(value) or value


def _print_float(value: float) -> Any:
    return _special_float(value) or type_checkers.ToShortestFloat(value)
