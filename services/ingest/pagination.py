"""AIP-158 page tokens: opaque to clients, bound to the request's filters."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from services.runtime.errors import InvalidArgumentError

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


def page_size(requested: int, *, default: int = DEFAULT_PAGE_SIZE, maximum: int = MAX_PAGE_SIZE) -> int:
    if requested < 0:
        raise InvalidArgumentError("page_size must not be negative", reason="INVALID_PAGE_SIZE")
    return min(requested or default, maximum)


def encode_token(position: list[Any], *, scope: str) -> str:
    document = json.dumps({"p": position, "s": scope}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(document).decode().rstrip("=")


def decode_token(token: str, *, scope: str) -> list[Any] | None:
    """The cursor of a token made by encode_token for the same scope; None for an empty token."""
    if not token:
        return None
    try:
        document = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        position = document["p"]
        token_scope = document["s"]
    except (ValueError, KeyError, TypeError, binascii.Error) as error:
        raise InvalidArgumentError("page_token is not valid", reason="INVALID_PAGE_TOKEN") from error
    if token_scope != scope or not isinstance(position, list):
        raise InvalidArgumentError(
            "page_token belongs to a request with different filters", reason="INVALID_PAGE_TOKEN"
        )
    return position
