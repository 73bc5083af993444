"""Schemathesis hooks for the gateway run (loaded through SCHEMATHESIS_HOOKS).

Teaches schemathesis the RFC 3161 request media type: well-formed DER TimeStampReqs over
random digests, plus arbitrary bytes to exercise the refusal path.
"""

from __future__ import annotations

import schemathesis
from hypothesis import strategies as st

_SHA256_ALGORITHM = bytes.fromhex("300d06096086480165030402010500")


def time_stamp_request(digest: bytes) -> bytes:
    """DER TimeStampReq { version 1, messageImprint { sha256, digest }, certReq TRUE }."""
    imprint_body = _SHA256_ALGORITHM + b"\x04\x20" + digest
    imprint = b"\x30" + bytes([len(imprint_body)]) + imprint_body
    body = b"\x02\x01\x01" + imprint + b"\x01\x01\xff"
    return b"\x30" + bytes([len(body)]) + body


schemathesis.openapi.media_type(
    "application/timestamp-query",
    st.one_of(
        st.binary(min_size=32, max_size=32).map(time_stamp_request), st.binary(min_size=1, max_size=64)
    ),
)
