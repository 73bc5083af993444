"""google.api.http path templates, compiled once and matched against raw request paths.

Grammar (google/api/http.proto)::

    Template = "/" Segments [ Verb ] ;
    Segments = Segment { "/" Segment } ;
    Segment  = "*" | "**" | LITERAL | Variable ;
    Variable = "{" FieldPath [ "=" Segments ] "}" ;
    Verb     = ":" LITERAL ;

Starlette's router cannot express custom verbs (``/v1/{name=policies/*}:approve``) or
variables spanning several segments, so the gateway matches with this instead. Matching
works on the raw (still percent-encoded) path split on ``/``, so an encoded ``%2F`` inside
an identifier stays inside its segment, as grpc-gateway does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_LITERAL = re.compile(r"^[A-Za-z0-9._~!$&'()*+,;=@-]+$")

SegmentKind = Literal["literal", "single", "multi"]


class TemplateError(ValueError):
    """A google.api.http path template that does not follow the grammar."""


@dataclass(frozen=True, slots=True)
class Segment:
    kind: SegmentKind
    text: str = ""


@dataclass(frozen=True, slots=True)
class Variable:
    """``{field_path=...}`` covering segments ``[start, end)`` of the flattened template."""

    field_path: str
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class PathTemplate:
    source: str
    segments: tuple[Segment, ...]
    variables: tuple[Variable, ...]
    verb: str | None

    @property
    def literal_count(self) -> int:
        return sum(1 for s in self.segments if s.kind == "literal")

    @property
    def has_multi(self) -> bool:
        return any(s.kind == "multi" for s in self.segments)

    def specificity(self) -> tuple[int, int, int, int]:
        """Sort key: verbs first, then more literals, then fixed-length before ``**``."""
        return (
            0 if self.verb else 1,
            -self.literal_count,
            1 if self.has_multi else 0,
            -len(self.segments),
        )

    def match(self, raw_path: str) -> dict[str, str] | None:
        """Bound variables (field path -> decoded value) if ``raw_path`` matches, else None."""
        if not raw_path.startswith("/"):
            return None
        path = raw_path[1:]
        if self.verb is not None:
            suffix = ":" + self.verb
            if not path.endswith(suffix):
                return None
            path = path[: -len(suffix)]
        parts = path.split("/")
        if not self._fits(parts):
            return None
        expanded = self._expand(len(parts))
        bound: dict[str, str] = {}
        for variable in self.variables:
            start, end = expanded[variable.start], expanded[variable.end]
            values = parts[start:end]
            if any(v == "" for v in values):
                return None
            bound[variable.field_path] = "/".join(unquote(v) for v in values)
        return bound

    def _fits(self, parts: list[str]) -> bool:
        count = len(self.segments)
        if self.has_multi:
            if len(parts) < count:
                return False
        elif len(parts) != count:
            return False
        offset = 0
        for index, segment in enumerate(self.segments):
            if segment.kind == "multi":
                offset = len(parts) - count
                continue
            part = parts[index + offset]
            if part == "":
                return False
            if segment.kind == "literal" and unquote(part) != segment.text:
                return False
        return True

    def _expand(self, length: int) -> list[int]:
        """Map template segment boundaries to request-path indices (``**`` stretches)."""
        boundaries = [0]
        position = 0
        for segment in self.segments:
            position += (length - len(self.segments) + 1) if segment.kind == "multi" else 1
            boundaries.append(position)
        return boundaries

    def openapi_path(self) -> tuple[str, dict[str, str]]:
        """An OpenAPI path (``/v1/events/{event}:label``) and parameter name -> field path.

        A variable ``{name=events/*}`` becomes the literal ``events`` plus one parameter
        named after the resource (``event``), the AIP resource-pattern convention.
        """
        rendered: list[str] = []
        parameters: dict[str, str] = {}
        owners = {i: v for v in self.variables for i in range(v.start, v.end)}
        previous_literal = ""
        for index, segment in enumerate(self.segments):
            if segment.kind == "literal":
                rendered.append(segment.text)
                previous_literal = segment.text
                continue
            variable = owners.get(index)
            base = _singular(previous_literal) if previous_literal else "value"
            if variable is not None and variable.end - variable.start == 1:
                base = variable.field_path.replace(".", "_") if not previous_literal else base
            name = base
            suffix = 2
            while name in parameters:
                name = f"{base}{suffix}"
                suffix += 1
            parameters[name] = variable.field_path if variable is not None else ""
            rendered.append("{" + name + "}")
        path = "/" + "/".join(rendered)
        if self.verb:
            path += ":" + self.verb
        return path, parameters


def _singular(word: str) -> str:
    if word.endswith("ies"):
        return word[:-3] + "y"
    if word.endswith("ses"):
        return word[:-2]
    if word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def _split_verb(template: str) -> tuple[str, str | None]:
    depth = 0
    last_slash = -1
    colon = -1
    for index, char in enumerate(template):
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth < 0:
                raise TemplateError(f"unbalanced braces in {template!r}")
        elif depth == 0 and char == "/":
            last_slash = index
            colon = -1
        elif depth == 0 and char == ":" and index > last_slash:
            colon = index
    if depth != 0:
        raise TemplateError(f"unbalanced braces in {template!r}")
    if colon < 0:
        return template, None
    verb = template[colon + 1 :]
    if not verb or not _LITERAL.match(verb):
        raise TemplateError(f"bad custom verb in {template!r}")
    return template[:colon], verb


def _split_top_level(text: str) -> list[str]:
    parts: list[str] = []
    depth = 0
    current = ""
    for char in text:
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
        if char == "/" and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return parts


def _plain_segment(text: str, template: str) -> Segment:
    if text == "*":
        return Segment("single")
    if text == "**":
        return Segment("multi")
    if not text or not _LITERAL.match(text) or "*" in text:
        raise TemplateError(f"bad segment {text!r} in {template!r}")
    return Segment("literal", text)


def parse_template(template: str) -> PathTemplate:
    """Compile one template; raises TemplateError on anything outside the grammar."""
    if not template.startswith("/"):
        raise TemplateError(f"template must start with '/': {template!r}")
    body, verb = _split_verb(template)
    segments: list[Segment] = []
    variables: list[Variable] = []
    for raw in _split_top_level(body[1:]):
        if raw.startswith("{"):
            if not raw.endswith("}"):
                raise TemplateError(f"bad variable {raw!r} in {template!r}")
            inner = raw[1:-1]
            field_path, _, pattern = inner.partition("=")
            if not _IDENT.match(field_path):
                raise TemplateError(f"bad field path {field_path!r} in {template!r}")
            start = len(segments)
            for part in (pattern or "*").split("/"):
                segments.append(_plain_segment(part, template))
            variables.append(Variable(field_path=field_path, start=start, end=len(segments)))
        else:
            segments.append(_plain_segment(raw, template))
    multi = [i for i, s in enumerate(segments) if s.kind == "multi"]
    if multi and (len(multi) > 1 or multi[0] != len(segments) - 1):
        raise TemplateError(f"'**' may only be the last segment: {template!r}")
    return PathTemplate(source=template, segments=tuple(segments), variables=tuple(variables), verb=verb)
