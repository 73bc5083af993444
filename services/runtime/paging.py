"""AIP-158 pagination: page sizes and the suite's one page-token codec.

A page token is ``base64url(json(position) || tag)`` where the tag is a truncated
HMAC-SHA256, under a key derived from the service's own secret every replica shares, over the
list method, the request's filters and the position. A client can read nothing it did not
already see (positions are ids and times of rows it was given), and can change nothing: a
forged, altered, truncated, other-filter or other-method token is INVALID_ARGUMENT
(INVALID_PAGE_TOKEN on ``page_token``), never an exception from a cast deeper down.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from services.runtime.errors import FieldViolation, InvalidArgumentError

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000

# Domain separation: the page-token key is never the service secret itself, nor any other
# key derived from it.
PAGE_TOKEN_KEY_LABEL = b"awareness page token key v1"
TAG_BYTES = 16
# Positions are a few ids and numbers; anything longer is not ours.
MAX_TOKEN_CHARS = 1024
_TOKEN_ALPHABET = re.compile(r"[A-Za-z0-9_-]+")

Position = Sequence[int | str]
RowT = TypeVar("RowT")


def page_size(requested: int, *, default: int = DEFAULT_PAGE_SIZE, maximum: int = MAX_PAGE_SIZE) -> int:
    if requested < 0:
        raise InvalidArgumentError(
            "page_size must not be negative",
            reason="INVALID_PAGE_SIZE",
            violations=[FieldViolation("page_size", "must not be negative")],
        )
    return min(requested or default, maximum)


class PageTokens:
    """Encodes and checks page tokens under one key (the same on every replica)."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("a page-token key needs at least 16 bytes")
        self._key = key

    @classmethod
    def from_secret(cls, service_secret: bytes) -> PageTokens:
        """The codec keyed by HMAC(service secret, label): every replica of a service derives the same key."""
        return cls(hmac.new(service_secret, PAGE_TOKEN_KEY_LABEL, hashlib.sha256).digest())

    def encode(self, position: Position, *, method: str, filters: Any = None) -> str:
        """An opaque token for ``position``, valid only for ``method`` with the same ``filters``."""
        payload = json.dumps(list(position), separators=(",", ":"), ensure_ascii=False).encode()
        token = base64.urlsafe_b64encode(payload + self._tag(method, filters, payload)).decode("ascii")
        token = token.rstrip("=")
        if len(token) > MAX_TOKEN_CHARS:
            # decode() would refuse it: a position this long is a bug in the caller, not input.
            raise ValueError(f"a page position must encode to at most {MAX_TOKEN_CHARS} characters")
        return token

    def decode(
        self,
        token: str,
        *,
        method: str,
        filters: Any = None,
        shape: Sequence[type[int] | type[str] | type[float]],
    ) -> tuple[Any, ...] | None:
        """The position in a token from ``encode``; None for an empty token.

        ``shape`` gives the type of each element, so a caller can use them without a cast.
        """
        if not token:
            return None
        raw = _unbase64(token)
        if raw is None or len(raw) <= TAG_BYTES:
            raise invalid_page_token("page_token is malformed")
        payload, tag = raw[:-TAG_BYTES], raw[-TAG_BYTES:]
        if not hmac.compare_digest(tag, self._tag(method, filters, payload)):
            raise invalid_page_token("page_token was not issued for this request")
        try:
            position = json.loads(payload)
        except ValueError:
            raise invalid_page_token("page_token is malformed") from None
        if not isinstance(position, list) or len(position) != len(shape):
            raise invalid_page_token("page_token holds no position of this list")
        for value, kind in zip(position, shape, strict=True):
            # bool is an int to Python, never to a cursor.
            if type(value) is not kind:
                raise invalid_page_token("page_token holds no position of this list")
        return tuple(position)

    async def fetch_page(
        self,
        fetch: Callable[[int], Awaitable[Sequence[RowT]]],
        *,
        size: int,
        position: Callable[[RowT], Position],
        method: str,
        filters: Any = None,
    ) -> tuple[Sequence[RowT], str]:
        """One page of at most ``size`` rows and the token of the next ("" after the last page).

        ``fetch(limit)`` returns up to ``limit`` rows after the decoded position; it is asked for one
        more than the page, so a full page tells whether another follows without a count. The
        token holds ``position`` of the page's last row.
        """
        rows = await fetch(size + 1)
        if len(rows) <= size:
            return rows, ""
        return rows[:size], self.encode(position(rows[size - 1]), method=method, filters=filters)

    def _tag(self, method: str, filters: Any, payload: bytes) -> bytes:
        scope = json.dumps(filters, sort_keys=True, separators=(",", ":"), default=str)
        message = b"\0".join((b"v1", method.encode(), scope.encode(), payload))
        return hmac.new(self._key, message, hashlib.sha256).digest()[:TAG_BYTES]


def _unbase64(token: str) -> bytes | None:
    """The bytes of a canonical unpadded base64url string, None for anything else.

    Canonical only, so that no two spellings decode to the same token.
    """
    if len(token) > MAX_TOKEN_CHARS or not _TOKEN_ALPHABET.fullmatch(token):
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        return None
    if base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=") != token:
        return None
    return raw


def invalid_page_token(message: str) -> InvalidArgumentError:
    """The one answer to a page token that cannot be used (also for a caller's own checks)."""
    return InvalidArgumentError(
        message, reason="INVALID_PAGE_TOKEN", violations=[FieldViolation("page_token", message)]
    )
