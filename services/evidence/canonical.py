"""Canonical JSON: one spelling per document, so its bytes can be hashed, signed or authenticated.

One JSON object, UTF-8, no insignificant whitespace, members sorted by name, strings escaped as
RFC 8785 (JCS) does; for the value types used (strings, small integers and nested such objects)
this is exactly JCS output.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any

# One encoder for every canonical document: json.dumps with options builds a new one per call.
_JCS_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False, sort_keys=True)
_JCS_UNSORTED_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def canonical_json(value: Mapping[str, Any]) -> bytes:
    """RFC 8785-compatible JSON for objects of strings, small integers and nested such objects."""
    if _code_point_order_is_jcs(value):
        # The common case, done in C: code-point order equals JCS's UTF-16 order for these keys.
        return _JCS_ENCODER.encode(value).encode("utf-8")
    return _JCS_UNSORTED_ENCODER.encode(_sorted_for_jcs(value)).encode("utf-8")


def _code_point_order_is_jcs(value: Any) -> bool:
    """True when every object is a dict whose keys are strings without a character at or above
    U+D800 (where code-point and UTF-16 orders can differ): then json's own sort_keys is JCS order."""
    pending = [value]
    while pending:
        current = pending.pop()
        if type(current) is not dict:
            return False
        try:
            joined = "".join(current)
        except TypeError:  # a non-string key
            return False
        if joined and max(joined) >= "\ud800":
            return False
        for member in current.values():
            if type(member) is not str and isinstance(member, Mapping):
                pending.append(member)
    return True


# The documents of the append path have fixed shapes, so they are spelled directly: each string goes
# through the same C escaper the JSON encoder uses, with members already in JCS order. The result
# equals canonical_json of the same document (a property test checks it) at a fraction of the cost.
json_string: Callable[[str], str] = json.encoder.encode_basestring


def details_json(details: Mapping[str, str]) -> str:
    """The canonical JSON object of a details map. (The append path spells a map and its parts
    from one details_members.)"""
    members = details_members(details)
    if members is None:
        return canonical_json(dict(details)).decode("utf-8")
    return members_json(members, details)


def details_members(details: Mapping[str, str]) -> dict[str, str] | None:
    """Each member of details_json(details) spelled once, ``"name":"value"`` by name, so that the
    document of the whole map and those of its parts (members_json) escape each string once. None
    when a name holds a character at or above U+D800, where JCS's UTF-16 order may differ from
    code-point order: then spell each document with details_json."""
    names = "".join(details)
    if names and max(names) >= "\ud800":
        return None
    j = json_string
    return {name: j(name) + ":" + j(value) for name, value in details.items()}


def members_json(members: Mapping[str, str], names: Iterable[str]) -> str:
    """The canonical JSON object of the `names` (a subset of the map's) from details_members."""
    return "{" + ",".join([members[name] for name in sorted(names)]) + "}"


def _sorted_for_jcs(value: Any) -> Any:
    # JCS orders members by their UTF-16 code units, which differs from code-point order only
    # for keys mixing astral characters with U+E000..U+FFFF; details keys may be anything.
    if isinstance(value, Mapping):
        return {
            key: _sorted_for_jcs(value[key])
            for key in sorted(value, key=lambda k: str(k).encode("utf-16-be"))
        }
    return value
