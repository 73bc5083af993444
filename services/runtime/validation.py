"""The generic request check: values no store can hold are refused before a handler sees them.

The server interceptor runs it on every request message (and on each message of a request
stream). It walks every set field, through nested messages, repeated fields and maps, and
names the field path of each value that a database would refuse:

- a NUL character in any string (PostgreSQL text cannot hold one);
- a string longer than its ``(awareness.api.v1.max_length)``, declared in the protos with the
  width of the column that stores it;
- an enum number the proto does not define (enums are stored in SMALLINT columns, and an
  unknown number means nothing to the service anyway);
- a ``google.protobuf.Timestamp`` outside 0001-01-01..9999-12-31 or with nanos out of range
  (no datetime can hold it).

A service that checks some items itself, so that one bad item refuses only that item (ingest's
appended events), names those fields in ``ServiceApp.validated_fields``; this check skips them.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from services.runtime.errors import FieldViolation, InvalidArgumentError

# google.protobuf.Timestamp's documented range.
MIN_TIMESTAMP_SECONDS = -62_135_596_800
MAX_TIMESTAMP_SECONDS = 253_402_300_799

NUL = "\x00"


@functools.cache
def max_length_of(field: FieldDescriptor) -> int | None:
    """The declared ``(awareness.api.v1.max_length)`` of a field, None when it declares none."""
    from awareness.api.v1 import annotations_pb2

    options = field.GetOptions()
    if not options.HasExtension(annotations_pb2.max_length):
        return None
    value: int = options.Extensions[annotations_pb2.max_length]
    return value


def text_violations(value: str, path: str, *, max_length: int | None = None) -> list[FieldViolation]:
    """The violations of one string value (for services that check their items themselves)."""
    found: list[FieldViolation] = []
    if NUL in value:
        found.append(FieldViolation(path, "must not contain a NUL character"))
    if max_length is not None and len(value) > max_length:
        found.append(FieldViolation(path, f"must be at most {max_length} characters"))
    return found


def message_violations(
    message: Message, *, prefix: str = "", skip: frozenset[str] = frozenset()
) -> list[FieldViolation]:
    """Every value in ``message`` that no store could hold; field paths start at ``prefix``."""
    found: list[FieldViolation] = []
    _walk(message, prefix, skip, found)
    return found


def check_request(message: Message, *, skip: frozenset[str] = frozenset()) -> None:
    """Raise INVALID_ARGUMENT (reason INVALID_FIELD_VALUE) naming every such value."""
    found = message_violations(message, skip=skip)
    if found:
        raise InvalidArgumentError(
            "the request holds values that cannot be stored", reason="INVALID_FIELD_VALUE", violations=found
        )


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


_STRING, _ENUM, _MESSAGE, _MAP, _OTHER = range(5)


@dataclass(frozen=True, slots=True)
class _Plan:
    """What to check in one field, worked out once per field (the walk runs on every request)."""

    kind: int
    name: str
    full_name: str
    repeated: bool
    max_length: int | None = None
    known: frozenset[int] = frozenset()
    key: _Plan | None = None
    value: _Plan | None = None


_PLANS: dict[FieldDescriptor, _Plan] = {}


def _plan(field: FieldDescriptor) -> _Plan:
    plan = _PLANS.get(field)
    if plan is not None:
        return plan
    entry = field.message_type
    kind, max_length, known, key, value = _OTHER, None, frozenset[int](), None, None
    if entry is not None and entry.GetOptions().map_entry:
        kind, key, value = _MAP, _plan(entry.fields_by_name["key"]), _plan(entry.fields_by_name["value"])
    elif field.type == FieldDescriptor.TYPE_STRING:
        kind, max_length = _STRING, max_length_of(field)
    elif field.type == FieldDescriptor.TYPE_ENUM and field.enum_type is not None:
        kind, known = _ENUM, frozenset(field.enum_type.values_by_number)
    elif field.type == FieldDescriptor.TYPE_MESSAGE:
        kind = _MESSAGE
    plan = _Plan(kind, field.name, field.full_name, field.is_repeated, max_length, known, key, value)
    _PLANS[field] = plan
    return plan


def _walk(message: Message, prefix: str, skip: frozenset[str], found: list[FieldViolation]) -> None:
    if message.DESCRIPTOR is Timestamp.DESCRIPTOR:
        _timestamp(message, prefix, found)
        return
    for field, value in message.ListFields():
        plan = _PLANS.get(field) or _plan(field)
        if plan.kind == _OTHER or (skip and plan.full_name in skip):
            continue
        if plan.kind == _MAP:
            assert plan.key is not None and plan.value is not None
            # Map keys may be personal data: the path names the map, never the key.
            path = _join(prefix, plan.name)
            for key, item in value.items():
                _value(plan.key, key, path, skip, found)
                _value(plan.value, item, path, skip, found)
        elif plan.repeated:
            path = _join(prefix, plan.name)
            for index, item in enumerate(value):
                _value(plan, item, f"{path}[{index}]", skip, found)
        else:
            _value(plan, value, _join(prefix, plan.name), skip, found)


def _value(plan: _Plan, value: Any, path: str, skip: frozenset[str], found: list[FieldViolation]) -> None:
    kind = plan.kind
    if kind == _STRING:
        limit = plan.max_length
        if NUL in value or (limit is not None and len(value) > limit):
            found.extend(text_violations(value, path, max_length=limit))
    elif kind == _MESSAGE:
        _walk(value, path, skip, found)
    elif kind == _ENUM and value not in plan.known:
        found.append(FieldViolation(path, f"unknown value {value}"))


def _timestamp(stamp: Message, path: str, found: list[FieldViolation]) -> None:
    seconds: int = stamp.seconds  # type: ignore[attr-defined]
    nanos: int = stamp.nanos  # type: ignore[attr-defined]
    if not MIN_TIMESTAMP_SECONDS <= seconds <= MAX_TIMESTAMP_SECONDS:
        found.append(FieldViolation(path, "must be between 0001-01-01 and 9999-12-31"))
    if not 0 <= nanos <= 999_999_999:
        found.append(FieldViolation(path, "nanos must be between 0 and 999999999"))


def declared_max_lengths(descriptors: Iterable[Descriptor]) -> dict[str, int]:
    """Every declared maximum reachable from these messages, by field full name (for tests/docs)."""
    found: dict[str, int] = {}
    seen: set[str] = set()
    pending: list[Descriptor] = list(descriptors)
    while pending:
        descriptor = pending.pop()
        if descriptor.full_name in seen:
            continue
        seen.add(descriptor.full_name)
        for field in descriptor.fields:
            limit = max_length_of(field)
            if limit is not None:
                found[field.full_name] = limit
            if field.message_type is not None:
                pending.append(field.message_type)
    return found


__all__ = [
    "check_request",
    "declared_max_lengths",
    "max_length_of",
    "message_violations",
    "text_violations",
]
