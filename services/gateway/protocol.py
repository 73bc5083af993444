"""The gateway's HTTP/1.1 parser: uvicorn's httptools protocol, with request heads capped.

httptools (llhttp, in C) parses requests about three times faster than h11 on this stack (see
docs/benchmarks.md), but unlike h11 it has no bound on a request head: a client could make the
gateway buffer megabytes of header. This protocol answers 431 and closes the connection when a
head's request line and fields pass ``MAX_HEAD_BYTES`` (the cap h11 enforced), and also when that
many bytes arrive without the head ending, so that no more than that is ever buffered.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEAD_BYTES = 16 * 1024
_REFUSAL_BODY = f"request head larger than {MAX_HEAD_BYTES} bytes\n".encode()
_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"content-type: text/plain; charset=utf-8\r\n"
    + f"content-length: {len(_REFUSAL_BODY)}\r\n".encode()
    + b"connection: close\r\n\r\n"
    + _REFUSAL_BODY
)


class HeadTooLargeError(Exception):
    """Raised inside the parser's callback to stop parsing a head over the cap."""


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` that refuses a request head over ``MAX_HEAD_BYTES`` with 431."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_size = 0  # request line and fields of the head being parsed
        self._unparsed_head_bytes: int | None = 0  # None while a body (not a head) is received
        self._refusing = False

    def data_received(self, data: bytes) -> None:
        if self._unparsed_head_bytes is not None:
            self._unparsed_head_bytes += len(data)
        super().data_received(data)
        # After parsing: a chunk that completes a head (and carries body bytes) is fine.
        endless = self._unparsed_head_bytes is not None and self._unparsed_head_bytes > MAX_HEAD_BYTES
        if endless and not self.transport.is_closing():
            self._refuse()

    def on_url(self, url: bytes) -> None:
        self._grow(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._grow(len(name) + len(value) + 4)  # ": " and CRLF
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._unparsed_head_bytes = None
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._head_size = 0
        self._unparsed_head_bytes = 0

    def send_400_response(self, msg: str) -> None:
        if self._refusing:  # the parser stopped because of _grow: say why
            self._refuse()
        else:
            super().send_400_response(msg)

    def _grow(self, size: int) -> None:
        self._head_size += size
        if self._head_size > MAX_HEAD_BYTES:
            self._refusing = True
            raise HeadTooLargeError  # httptools turns it into HttpParserCallbackError

    def _refuse(self) -> None:
        self._refusing = True
        self.transport.write(_TOO_LARGE)
        self.transport.close()
