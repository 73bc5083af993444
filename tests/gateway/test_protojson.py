"""The gateway's fast proto3 JSON path against its oracle, ``google.protobuf.json_format``.

``to_dict`` must print exactly what ``json_format.MessageToDict`` prints; ``parse`` must build the
message ``json_format.ParseDict`` builds, or decline with None (so the caller asks json_format,
which phrases the error), and never raise. Messages are random but valid: every request and
response type of the HTTP routes, plus a synthetic proto3 ``Kitchen`` and proto2 ``Legacy`` that
cover the scalar kinds, map keys and well-known types the contracts do not use yet.
"""

from __future__ import annotations

import copy
import json
import math
import string
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from awareness.gdpr.v1 import gdpr_pb2
from awareness.ingest.v1 import ingest_pb2
from awareness.policy.v1 import policy_pb2
from awareness.scoring.v1 import scoring_pb2
from google.protobuf import (
    any_pb2,
    descriptor,
    descriptor_pb2,
    descriptor_pool,
    duration_pb2,
    empty_pb2,
    field_mask_pb2,
    json_format,
    message_factory,
    struct_pb2,
    timestamp_pb2,
    wrappers_pb2,
)
from google.protobuf.message import Message
from google.rpc import status_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.loadgen import EVENT_TYPES, SEVERITIES, make_event
from services.gateway.domain import protojson
from tests.gateway.routes import contract_routes

FD = descriptor.FieldDescriptor
_F = descriptor_pb2.FieldDescriptorProto
_PACKAGE = "protojson_test"
_TIMESTAMP_MIN, _TIMESTAMP_MAX = -62135596800, 253402300799  # 0001-01-01 .. 9999-12-31T23:59:59
_DURATION_MAX = 315576000000
_DEPTH = 3
_FAST = settings(
    deadline=None,
    report_multiple_bugs=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# --- the synthetic messages -----------------------------------------------------------------------

_SCALARS = {
    "i32": _F.TYPE_INT32,
    "i64": _F.TYPE_INT64,
    "u32": _F.TYPE_UINT32,
    "u64": _F.TYPE_UINT64,
    "s32": _F.TYPE_SINT32,
    "s64": _F.TYPE_SINT64,
    "f32": _F.TYPE_FIXED32,
    "f64": _F.TYPE_FIXED64,
    "sf32": _F.TYPE_SFIXED32,
    "sf64": _F.TYPE_SFIXED64,
    "flag": _F.TYPE_BOOL,
    "text": _F.TYPE_STRING,
    "blob": _F.TYPE_BYTES,
    "real32": _F.TYPE_FLOAT,
    "real64": _F.TYPE_DOUBLE,
}
_KITCHEN = f".{_PACKAGE}.Kitchen"
_COLOR = f".{_PACKAGE}.Kitchen.Color"
_NULL = ".google.protobuf.NullValue"
_WKT_FIELDS = {
    "when": ".google.protobuf.Timestamp",
    "span": ".google.protobuf.Duration",
    "shape": ".google.protobuf.Struct",
    "anything": ".google.protobuf.Value",
    "list": ".google.protobuf.ListValue",
    "packed": ".google.protobuf.Any",
    "mask": ".google.protobuf.FieldMask",
    "nothing": ".google.protobuf.Empty",
    "wrapped_i64": ".google.protobuf.Int64Value",
    "wrapped_u64": ".google.protobuf.UInt64Value",
    "wrapped_i32": ".google.protobuf.Int32Value",
    "wrapped_u32": ".google.protobuf.UInt32Value",
    "wrapped_text": ".google.protobuf.StringValue",
    "wrapped_blob": ".google.protobuf.BytesValue",
    "wrapped_flag": ".google.protobuf.BoolValue",
    "wrapped_real": ".google.protobuf.DoubleValue",
    "wrapped_real32": ".google.protobuf.FloatValue",
    "status": ".google.rpc.Status",
}
_MAPS: dict[str, tuple[int, int, str]] = {
    "by_name": (_F.TYPE_STRING, _F.TYPE_MESSAGE, _KITCHEN),
    "by_i32": (_F.TYPE_INT32, _F.TYPE_STRING, ""),
    "by_i64": (_F.TYPE_INT64, _F.TYPE_DOUBLE, ""),
    "by_u32": (_F.TYPE_UINT32, _F.TYPE_ENUM, _COLOR),
    "by_u64": (_F.TYPE_UINT64, _F.TYPE_BOOL, ""),
    "by_s32": (_F.TYPE_SINT32, _F.TYPE_BYTES, ""),
    "by_f64": (_F.TYPE_FIXED64, _F.TYPE_FLOAT, ""),
    "by_flag": (_F.TYPE_BOOL, _F.TYPE_INT64, ""),
    "by_text": (_F.TYPE_STRING, _F.TYPE_STRING, ""),
    "when_by_name": (_F.TYPE_STRING, _F.TYPE_MESSAGE, ".google.protobuf.Timestamp"),
    "value_by_name": (_F.TYPE_STRING, _F.TYPE_MESSAGE, ".google.protobuf.Value"),
}


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _add_field(
    message: descriptor_pb2.DescriptorProto,
    name: str,
    kind: int,
    type_name: str = "",
    *,
    repeated: bool = False,
    oneof: int | None = None,
    proto3_optional: bool = False,
    json_name: str = "",
) -> None:
    field = message.field.add(
        name=name,
        number=len(message.field) + 1,
        type=kind,
        label=_F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL,
        json_name=json_name or _camel(name),
    )
    if type_name:
        field.type_name = type_name
    if oneof is not None:
        field.oneof_index = oneof
    if proto3_optional:
        field.proto3_optional = True


def _kitchen_file() -> descriptor_pb2.FileDescriptorProto:
    file = descriptor_pb2.FileDescriptorProto(
        name=f"{_PACKAGE}/kitchen.proto", package=_PACKAGE, syntax="proto3"
    )
    file.dependency.extend(
        f"google/protobuf/{name}.proto"
        for name in ("timestamp", "duration", "struct", "any", "wrappers", "field_mask", "empty")
    )
    file.dependency.append("google/rpc/status.proto")
    kitchen = file.message_type.add(name="Kitchen")
    color = kitchen.enum_type.add(name="Color")
    for number, name in enumerate(("COLOR_UNSPECIFIED", "COLOR_RED", "COLOR_BLUE")):
        color.value.add(name=name, number=number)
    for name, kind in _SCALARS.items():
        _add_field(kitchen, name, kind)
    _add_field(kitchen, "color", _F.TYPE_ENUM, _COLOR)
    _add_field(kitchen, "child", _F.TYPE_MESSAGE, _KITCHEN)
    for name in ("i64", "u32", "s64", "sf32", "flag", "text", "blob", "real32", "real64"):
        _add_field(kitchen, f"{name}_list", _SCALARS[name], repeated=True)
    _add_field(kitchen, "colors", _F.TYPE_ENUM, _COLOR, repeated=True)
    _add_field(kitchen, "nulls", _F.TYPE_ENUM, _NULL, repeated=True)
    _add_field(kitchen, "children", _F.TYPE_MESSAGE, _KITCHEN, repeated=True)
    _add_field(kitchen, "whens", _F.TYPE_MESSAGE, ".google.protobuf.Timestamp", repeated=True)
    _add_field(kitchen, "values", _F.TYPE_MESSAGE, ".google.protobuf.Value", repeated=True)
    _add_field(kitchen, "anys", _F.TYPE_MESSAGE, ".google.protobuf.Any", repeated=True)
    for name, type_name in _WKT_FIELDS.items():
        _add_field(kitchen, name, _F.TYPE_MESSAGE, type_name)
    for name, (key_kind, value_kind, value_type) in _MAPS.items():
        entry_name = "".join(part.capitalize() for part in name.split("_")) + "Entry"
        entry = kitchen.nested_type.add(name=entry_name)
        entry.options.map_entry = True
        _add_field(entry, "key", key_kind)
        _add_field(entry, "value", value_kind, value_type)
        _add_field(kitchen, name, _F.TYPE_MESSAGE, f"{_KITCHEN}.{entry_name}", repeated=True)
    # Field names whose JSON names are not a plain capitalisation, and a custom json_name.
    _add_field(kitchen, "field_1x", _F.TYPE_INT32, json_name="field1x")
    _add_field(kitchen, "events_24h", _F.TYPE_INT32, json_name="events24h")
    _add_field(kitchen, "renamed_text", _F.TYPE_STRING, json_name="customName")
    kitchen.oneof_decl.add(name="choice")
    for name, kind, type_name in (
        ("choice_text", _F.TYPE_STRING, ""),
        ("choice_number", _F.TYPE_INT64, ""),
        ("choice_child", _F.TYPE_MESSAGE, _KITCHEN),
        ("choice_when", _F.TYPE_MESSAGE, ".google.protobuf.Timestamp"),
        ("choice_value", _F.TYPE_MESSAGE, ".google.protobuf.Value"),
        ("choice_null", _F.TYPE_ENUM, _NULL),
    ):
        _add_field(kitchen, name, kind, type_name, oneof=0)
    # proto3 `optional`: synthetic oneofs, declared after the real one.
    for name, kind, type_name in (
        ("maybe_i32", _F.TYPE_INT32, ""),
        ("maybe_u64", _F.TYPE_UINT64, ""),
        ("maybe_text", _F.TYPE_STRING, ""),
        ("maybe_color", _F.TYPE_ENUM, _COLOR),
        ("maybe_real", _F.TYPE_DOUBLE, ""),
        ("maybe_blob", _F.TYPE_BYTES, ""),
        ("maybe_null", _F.TYPE_ENUM, _NULL),
    ):
        kitchen.oneof_decl.add(name=f"_{name}")
        _add_field(kitchen, name, kind, type_name, oneof=len(kitchen.oneof_decl) - 1, proto3_optional=True)
    return file


def _legacy_file() -> descriptor_pb2.FileDescriptorProto:
    """proto2: closed enums, explicit presence and defaults."""
    file = descriptor_pb2.FileDescriptorProto(
        name=f"{_PACKAGE}/legacy.proto", package=_PACKAGE, syntax="proto2"
    )
    mood = file.enum_type.add(name="Mood")
    mood.value.add(name="MOOD_CALM", number=1)
    mood.value.add(name="MOOD_ANGRY", number=2)
    legacy = file.message_type.add(name="Legacy")
    _add_field(legacy, "count", _F.TYPE_INT32)
    legacy.field[-1].default_value = "7"
    _add_field(legacy, "mood", _F.TYPE_ENUM, f".{_PACKAGE}.Mood")
    _add_field(legacy, "moods", _F.TYPE_ENUM, f".{_PACKAGE}.Mood", repeated=True)
    _add_field(legacy, "label", _F.TYPE_STRING)
    _add_field(legacy, "child", _F.TYPE_MESSAGE, f".{_PACKAGE}.Legacy")
    _add_field(legacy, "deltas", _F.TYPE_SINT64, repeated=True)
    _add_field(legacy, "blob", _F.TYPE_BYTES)
    _add_field(legacy, "ratio", _F.TYPE_DOUBLE)
    entry = legacy.nested_type.add(name="LabelByCountEntry")  # upb refuses maps of closed enums
    entry.options.map_entry = True
    _add_field(entry, "key", _F.TYPE_INT32)
    _add_field(entry, "value", _F.TYPE_STRING)
    _add_field(
        legacy, "label_by_count", _F.TYPE_MESSAGE, f".{_PACKAGE}.Legacy.LabelByCountEntry", repeated=True
    )
    return file


def _register(file: descriptor_pb2.FileDescriptorProto) -> None:
    # The default pool, so json_format resolves Any type URLs that name these messages.
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName(file.name)
    except KeyError:
        pool.Add(file)


# Registers the well-known types the synthetic files import.
_WKT_MODULES = (
    any_pb2,
    duration_pb2,
    empty_pb2,
    field_mask_pb2,
    struct_pb2,
    timestamp_pb2,
    wrappers_pb2,
    status_pb2,
)
_register(_kitchen_file())
_register(_legacy_file())


def _class(full_name: str) -> type[Message]:
    return message_factory.GetMessageClass(descriptor_pool.Default().FindMessageTypeByName(full_name))


Kitchen = _class(f"{_PACKAGE}.Kitchen")
Legacy = _class(f"{_PACKAGE}.Legacy")


def _contract_classes() -> list[type[Message]]:
    names: set[str] = set()
    for route in contract_routes():
        names.update((route.input_type, route.output_type))
    for module in (policy_pb2, gdpr_pb2, scoring_pb2):
        names.update(d.full_name for d in module.DESCRIPTOR.message_types_by_name.values())
    for cls in (
        ingest_pb2.AppendEventRequest,
        ingest_pb2.AppendEventsRequest,
        ingest_pb2.AppendEventResponse,
        ingest_pb2.AppendEventsResponse,
        ingest_pb2.Event,
        ingest_pb2.Receipt,
        ingest_pb2.ListEventsResponse,
    ):
        names.add(cls.DESCRIPTOR.full_name)
    return [_class(name) for name in sorted(names)]


CONTRACT_CLASSES = _contract_classes()
ALL_CLASSES = [*CONTRACT_CLASSES, Kitchen, Legacy]
_CLASS_IDS = [cls.DESCRIPTOR.full_name for cls in ALL_CLASSES]

# --- random valid messages ------------------------------------------------------------------------

_TEXT = st.text(st.characters(codec="utf-8"), max_size=8)  # any code point but a lone surrogate
_INT_RANGES = {
    FD.CPPTYPE_INT32: (-(2**31), 2**31 - 1),
    FD.CPPTYPE_INT64: (-(2**63), 2**63 - 1),
    FD.CPPTYPE_UINT32: (0, 2**32 - 1),
    FD.CPPTYPE_UINT64: (0, 2**64 - 1),
}
_SPECIAL_FLOATS = [-0.0, 0.0, math.nan, math.inf, -math.inf]
_DOUBLES = st.floats() | st.sampled_from([*_SPECIAL_FLOATS, 5e-324, 1.7976931348623157e308, 0.1, 2.0**53 + 2])
_FLOATS = st.floats(width=32) | st.sampled_from(
    [*_SPECIAL_FLOATS, 3.4028234663852886e38, 1.401298464324817e-45]
)


def _scalar(field: FD) -> st.SearchStrategy[Any]:
    kind = field.cpp_type
    if kind in _INT_RANGES:
        low, high = _INT_RANGES[kind]
        return st.integers(low, high)
    if kind == FD.CPPTYPE_BOOL:
        return st.booleans()
    if kind == FD.CPPTYPE_DOUBLE:
        return _DOUBLES
    if kind == FD.CPPTYPE_FLOAT:
        return _FLOATS
    if kind == FD.CPPTYPE_ENUM:
        assert field.enum_type is not None
        known = st.sampled_from([value.number for value in field.enum_type.values])
        if field.enum_type.is_closed:
            return known
        return known | st.integers(-(2**31), 2**31 - 1)  # open enums keep unknown numbers
    if field.type == FD.TYPE_BYTES:
        return st.binary(max_size=8)
    return _TEXT


def _timestamps() -> st.SearchStrategy[timestamp_pb2.Timestamp]:
    nanos = st.just(0) | st.integers(0, 999).map(lambda n: n * 10**6) | st.integers(0, 10**9 - 1)
    return st.builds(
        timestamp_pb2.Timestamp, seconds=st.integers(_TIMESTAMP_MIN, _TIMESTAMP_MAX), nanos=nanos
    )


@st.composite
def _durations(draw: st.DrawFn) -> duration_pb2.Duration:
    seconds = draw(st.integers(-_DURATION_MAX, _DURATION_MAX))
    nanos = draw(st.integers(0, 10**9 - 1))
    if seconds < 0 or (seconds == 0 and draw(st.booleans())):
        nanos = -nanos  # nanos carry the sign of seconds
    return duration_pb2.Duration(seconds=seconds, nanos=nanos)


_FIELD_MASK_PATH = st.lists(
    st.from_regex(r"[a-z]{1,4}(_[a-z]{1,4}){0,2}", fullmatch=True), min_size=1, max_size=2
)
_FIELD_MASKS = st.builds(field_mask_pb2.FieldMask, paths=st.lists(_FIELD_MASK_PATH.map(".".join), max_size=3))


def _values(depth: int) -> st.SearchStrategy[struct_pb2.Value]:
    leaves: st.SearchStrategy[struct_pb2.Value] = st.one_of(
        st.just(struct_pb2.Value()),  # kind unset: printed as null
        st.just(struct_pb2.Value(null_value=struct_pb2.NULL_VALUE)),
        st.floats(allow_nan=False, allow_infinity=False).map(lambda n: struct_pb2.Value(number_value=n)),
        st.integers(-(2**53), 2**53).map(lambda n: struct_pb2.Value(number_value=n)),
        _TEXT.map(lambda s: struct_pb2.Value(string_value=s)),
        st.booleans().map(lambda b: struct_pb2.Value(bool_value=b)),
    )
    if depth <= 0:
        return leaves
    nested = st.one_of(
        _structs(depth - 1).map(lambda s: struct_pb2.Value(struct_value=s)),
        _list_values(depth - 1).map(lambda v: struct_pb2.Value(list_value=v)),
    )
    # NaN and infinities cannot be printed in a Value: json_format raises, so must to_dict.
    rare = st.sampled_from([math.nan, math.inf]).map(lambda n: struct_pb2.Value(number_value=n))
    return st.one_of(leaves, nested, rare) if depth == _DEPTH else st.one_of(leaves, nested)


def _structs(depth: int) -> st.SearchStrategy[struct_pb2.Struct]:
    @st.composite
    def build(draw: st.DrawFn) -> struct_pb2.Struct:
        result = struct_pb2.Struct()
        for key, value in draw(st.dictionaries(_TEXT, _values(depth), max_size=3)).items():
            result.fields[key].CopyFrom(value)
        return result

    return build()


def _list_values(depth: int) -> st.SearchStrategy[struct_pb2.ListValue]:
    return st.lists(_values(depth), max_size=3).map(lambda values: struct_pb2.ListValue(values=values))


_ANY_PAYLOADS = [
    ingest_pb2.Event.DESCRIPTOR,
    timestamp_pb2.Timestamp.DESCRIPTOR,
    duration_pb2.Duration.DESCRIPTOR,
    struct_pb2.Struct.DESCRIPTOR,
    struct_pb2.Value.DESCRIPTOR,
    wrappers_pb2.Int64Value.DESCRIPTOR,
    field_mask_pb2.FieldMask.DESCRIPTOR,
    empty_pb2.Empty.DESCRIPTOR,
    any_pb2.Any.DESCRIPTOR,
    Kitchen.DESCRIPTOR,
    Legacy.DESCRIPTOR,
]


@st.composite
def _anys(draw: st.DrawFn, depth: int) -> any_pb2.Any:
    packed = any_pb2.Any()
    if depth <= 0 or draw(st.integers(0, 4)) == 0:
        return packed  # an empty Any prints as {}
    payload = draw(_messages(draw(st.sampled_from(_ANY_PAYLOADS)), depth - 1))
    packed.Pack(payload)
    return packed


@st.composite
def _wrappers(draw: st.DrawFn, message_descriptor: Any) -> Message:
    wrapper = message_factory.GetMessageClass(message_descriptor)()
    field = message_descriptor.fields_by_name["value"]
    setattr(wrapper, "value", draw(_scalar(field)))
    return wrapper


def _is_real_oneof_member(field: FD) -> bool:
    oneof = field.containing_oneof
    return oneof is not None and not (len(oneof.fields) == 1 and oneof.name == f"_{field.name}")


def _sub_message(draw: st.DrawFn, field: FD, depth: int) -> Message:
    return draw(_messages(field.message_type, depth - 1))


def _set_field(draw: st.DrawFn, target: Message, field: FD, depth: int) -> None:
    entry = field.message_type
    if entry is not None and entry.GetOptions().map_entry:
        key_field, value_field = entry.fields_by_name["key"], entry.fields_by_name["value"]
        container = getattr(target, field.name)
        for key in draw(st.lists(_scalar(key_field), max_size=3, unique=True)):
            if value_field.cpp_type == FD.CPPTYPE_MESSAGE:
                container[key].CopyFrom(_sub_message(draw, value_field, depth))
            else:
                container[key] = draw(_scalar(value_field))
        return
    if field.is_repeated:
        container = getattr(target, field.name)
        if field.cpp_type == FD.CPPTYPE_MESSAGE:
            for _ in range(draw(st.integers(0, 2 if depth > 0 else 1))):
                container.add().CopyFrom(_sub_message(draw, field, depth))
        else:
            container.extend(draw(st.lists(_scalar(field), max_size=3)))
        return
    if field.cpp_type == FD.CPPTYPE_MESSAGE:
        sub = getattr(target, field.name)
        sub.SetInParent()  # present even when empty
        sub.CopyFrom(_sub_message(draw, field, depth))
        return
    setattr(target, field.name, draw(_scalar(field)))


@st.composite
def _regular(draw: st.DrawFn, message_descriptor: Any, depth: int) -> Message:
    target = message_factory.GetMessageClass(message_descriptor)()
    if depth < 0:
        return target
    # About 8 fields at the top and 4 below, so that big messages stay small.
    odds = min(0.6, (8 if depth == _DEPTH else 4) / max(len(message_descriptor.fields), 1))
    chosen = {
        oneof.name: draw(st.none() | st.sampled_from([f.name for f in oneof.fields]))
        for oneof in message_descriptor.oneofs
        if _is_real_oneof_member(oneof.fields[0])
    }
    for field in message_descriptor.fields:
        if _is_real_oneof_member(field):
            if chosen[field.containing_oneof.name] != field.name:
                continue
        elif draw(st.floats(0, 1)) < 1 - odds:  # shrinks towards unset fields
            continue
        _set_field(draw, target, field, depth)
    return target


def _messages(message_descriptor: Any, depth: int = _DEPTH) -> st.SearchStrategy[Message]:
    """Random valid messages of any type, nested at most ``depth`` levels."""
    name = message_descriptor.full_name
    if message_descriptor.file.name == "google/protobuf/wrappers.proto":
        return _wrappers(message_descriptor)
    special: dict[str, Callable[[], st.SearchStrategy[Any]]] = {
        "google.protobuf.Timestamp": _timestamps,
        "google.protobuf.Duration": _durations,
        "google.protobuf.FieldMask": lambda: _FIELD_MASKS,
        "google.protobuf.Empty": lambda: st.just(empty_pb2.Empty()),
        "google.protobuf.Struct": lambda: _structs(max(depth, 0)),
        "google.protobuf.Value": lambda: _values(max(depth, 0)),
        "google.protobuf.ListValue": lambda: _list_values(max(depth, 0)),
        "google.protobuf.Any": lambda: _anys(depth),
    }
    if name in special:
        return special[name]()
    return _regular(message_descriptor, depth)


@st.composite
def _any_message(draw: st.DrawFn, classes: list[type[Message]] = ALL_CLASSES) -> Message:
    cls = draw(st.sampled_from(classes))
    return draw(_messages(cls.DESCRIPTOR))


# --- the oracle ------------------------------------------------------------------------------------


def _oracle_parse(value: Any, cls: type[Message]) -> Message | None:
    try:
        return json_format.ParseDict(copy.deepcopy(value), cls(), ignore_unknown_fields=False)
    except Exception:  # ParseError, TypeError, ValueError, OverflowError, RecursionError, ...
        return None


def _check_parse(value: Any, cls: type[Message]) -> Message | None:
    """parse is json_format or None; the parsed message, for callers that need it."""
    expected = _oracle_parse(value, cls)
    got = protojson.parse(copy.deepcopy(value), cls)
    if expected is None:
        assert got is None, f"json_format refuses {value!r}, the fast path built {got!r}"
        return None
    if got is None:
        return None
    assert type(got) is cls
    assert got.SerializeToString(deterministic=True) == expected.SerializeToString(deterministic=True), (
        f"{value!r}: fast path {got!r} != json_format {expected!r}"
    )
    assert got == expected
    return got


def _check_to_dict(message: Message) -> Any:
    try:
        expected = json_format.MessageToDict(message, preserving_proto_field_name=False)
    except Exception:
        with pytest.raises(Exception):  # json_format's refusal, of any type
            protojson.to_dict(message)
        return None
    got = protojson.to_dict(message)
    assert got == expected
    # Same JSON text: catches 1 vs 1.0, True vs 1, -0.0 vs 0.0 and key order.
    assert json.dumps(got) == json.dumps(expected)
    return expected


# --- a and b: printing and round trips, for every message type ------------------------------------


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=_CLASS_IDS)
@settings(_FAST, max_examples=6)
@given(data=st.data())
def test_every_type_prints_and_round_trips_like_json_format(cls: type[Message], data: st.DataObject) -> None:
    message = data.draw(_messages(cls.DESCRIPTOR))
    printed = _check_to_dict(message)
    if printed is None:
        return
    _check_parse(printed, cls)
    _check_parse(json_format.MessageToDict(message, preserving_proto_field_name=True), cls)


@settings(_FAST, max_examples=300)
@given(message=_any_message())
def test_to_dict_is_message_to_dict(message: Message) -> None:
    _check_to_dict(message)


@settings(_FAST, max_examples=300)
@given(message=_any_message(), proto_names=st.booleans())
def test_parse_round_trips_or_declines(message: Message, proto_names: bool) -> None:
    try:
        printed = json_format.MessageToDict(message, preserving_proto_field_name=proto_names)
    except Exception:
        return  # e.g. a NaN in a Value: nothing to parse
    _check_parse(printed, type(message))


# --- c: realistic appends must take the fast path -------------------------------------------------

_OFFSETS = ["Z", "Z", "+00:00", "+02:00", "-05:00", "+05:30", "+14:00", "-12:00", "-03:30"]
_SEVERITY_NAMES = [v.name for v in ingest_pb2.Severity.DESCRIPTOR.values if v.number != 0]


@st.composite
def _occurred_at(draw: st.DrawFn) -> str:
    moment = draw(st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2100, 1, 1)))
    digits = draw(st.integers(0, 9))
    fraction = "." + draw(st.text(string.digits, min_size=digits, max_size=digits)) if digits else ""
    return f"{moment:%Y-%m-%dT%H:%M:%S}{fraction}{draw(st.sampled_from(_OFFSETS))}"


_ASCII_WORD = st.text(string.ascii_lowercase + string.digits + "._-", min_size=1, max_size=12)


@st.composite
def _events(draw: st.DrawFn) -> dict[str, Any]:
    event: dict[str, Any] = {
        "eventId": str(draw(st.uuids())),
        "type": draw(st.sampled_from(EVENT_TYPES) | _ASCII_WORD),
        "source": draw(_ASCII_WORD),
        "subject": draw(_ASCII_WORD) + "@example.org",
        "occurredAt": draw(_occurred_at()),
        "severity": draw(st.sampled_from(_SEVERITY_NAMES)),
        "summary": draw(_TEXT),
        "details": draw(st.dictionaries(_ASCII_WORD, _TEXT, max_size=3)),
    }
    kept = draw(st.sets(st.sampled_from(sorted(event)), min_size=len(event) - 2))
    event = {key: value for key, value in event.items() if key in kept}
    if draw(st.booleans()):  # proto field names are as valid as JSON names
        event = {_SNAKE.get(key, key): value for key, value in event.items()}
    return event


_SNAKE = {f.json_name: f.name for f in ingest_pb2.Event.DESCRIPTOR.fields}


@st.composite
def _append_requests(draw: st.DrawFn) -> tuple[type[Message], dict[str, Any]]:
    if draw(st.booleans()):
        return ingest_pb2.AppendEventRequest, {"event": draw(_events())}
    return ingest_pb2.AppendEventsRequest, {"events": draw(st.lists(_events(), max_size=5))}


@settings(_FAST, max_examples=200)
@given(request=_append_requests())
def test_realistic_appends_take_the_fast_path(request: tuple[type[Message], dict[str, Any]]) -> None:
    cls, body = request
    assert _oracle_parse(body, cls) is not None, "the generator made an invalid request"
    assert _check_parse(body, cls) is not None, f"the fast path declined a realistic request: {body!r}"


# --- d: mutated JSON is refused exactly when json_format refuses it --------------------------------

_ARABIC = "".join(map(chr, range(0x660, 0x66A)))
_UNICODE_DIGITS = [_ARABIC, "".join(map(chr, range(0xFF10, 0xFF1A))), "".join(map(chr, range(0x966, 0x970)))]


def _digits(text: str, script: str = _ARABIC) -> str:
    """``text`` with its ASCII digits in another script: ``\\d`` and int() take them, strptime mostly not."""
    return text.translate(str.maketrans(string.digits, script))


_JUNK: list[Any] = [
    None, True, False, 0, -1, 1.0, 1.5, -0.0, 12, 2**31, 2**32, 2**53 + 1, 2**63, 2**64, -(2**63) - 1,
    10**400, 1e300, 3.5e38, math.nan, math.inf, -math.inf,
    "12", "-12", "+12", "007", "12.0", "1e3", "1_000", "\t12", " 12", "12 ", "0x10",
    _digits("3"), _digits("12", _UNICODE_DIGITS[1]),
    "99999999999999999999999", "NaN", "nan", "Infinity", "-Infinity", "inf", "true", "false", "",
    "x", "\ud800", "a\udc00", "\ud83d\ude00",
    "2026-13-01T00:00:00Z", "2026-01-01 00:00:00", "2026-01-01T00:00:00", "2026-01-01T00:00:00z",
    "2026-01-01t00:00:00Z", "2026-01-01T00:00:00.Z", "2026-01-01T00:00:00.1234567891Z",
    "2026-01-01T00:00:00+2:00", "2026-01-01T00:00:00+99:99", "2026-01-01T00:00:00+0200",
    "2026-01-01T00:00:00-00:00", "2026-1-1T0:0:0Z", "0000-01-01T00:00:00Z", "0001-01-01T00:00:00+00:01",
    "9999-12-31T23:59:59-00:01", "9999-12-31T23:59:59.999999999Z", "2026-02-30T00:00:00Z",
    "2026-01-01T23:59:60Z", "2026-01-01T24:00:00Z", "2026-01-01T00:00:00.5e1Z", "2026-01-01T00:00:00.1e-3Z",
    "2026-01-01T00:00:00ZZ", _digits("2026") + "-01-01T00:00:00Z", "2026-" + _digits("01") + "-01T00:00:00Z",
    "2026-01-0" + _digits("1") + "T00:00:00Z",
    "2026-01-01T" + _digits("05") + ":00:00Z", "2026-01-01T00:" + _digits("59") + ":00Z",
    "2026-01-01T00:00:00." + _digits("123") + "Z", "2026-01-01T00:00:00+" + _digits("02") + ":00",
    "1.5s", "-0.5s", "1s ", "315576000001s", "a,b", "fooBar", "foo_bar",
    "SEVERITY_HIGH", "SEVERITY_BOGUS", "COLOR_RED", "MOOD_CALM", "NULL_VALUE", "1", "3",
    "YQ", "YQ==", "YQ===", "a-_b", "ab+/", "!!!!", "é",
    [], [None], [1], ["1"], [{}], {}, {"x": 1}, {"@type": "type.googleapis.com/google.protobuf.Timestamp"},
    {"@type": "type.googleapis.com/google.protobuf.Timestamp", "value": "2026-01-01T00:00:00Z"},
    {"@type": "type.googleapis.com/no.such.Type"},
]  # fmt: skip
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | _TEXT,
    lambda inner: st.lists(inner, max_size=2) | st.dictionaries(_TEXT, inner, max_size=2),
    max_leaves=4,
)


def _aliases() -> list[str]:
    names: set[str] = set()
    pending = [cls.DESCRIPTOR for cls in ALL_CLASSES]
    seen: set[str] = set()
    while pending:
        message_descriptor = pending.pop()
        if message_descriptor.full_name in seen:
            continue
        seen.add(message_descriptor.full_name)
        for field in message_descriptor.fields:
            names.update((field.name, field.json_name))
            if field.message_type is not None:
                pending.append(field.message_type)
    return sorted(names)


_FIELD_NAMES = _aliases()
_KEYS = st.sampled_from(["unknownField", "@type", "value", "", "[protojson_test.ext]", *_FIELD_NAMES]) | _TEXT


def _perturbations(old: Any) -> st.SearchStrategy[Any]:
    """Near misses of a valid leaf: the mistakes a client makes."""
    if isinstance(old, str):
        options: list[Any] = [old + "x", old[:-1], old.upper(), old.lower(), " " + old, old.replace("T", " ")]
        options += [old.replace("Z", "+00:00"), old.replace("Z", ""), old + "\ud800"]
        digits = [i for i, c in enumerate(old) if c in string.digits]
        if digits:

            @st.composite
            def swap(draw: st.DrawFn) -> str:
                index = draw(st.sampled_from(digits))
                script = draw(st.sampled_from(_UNICODE_DIGITS))
                return old[:index] + script[int(old[index])] + old[index + 1 :]

            return st.sampled_from(options) | swap()
        return st.sampled_from(options)
    if isinstance(old, bool):
        return st.sampled_from([int(old), str(old).lower(), not old])
    if isinstance(old, int):
        return st.sampled_from(
            [old + 1, -old - 1, old + 2**32, old * 2**32, float(old), str(old), str(old) + ".0"]
        )
    if isinstance(old, float):
        return st.sampled_from([str(old), old * 1e300, -old])
    if isinstance(old, list):
        return st.sampled_from([[*old, None], [*old, *old], old[:1], tuple(old), {"0": old}])
    if isinstance(old, dict):
        return st.sampled_from([[old], list(old), {**old, **dict.fromkeys(old)}])
    return st.just(old)


def _nodes(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[tuple[Any, ...], Any]]:
    found = [(path, value)]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _nodes(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _nodes(item, (*path, index))
    return found


def _replace(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    head, *rest = path
    if isinstance(value, dict):
        return {key: _replace(item, tuple(rest), new) if key == head else item for key, item in value.items()}
    return [_replace(item, tuple(rest), new) if index == head else item for index, item in enumerate(value)]


@st.composite
def _mutated(draw: st.DrawFn, valid: Any) -> Any:
    """``valid`` with one thing wrong, or almost wrong: json_format is the judge."""
    nodes = _nodes(valid)
    objects = [(path, node) for path, node in nodes if isinstance(node, dict)]
    operation = draw(st.sampled_from(["replace", "replace", "perturb", "add_key", "rename_key"]))
    if operation in ("add_key", "rename_key") and objects:
        path, node = draw(st.sampled_from(objects))
        key = draw(_KEYS)
        if operation == "rename_key" and node:
            old = draw(st.sampled_from(sorted(node)))
            changed = {key if k == old else k: item for k, item in node.items()}
        else:
            sibling = draw(st.sampled_from([*node.values(), None, 1, "x", {}, []]))
            changed = {**node, key: copy.deepcopy(sibling)}  # maybe a second spelling of a field
        return _replace(valid, path, changed)
    path, node = draw(st.sampled_from(nodes))
    if operation == "perturb":
        return _replace(valid, path, draw(_perturbations(node)))
    return _replace(valid, path, draw(st.sampled_from(_JUNK) | _JSON))


@settings(_FAST, max_examples=300)
@given(data=st.data())
def test_mutated_json_is_parsed_like_json_format_or_declined(data: st.DataObject) -> None:
    message = data.draw(_any_message())
    try:
        valid = json_format.MessageToDict(message, preserving_proto_field_name=data.draw(st.booleans()))
    except Exception:
        return
    _check_parse(data.draw(_mutated(valid)), type(message))


@settings(_FAST, max_examples=200)
@given(request=_append_requests(), data=st.data())
def test_mutated_appends_are_parsed_like_json_format_or_declined(
    request: tuple[type[Message], dict[str, Any]], data: st.DataObject
) -> None:
    cls, body = request
    _check_parse(data.draw(_mutated(body)), cls)


# --- plain examples --------------------------------------------------------------------------------


def test_a_loadgen_event_takes_the_fast_path() -> None:
    event = make_event(7)
    for cls, body in (
        (ingest_pb2.AppendEventRequest, {"event": event}),
        (ingest_pb2.AppendEventsRequest, {"events": [event, make_event(8)]}),
    ):
        parsed = protojson.parse(body, cls)
        assert parsed is not None
        assert parsed == json_format.ParseDict(body, cls())


def test_timestamp_with_offset_and_nine_fraction_digits() -> None:
    body = {"event": {"occurredAt": "2026-03-04T05:06:07.123456789+02:00", "severity": SEVERITIES[0]}}
    parsed = protojson.parse(body, ingest_pb2.AppendEventRequest)
    assert isinstance(parsed, ingest_pb2.AppendEventRequest)
    assert parsed == json_format.ParseDict(body, ingest_pb2.AppendEventRequest())
    moment = datetime(2026, 3, 4, 3, 6, 7, tzinfo=UTC)
    assert parsed.event.occurred_at.seconds == int(moment.timestamp())
    assert parsed.event.occurred_at.nanos == 123456789


@pytest.mark.parametrize(
    "spelling",
    [
        "2026-01-01T00:00:00.123456789+02:00",
        "2026-01-01T00:00:00-00:00",
        "2026-01-01T00:00:00+99:99",
        _digits("2026") + "-01-01T00:00:00Z",  # strptime's %Y takes any Unicode digit
        "2026-" + _digits("01") + "-01T00:00:00Z",  # ... but %m, %d, %H, %M and %S start with an ASCII one
        "2026-01-" + _digits("01") + "T00:00:00Z",
        "2026-01-01T" + _digits("05") + ":00:00Z",
        "2026-01-01T00:" + _digits("59") + ":00Z",
        "2026-01-01T00:00:" + _digits("59") + "Z",
        "2026-01-01T00:00:00." + _digits("123") + "Z",
        "2026-01-01T00:00:00+" + _digits("02:00"),
        "2026-1-1T0:0:0Z",
        "2026-01-01T00:00:00.Z",
        "2026-01-01T00:00:00.1e-3Z",
        "2026-01-01T23:59:60Z",
        "0001-01-01T00:00:00+00:01",
        "9999-12-31T23:59:59-00:01",
    ],
)
def test_timestamp_spellings_are_parsed_like_json_format_or_declined(spelling: str) -> None:
    _check_parse({"event": {"occurredAt": spelling}}, ingest_pb2.AppendEventRequest)


def test_int64_as_a_json_string() -> None:
    body = {"leafIndex": "12", "treeSize": "9007199254740993"}  # above 2**53: only a string is exact
    parsed = protojson.parse(body, ingest_pb2.GetInclusionProofRequest)
    assert parsed is not None
    assert parsed == json_format.ParseDict(body, ingest_pb2.GetInclusionProofRequest())
    assert parsed.tree_size == 2**53 + 1


def test_an_empty_object_is_the_empty_message() -> None:
    for cls in (ingest_pb2.AppendEventRequest, ingest_pb2.AppendEventsRequest, Kitchen):
        parsed = protojson.parse({}, cls)
        assert parsed is not None
        assert parsed == cls()
        assert protojson.to_dict(cls()) == {}


@pytest.mark.parametrize("value", [None, [], "x", 1, [{}]])
def test_a_body_that_is_not_an_object_is_declined(value: Any) -> None:
    assert protojson.parse(value, ingest_pb2.AppendEventRequest) is None


def test_null_value_fields_print_as_null() -> None:
    message = Kitchen(maybe_null=struct_pb2.NULL_VALUE, nulls=[struct_pb2.NULL_VALUE])
    expected = {"nulls": [None], "maybeNull": None}
    assert protojson.to_dict(message) == json_format.MessageToDict(message) == expected


def _nested(levels: int) -> dict[str, Any]:
    body: dict[str, Any] = {"text": "leaf"}
    for _ in range(levels - 1):
        body = {"child": body}
    return body


def test_nesting_json_format_refuses_is_declined() -> None:
    # json_format refuses more than 100 nested messages (max_recursion_depth).
    assert _oracle_parse(_nested(100), Kitchen) is not None
    _check_parse(_nested(100), Kitchen)
    assert _oracle_parse(_nested(101), Kitchen) is None
    assert protojson.parse(_nested(101), Kitchen) is None


def test_very_deep_nesting_never_raises() -> None:
    assert protojson.parse(_nested(5000), Kitchen) is None


def test_one_instant_in_three_offsets() -> None:
    base = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
    spellings = ["2026-06-01T12:00:00Z", "2026-06-01T14:00:00+02:00", "2026-06-01T07:00:00-05:00"]
    for spelling in spellings:
        parsed = _check_parse({"event": {"occurredAt": spelling}}, ingest_pb2.AppendEventRequest)
        assert isinstance(parsed, ingest_pb2.AppendEventRequest), f"declined {spelling}"
        assert parsed.event.occurred_at.ToDatetime(tzinfo=UTC) == base
