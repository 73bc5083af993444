"""RFC 3161 time-stamps of a SHA-256 digest, as a client of the TSA asks for and keeps them.

``timestamp_request`` builds the DER TimeStampReq that signing's Timestamp RPC takes;
``granted_token`` takes the DER TimeStampResp apart and returns the token (a CMS SignedData, what
``openssl ts -verify -in TOKEN -token_in`` reads) and its genTime, refusing a reply for another digest
or nonce. ``token_facts`` reads the imprint and time back out of a kept token.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from asn1crypto import algos, cms, core, tsp

from services.runtime.errors import FailedPreconditionError

__all__ = ["StampedToken", "granted_token", "timestamp_request", "token_facts"]

_GRANTED: Final = frozenset({"granted", "granted_with_mods"})


@dataclass(frozen=True, slots=True)
class StampedToken:
    """A time-stamp token: its DER bytes, the digest it covers and the TSA's time (genTime, UTC)."""

    der: bytes
    digest: bytes
    algorithm: str
    gen_time: datetime


def timestamp_request(digest: bytes, *, nonce: int) -> bytes:
    """A DER TimeStampReq for a SHA-256 digest, asking for the TSA's certificate (so that
    ``openssl ts -verify`` needs only the CA) and carrying a nonce against replayed replies."""
    return bytes(
        tsp.TimeStampReq(
            {
                "version": "v1",
                "message_imprint": {
                    "hash_algorithm": algos.DigestAlgorithm({"algorithm": "sha256"}),
                    "hashed_message": digest,
                },
                "nonce": nonce,
                "cert_req": True,
            }
        ).dump()
    )


class _TimeStampResp(core.Sequence):  # type: ignore[misc]
    # asn1crypto's TimeStampResp makes the token mandatory; RFC 3161 leaves it out on rejection.
    _fields = [
        ("status", tsp.PKIStatusInfo),
        ("time_stamp_token", cms.ContentInfo, {"optional": True}),
    ]


def _facts(token: cms.ContentInfo, der: bytes) -> tuple[StampedToken, int | None]:
    tst_info = tsp.TSTInfo.load(token["content"]["encap_content_info"]["content"].contents)
    imprint = tst_info["message_imprint"]
    gen_time: datetime = tst_info["gen_time"].native
    stamped = StampedToken(
        der=der,
        digest=imprint["hashed_message"].native,
        algorithm=str(imprint["hash_algorithm"]["algorithm"].native),
        gen_time=gen_time.astimezone(UTC),
    )
    return stamped, tst_info["nonce"].native


def granted_token(reply: bytes, *, digest: bytes, nonce: int) -> StampedToken:
    """The token of a TSA reply for ``digest`` (SHA-256) and ``nonce``; FAILED_PRECONDITION for a
    refusal, a malformed reply, or a token over anything else."""
    try:
        response = _TimeStampResp.load(reply, strict=True)
        status = response["status"]
        granted = str(status["status"].native)
        if granted not in _GRANTED:
            said = "; ".join(status["status_string"].native or ()) or granted
            raise FailedPreconditionError(f"the time-stamp authority refused the request: {said}")
        token = response["time_stamp_token"]
        if isinstance(token, core.Void):
            raise ValueError("no token")
        stamped, replied_nonce = _facts(token, bytes(token.dump()))
    except (ValueError, TypeError, KeyError) as exc:
        raise FailedPreconditionError(
            "the time-stamp authority's reply is not a valid RFC 3161 reply"
        ) from exc
    if (
        stamped.algorithm != "sha256"
        or not hmac.compare_digest(stamped.digest, digest)
        or replied_nonce != nonce
    ):
        raise FailedPreconditionError("the time-stamp authority's token is not for this file's hash")
    return stamped


def token_facts(der: bytes) -> StampedToken:
    """The digest and time a kept token (DER ContentInfo) states; ValueError when it is none."""
    try:
        stamped, _ = _facts(cms.ContentInfo.load(der, strict=True), der)
    except (TypeError, KeyError) as exc:
        raise ValueError(f"not an RFC 3161 time-stamp token: {exc}") from exc
    return stamped
