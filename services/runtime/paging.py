"""AIP-158 pagination: page sizes and opaque page tokens bound to the request's filters."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from typing import Any

from services.runtime.errors import FieldViolation, InvalidArgumentError

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


def page_size(requested: int, *, default: int = DEFAULT_PAGE_SIZE, maximum: int = MAX_PAGE_SIZE) -> int:
    if requested < 0:
        raise InvalidArgumentError(
            "page_size must not be negative",
            reason="INVALID_PAGE_SIZE",
            violations=[FieldViolation("page_size", "must not be negative")],
        )
    return min(requested or default, maximum)


def _scope(filters: Any) -> str:
    encoded = json.dumps(filters, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(encoded).hexdigest()[:16]


def encode_token(position: Any, *, filters: Any) -> str:
    """An opaque token for ``position``, valid only with the same ``filters``."""
    document = json.dumps({"p": position, "s": _scope(filters)}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(document).decode("ascii").rstrip("=")


def decode_token(token: str, *, filters: Any) -> Any:
    """The position of a token from ``encode_token``; None for an empty token."""
    if not token:
        return None
    try:
        padded = token + "=" * (-len(token) % 4)
        document = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        position = document["p"]
        scope = document["s"]
    except (binascii.Error, ValueError, KeyError, TypeError, UnicodeEncodeError):
        raise _invalid("page_token is malformed") from None
    if scope != _scope(filters):
        raise _invalid("page_token was issued for a request with other filters")
    return position


def _invalid(message: str) -> InvalidArgumentError:
    return InvalidArgumentError(
        message, reason="INVALID_PAGE_TOKEN", violations=[FieldViolation("page_token", message)]
    )
