"""An RFC 3161 time-stamp authority whose tokens `openssl ts -verify` accepts, and a token verifier.

ASN.1 comes from asn1crypto (tsp, cms, algos); signatures from cryptography. The authority answers
every request with a DER TimeStampResp: a bad request is a ``rejection`` with the PKIFailureInfo
OpenSSL's own TSA would give, never an exception.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import secrets
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Protocol

from asn1crypto import algos, cms, core, parser, tsp
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from services.signing.domain.errors import PkiError, TimestampVerificationError
from services.signing.domain.pki import KeyPurpose, Keyring, key_id_of

_log = logging.getLogger(__name__)

# A UUID-based OID (ITU-T X.667, arc 2.25): unique without registering an enterprise number.
DEFAULT_POLICY_OID = "2.25.162839883024597937321774236523586858160"
# Message imprint algorithms accepted, with their digest sizes. SHA-1 and MD5 are refused (badAlg).
SUPPORTED_IMPRINT_ALGORITHMS: Mapping[str, int] = {"sha256": 32, "sha384": 48, "sha512": 64}
MAX_REQUEST_BYTES = 16 * 1024  # a real TimeStampReq is about 100 bytes
_MAX_CHAIN_LENGTH = 8
_HASHES: Mapping[str, Callable[[], hashes.HashAlgorithm]] = {
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}


class FailureInfo(StrEnum):
    """PKIFailureInfo bits (RFC 3161 section 2.4.2), named as asn1crypto names them."""

    BAD_ALG = "bad_alg"
    BAD_REQUEST = "bad_request"
    BAD_DATA_FORMAT = "bad_data_format"
    TIME_NOT_AVAILABLE = "time_not_available"
    UNACCEPTED_POLICY = "unaccepted_policy"
    UNACCEPTED_EXTENSION = "unaccepted_extensions"
    ADD_INFO_NOT_AVAILABLE = "add_info_not_available"
    SYSTEM_FAILURE = "system_failure"


class SerialSource(Protocol):
    """Returns a serial number never returned before by this TSA."""

    def __call__(self) -> int: ...


class CountingSerialSource:
    """Consecutive serials held in memory; for tests and single-process tools."""

    def __init__(self, *, start: int = 1) -> None:
        if start < 1:
            raise ValueError("serial numbers are positive")
        self._next = start
        self._lock = threading.Lock()

    def __call__(self) -> int:
        with self._lock:
            serial = self._next
            self._next += 1
        return serial


class RandomSerialSource:
    """128-bit random serials from ``secrets``.

    Unique in practice without any state: a repeat is expected only after about 2**63 tokens
    (birthday bound), so replicas need neither a shared counter nor a database. RFC 3161 allows
    serials up to 160 bits; the top bit is set so every serial has the same length.
    """

    def __call__(self) -> int:
        return secrets.randbits(127) | (1 << 127)


class _TimeStampResp(core.Sequence):  # type: ignore[misc]
    # asn1crypto's TimeStampResp makes the token mandatory; RFC 3161 makes it OPTIONAL (absent
    # on rejection), so responses are built and parsed with this definition.
    _fields = [
        ("status", tsp.PKIStatusInfo),
        ("time_stamp_token", cms.ContentInfo, {"optional": True}),
    ]


class _RequestRejectedError(Exception):
    def __init__(self, failure: FailureInfo, text: str) -> None:
        super().__init__(text)
        self.failure = failure
        self.text = text


@dataclass(frozen=True, slots=True)
class _AcceptedRequest:
    message_imprint_der: bytes  # copied into the TSTInfo exactly as the request encoded it
    hash_algorithm: str
    hashed_message: bytes
    policy_oid: str
    nonce: int | None
    certificate_requested: bool


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """What the TSA put in a token it issued (or what an upstream TSA's token says)."""

    serial_number: int
    gen_time: datetime
    hash_algorithm: str
    hashed_message: bytes
    policy_oid: str
    nonce: int | None
    signer_key_id: str  # empty when the token names no certificate it carries
    token: bytes = field(repr=False)  # the DER TimeStampToken (ContentInfo)

    @property
    def serial_hex(self) -> str:
        return format(self.serial_number, "x")


@dataclass(frozen=True, slots=True)
class TimestampOutcome:
    """The DER TimeStampResp, with the issued token's details or the failure it reports."""

    response: bytes
    issued: IssuedToken | None
    failure: FailureInfo | None

    @property
    def status(self) -> str:
        """``granted`` or the failure's name (a metrics label)."""
        return "granted" if self.failure is None else self.failure.value


def rejection_response(failure: FailureInfo, text: str) -> bytes:
    """A DER TimeStampResp with status ``rejection``, a status string and one failure bit."""
    response = _TimeStampResp(
        {
            "status": {
                "status": "rejection",
                "status_string": [text],
                "fail_info": tsp.PKIFailureInfo({failure.value}),
            }
        }
    )
    return bytes(response.dump())


class TimeStampAuthority:
    """Issues RFC 3161 tokens (SignedData over TSTInfo) with an ECDSA or RSA key."""

    def __init__(
        self,
        *,
        key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
        certificate: x509.Certificate,
        chain: Sequence[x509.Certificate] = (),
        policy_oid: str = DEFAULT_POLICY_OID,
        accepted_policies: Iterable[str] = (),
        accuracy_seconds: int = 1,
        serial_source: SerialSource | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        if key_id_of(key.public_key()) != key_id_of(certificate.public_key()):
            raise PkiError("the TSA private key does not match its certificate")
        _check_timestamping_certificate(certificate, error=PkiError)
        if accuracy_seconds < 0:
            raise ValueError("accuracy cannot be negative")
        self._key = key
        self._certificate = certificate
        self._policy_oid = policy_oid
        self._accepted_policies = frozenset({policy_oid, *accepted_policies})
        self._accuracy_seconds = accuracy_seconds
        self._serial_source: SerialSource = serial_source or RandomSerialSource()
        self._clock = clock or (lambda: datetime.now(UTC))
        self._signer_digest = _signer_digest_for(key)
        self._key_id = key_id_of(certificate.public_key())
        certificate_der = certificate.public_bytes(serialization.Encoding.DER)
        asn1_certificate = asn1_x509.Certificate.load(certificate_der)
        # Everything that does not change from one token to the next is DER-encoded once here; a
        # token is then a few byte joins around the TSTInfo and the signature (see _issue_token).
        digest_name = self._signer_digest.name
        self._signature_algorithm = (
            f"{digest_name}_ecdsa" if isinstance(key, ec.EllipticCurvePrivateKey) else f"{digest_name}_rsa"
        )
        self._digest_algorithm_der = bytes(algos.DigestAlgorithm({"algorithm": digest_name}).dump())
        self._signature_algorithm_der = bytes(
            algos.SignedDigestAlgorithm({"algorithm": self._signature_algorithm}).dump()
        )
        # CertificateSet is a SET OF: DER orders its elements by their encodings.
        chain_der = [certificate_der, *(c.public_bytes(serialization.Encoding.DER) for c in chain)]
        self._certificates_der = _tlv(_CONTEXT_0_CONSTRUCTED, b"".join(sorted(chain_der)))
        tsa_name = asn1_x509.GeneralName(name="directory_name", value=asn1_certificate.subject)
        self._tsa_field_der = _tlv(_CONTEXT_0_CONSTRUCTED, bytes(tsa_name.dump()))
        self._accuracy_der = (
            bytes(tsp.Accuracy({"seconds": accuracy_seconds}).dump()) if accuracy_seconds else b""
        )
        self._policy_der: dict[str, bytes] = {}
        # ESSCertIDv2 (RFC 5035) binds the signer certificate into the signature; OpenSSL requires it.
        signing_certificate: dict[str, object] = {
            "cert_hash": hashlib.sha256(certificate_der).digest(),
            "issuer_serial": {
                "issuer": [asn1_x509.GeneralName(name="directory_name", value=asn1_certificate.issuer)],
                "serial_number": asn1_certificate.serial_number,
            },
        }
        self._content_type_attribute_der = bytes(
            cms.CMSAttribute({"type": "content_type", "values": ["tst_info"]}).dump()
        )
        self._signing_certificate_attribute_der = bytes(
            cms.CMSAttribute(
                {
                    "type": "signing_certificate_v2",
                    "values": [tsp.SigningCertificateV2({"certs": [signing_certificate]})],
                }
            ).dump()
        )
        self._signer_identifier_der = bytes(
            cms.SignerIdentifier(
                name="issuer_and_serial_number",
                value={"issuer": asn1_certificate.issuer, "serial_number": asn1_certificate.serial_number},
            ).dump()
        )

    @classmethod
    def from_keyring(
        cls,
        keyring: Keyring,
        *,
        policy_oid: str = DEFAULT_POLICY_OID,
        accepted_policies: Iterable[str] = (),
        accuracy_seconds: int = 1,
        serial_source: SerialSource | None = None,
    ) -> TimeStampAuthority:
        """The authority for the keyring's active time-stamping key."""
        active = keyring.active(KeyPurpose.TIMESTAMP)
        return cls(
            key=active.ecdsa_private_key(),
            certificate=active.certificate,
            policy_oid=policy_oid,
            accepted_policies=accepted_policies,
            accuracy_seconds=accuracy_seconds,
            serial_source=serial_source,
        )

    @property
    def certificate(self) -> x509.Certificate:
        return self._certificate

    @property
    def policy_oid(self) -> str:
        return self._policy_oid

    def respond(self, der_request: bytes) -> bytes:
        """Answer a DER TimeStampReq with a DER TimeStampResp; never raises."""
        return self.issue(der_request).response

    def issue(self, der_request: bytes) -> TimestampOutcome:
        """Like ``respond``, with what the token records (to keep an audit trail); never raises."""
        try:
            accepted = self._check_request(der_request)
        except _RequestRejectedError as rejected:
            return TimestampOutcome(
                response=rejection_response(rejected.failure, rejected.text),
                issued=None,
                failure=rejected.failure,
            )
        try:
            issued = self._issue_token(accepted)
            # TimeStampResp ::= SEQUENCE { status PKIStatusInfo (granted), timeStampToken }
            response = _tlv(_SEQUENCE, _GRANTED_STATUS_DER + issued.token)
            return TimestampOutcome(response=response, issued=issued, failure=None)
        except Exception:
            # RFC 3161 reports the TSA's own failures in-band (systemFailure); the caller stays up.
            _log.exception("time-stamp token could not be issued")
            return TimestampOutcome(
                response=rejection_response(FailureInfo.SYSTEM_FAILURE, "the time-stamp could not be issued"),
                issued=None,
                failure=FailureInfo.SYSTEM_FAILURE,
            )

    def _check_request(self, der_request: bytes) -> _AcceptedRequest:
        # Checks in OpenSSL's order (ts_RESP_check_request), with its failure bits.
        if len(der_request) > MAX_REQUEST_BYTES:
            raise _RequestRejectedError(FailureInfo.BAD_DATA_FORMAT, "request is too large")
        try:
            request = tsp.TimeStampReq.load(der_request, strict=True)
            _ = request.native  # asn1crypto parses lazily: force every field now
        except Exception as exc:
            raise _RequestRejectedError(
                FailureInfo.BAD_DATA_FORMAT, "request is not a DER TimeStampReq"
            ) from exc
        if request["version"].native != "v1":
            raise _RequestRejectedError(FailureInfo.BAD_REQUEST, "bad request version")
        imprint = request["message_imprint"]
        algorithm = imprint["hash_algorithm"]
        algorithm_name = algorithm["algorithm"].native
        if algorithm_name not in SUPPORTED_IMPRINT_ALGORITHMS:
            raise _RequestRejectedError(
                FailureInfo.BAD_ALG, f"message digest algorithm {algorithm_name} is not supported"
            )
        if algorithm["parameters"].native is not None:
            raise _RequestRejectedError(FailureInfo.BAD_ALG, "superfluous message digest parameter")
        hashed_message: bytes = imprint["hashed_message"].native
        if len(hashed_message) != SUPPORTED_IMPRINT_ALGORITHMS[algorithm_name]:
            raise _RequestRejectedError(FailureInfo.BAD_DATA_FORMAT, "bad message digest length")
        requested_policy = request["req_policy"].dotted if request["req_policy"].native is not None else None
        if requested_policy is not None and requested_policy not in self._accepted_policies:
            raise _RequestRejectedError(FailureInfo.UNACCEPTED_POLICY, "requested policy is not supported")
        if request["extensions"].native:
            raise _RequestRejectedError(FailureInfo.UNACCEPTED_EXTENSION, "unsupported extension")
        return _AcceptedRequest(
            message_imprint_der=bytes(imprint.dump()),
            hash_algorithm=str(algorithm_name),
            hashed_message=hashed_message,
            policy_oid=requested_policy or self._policy_oid,
            nonce=request["nonce"].native,
            certificate_requested=bool(request["cert_req"].native),
        )

    def _issue_token(self, accepted: _AcceptedRequest) -> IssuedToken:
        # Second precision; the accuracy field tells verifiers how far the clock may be off.
        gen_time = self._clock().astimezone(UTC).replace(microsecond=0)
        serial_number = self._serial_source()
        if not 0 < serial_number < 2**160:
            raise ValueError("RFC 3161 serial numbers are positive and at most 160 bits")
        # TSTInfo (RFC 3161 section 2.4.2), fields in order; ordering (DEFAULT FALSE) is omitted.
        tst_info_der = _tlv(
            _SEQUENCE,
            b"".join(
                (
                    _VERSION_1_DER,
                    self._policy_oid_der(accepted.policy_oid),
                    accepted.message_imprint_der,
                    _der_integer(serial_number),
                    _tlv(_GENERALIZED_TIME, gen_time.strftime("%Y%m%d%H%M%SZ").encode()),
                    self._accuracy_der,
                    b"" if accepted.nonce is None else _der_integer(accepted.nonce),
                    self._tsa_field_der,
                )
            ),
        )
        digest_name = self._signer_digest.name
        # Signed attributes: a SET OF, whose DER orders the encoded attributes (X.690 11.6).
        attributes = sorted(
            (
                self._content_type_attribute_der,
                _attribute(_SIGNING_TIME_OID_DER, _cms_time(gen_time)),
                _attribute(_MESSAGE_DIGEST_OID_DER, _tlv(_OCTET_STRING, _digest(digest_name, tst_info_der))),
                self._signing_certificate_attribute_der,
            )
        )
        attributes_content = b"".join(attributes)
        # The signature covers the attributes DER-encoded as a SET OF (RFC 5652 section 5.4).
        signature = self._sign(_tlv(_SET, attributes_content))
        signer_info = _tlv(
            _SEQUENCE,
            b"".join(
                (
                    _VERSION_1_DER,
                    self._signer_identifier_der,
                    self._digest_algorithm_der,
                    _tlv(_CONTEXT_0_CONSTRUCTED, attributes_content),  # [0] IMPLICIT SET OF
                    self._signature_algorithm_der,
                    _tlv(_OCTET_STRING, signature),
                )
            ),
        )
        encapsulated = _tlv(
            _SEQUENCE,
            _TST_INFO_OID_DER + _tlv(_CONTEXT_0_CONSTRUCTED, _tlv(_OCTET_STRING, tst_info_der)),
        )
        signed_data = _tlv(
            _SEQUENCE,
            b"".join(
                (
                    _VERSION_3_DER,
                    _tlv(_SET, self._digest_algorithm_der),
                    encapsulated,
                    self._certificates_der if accepted.certificate_requested else b"",
                    _tlv(_SET, signer_info),
                )
            ),
        )
        token = _tlv(_SEQUENCE, _SIGNED_DATA_OID_DER + _tlv(_CONTEXT_0_CONSTRUCTED, signed_data))
        return IssuedToken(
            serial_number=serial_number,
            gen_time=gen_time,
            hash_algorithm=accepted.hash_algorithm,
            hashed_message=accepted.hashed_message,
            policy_oid=accepted.policy_oid,
            nonce=accepted.nonce,
            signer_key_id=self._key_id,
            token=token,
        )

    def _policy_oid_der(self, policy_oid: str) -> bytes:
        encoded = self._policy_der.get(policy_oid)
        if encoded is None:
            encoded = bytes(core.ObjectIdentifier(policy_oid).dump())
            self._policy_der[policy_oid] = encoded
        return encoded

    def _sign(self, message: bytes) -> bytes:
        if isinstance(self._key, ec.EllipticCurvePrivateKey):
            return self._key.sign(message, ec.ECDSA(self._signer_digest))
        return self._key.sign(message, padding.PKCS1v15(), self._signer_digest)


# -- DER encoding of the per-token parts -----------------------------------------------------------

_SEQUENCE = 0x30
_SET = 0x31
_INTEGER = 0x02
_OCTET_STRING = 0x04
_UTC_TIME = 0x17
_GENERALIZED_TIME = 0x18
_CONTEXT_0_CONSTRUCTED = 0xA0
_VERSION_1_DER = bytes.fromhex("020101")
_VERSION_3_DER = bytes.fromhex("020103")
_GRANTED_STATUS_DER = bytes.fromhex("3003020100")  # PKIStatusInfo { status granted (0) }
_TST_INFO_OID_DER = bytes(cms.ContentType("tst_info").dump())
_SIGNED_DATA_OID_DER = bytes(cms.ContentType("signed_data").dump())
_SIGNING_TIME_OID_DER = bytes(cms.CMSAttributeType("signing_time").dump())
_MESSAGE_DIGEST_OID_DER = bytes(cms.CMSAttributeType("message_digest").dump())


def _tlv(tag: int, contents: bytes) -> bytes:
    """One DER element: tag, definite length, contents."""
    length = len(contents)
    if length < 0x80:
        return bytes((tag, length)) + contents
    size = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(size))) + size + contents


def _der_integer(value: int) -> bytes:
    """A DER INTEGER: minimal two's complement, big-endian."""
    magnitude = value if value >= 0 else ~value
    return _tlv(_INTEGER, value.to_bytes(magnitude.bit_length() // 8 + 1, "big", signed=True))


def _attribute(type_der: bytes, value_der: bytes) -> bytes:
    # Attribute ::= SEQUENCE { attrType OBJECT IDENTIFIER, attrValues SET OF AttributeValue }
    return _tlv(_SEQUENCE, type_der + _tlv(_SET, value_der))


def _cms_time(when: datetime) -> bytes:
    # RFC 5652 section 11.3: UTCTime for 1950-2049, GeneralizedTime otherwise.
    if 1950 <= when.year < 2050:
        return _tlv(_UTC_TIME, when.strftime("%y%m%d%H%M%SZ").encode())
    return _tlv(_GENERALIZED_TIME, when.strftime("%Y%m%d%H%M%SZ").encode())


# -- requests and verification ---------------------------------------------------------------------


def build_timestamp_request(
    *,
    data: bytes | None = None,
    digest: bytes | None = None,
    hash_algorithm: str = "sha256",
    nonce: int | None = None,
    certificate_requested: bool = True,
    policy_oid: str | None = None,
) -> bytes:
    """A DER TimeStampReq over ``data`` (hashed here) or over a ready ``digest``."""
    if (data is None) == (digest is None):
        raise ValueError("give exactly one of data or digest")
    if hash_algorithm not in SUPPORTED_IMPRINT_ALGORITHMS:
        raise ValueError(f"unsupported hash algorithm {hash_algorithm}")
    hashed = _digest(hash_algorithm, data) if data is not None else digest
    fields: dict[str, object] = {
        "version": "v1",
        "message_imprint": {"hash_algorithm": {"algorithm": hash_algorithm}, "hashed_message": hashed},
        "cert_req": certificate_requested,
    }
    if nonce is not None:
        fields["nonce"] = nonce
    if policy_oid is not None:
        fields["req_policy"] = policy_oid
    return bytes(tsp.TimeStampReq(fields).dump())


@dataclass(frozen=True, slots=True)
class ResponseStatus:
    status: str  # granted, granted_with_mods, rejection, ...
    failure_info: frozenset[str]
    status_text: tuple[str, ...]
    token: bytes | None  # the DER TimeStampToken (ContentInfo) when granted


def parse_timestamp_response(der_response: bytes) -> ResponseStatus:
    """Status, failure bits and token of a DER TimeStampResp."""
    try:
        response = _TimeStampResp.load(der_response, strict=True)
        status = response["status"]
        token = response["time_stamp_token"]
        return ResponseStatus(
            status=str(status["status"].native),
            failure_info=frozenset(status["fail_info"].native or ()),
            status_text=tuple(status["status_string"].native or ()),
            token=None if isinstance(token, core.Void) else token.dump(),
        )
    except (ValueError, TypeError, KeyError) as exc:
        raise TimestampVerificationError("not a DER TimeStampResp") from exc


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """What a verified token says, and who signed it."""

    serial_number: int
    gen_time: datetime
    policy_oid: str
    hash_algorithm: str
    hashed_message: bytes
    nonce: int | None
    accuracy: timedelta | None
    tsa_name: str | None  # the TSTInfo tsa field, as an RFC 4514 string when it is a directory name
    signer_certificate: x509.Certificate
    signer_key_id: str
    imprint_verified: bool  # False when neither data nor digest was given
    token: bytes = field(repr=False)  # the DER TimeStampToken (ContentInfo), to store with what it stamps


def verify_timestamp_token(
    token_or_response_der: bytes,
    *,
    data: bytes | None = None,
    digest: bytes | None = None,
    trusted_roots: Sequence[x509.Certificate],
    certificates: Sequence[x509.Certificate] = (),
) -> TokenInfo:
    """Verify an RFC 3161 token (or a granted TimeStampResp carrying one).

    Checks the signed attributes (content type, message digest, ESSCertID), the signature, a chain
    from the signer to one of ``trusted_roots`` valid at the token's time, the signer's EKU (only
    timeStamping, critical), and the imprint against ``data`` or ``digest`` when given.
    ``certificates`` supplies the TSA certificate (and intermediates) when the token omits them.
    """
    token_der = _token_der(token_or_response_der)
    token = cms.ContentInfo.load(token_der, strict=True)
    try:
        signed_data = token["content"]
        encapsulated = signed_data["encap_content_info"]
        if encapsulated["content_type"].native != "tst_info":
            raise TimestampVerificationError("the token does not encapsulate a TSTInfo")
        tst_info_der = encapsulated["content"].contents
        tst_info = tsp.TSTInfo.load(tst_info_der, strict=True)
        _ = tst_info.native
        signer_infos = signed_data["signer_infos"]
        if len(signer_infos) != 1:
            raise TimestampVerificationError("a time-stamp token has exactly one signer")
        signer_info = signer_infos[0]
        # The signature covers the signed attributes as a SET OF: their bytes as received, under the
        # SET tag instead of [0] IMPLICIT. Taken before any other access, so nothing is re-encoded.
        signed_attributes_message = parser.emit(0, 1, 17, signer_info["signed_attrs"].contents or b"")
        embedded = [
            x509.load_der_x509_certificate(choice.chosen.dump())
            for choice in (signed_data["certificates"] or [])
            if choice.name == "certificate"
        ]
    except TimestampVerificationError:
        raise
    except Exception as exc:
        raise TimestampVerificationError("the token is not a well-formed RFC 3161 token") from exc

    candidates = [*embedded, *certificates]
    signer = _find_signer(signer_info, candidates)
    digest_name = signer_info["digest_algorithm"]["algorithm"].native
    _check_signed_attributes(
        signer_info, tst_info_der=tst_info_der, digest_name=digest_name, signer_certificate=signer
    )
    _check_signature(signer_info, signer, message=signed_attributes_message, digest_name=digest_name)
    gen_time: datetime = tst_info["gen_time"].native
    _check_chain(signer, candidates=candidates, trusted_roots=trusted_roots, at=gen_time)
    _check_timestamping_certificate(signer, error=TimestampVerificationError)

    imprint = tst_info["message_imprint"]
    hash_algorithm = str(imprint["hash_algorithm"]["algorithm"].native)
    hashed_message: bytes = imprint["hashed_message"].native
    imprint_verified = False
    if data is not None or digest is not None:
        if hash_algorithm not in SUPPORTED_IMPRINT_ALGORITHMS:
            raise TimestampVerificationError(f"unsupported imprint algorithm {hash_algorithm}")
        expected = _digest(hash_algorithm, data) if data is not None else digest
        if digest is not None and data is not None and _digest(hash_algorithm, data) != digest:
            raise TimestampVerificationError("data and digest disagree")
        if expected != hashed_message:
            raise TimestampVerificationError("the token does not cover this data")
        imprint_verified = True
    return TokenInfo(
        serial_number=int(tst_info["serial_number"].native),
        gen_time=gen_time,
        policy_oid=tst_info["policy"].dotted,
        hash_algorithm=hash_algorithm,
        hashed_message=hashed_message,
        nonce=tst_info["nonce"].native,
        accuracy=_accuracy(tst_info["accuracy"]),
        tsa_name=_tsa_name(tst_info["tsa"], signer=signer),
        signer_certificate=signer,
        signer_key_id=key_id_of(signer.public_key()),
        imprint_verified=imprint_verified,
        token=token_der,
    )


def describe_token(token_or_response_der: bytes) -> IssuedToken:
    """What a token says (serial, time, imprint, policy, nonce), without verifying its signature.

    For recording tokens obtained from another TSA; use ``verify_timestamp_token`` to trust one.
    """
    token_der = _token_der(token_or_response_der)
    try:
        signed_data = cms.ContentInfo.load(token_der, strict=True)["content"]
        tst_info = tsp.TSTInfo.load(signed_data["encap_content_info"]["content"].contents, strict=True)
        imprint = tst_info["message_imprint"]
        embedded = [
            x509.load_der_x509_certificate(choice.chosen.dump())
            for choice in (signed_data["certificates"] or [])
            if choice.name == "certificate"
        ]
        signer_infos = signed_data["signer_infos"]
        signer_key_id = ""
        if len(signer_infos) == 1 and embedded:
            with contextlib.suppress(TimestampVerificationError):
                signer_key_id = key_id_of(_find_signer(signer_infos[0], embedded).public_key())
        return IssuedToken(
            serial_number=int(tst_info["serial_number"].native),
            gen_time=tst_info["gen_time"].native,
            hash_algorithm=str(imprint["hash_algorithm"]["algorithm"].native),
            hashed_message=imprint["hashed_message"].native,
            policy_oid=tst_info["policy"].dotted,
            nonce=tst_info["nonce"].native,
            signer_key_id=signer_key_id,
            token=token_der,
        )
    except Exception as exc:
        raise TimestampVerificationError("the token is not a well-formed RFC 3161 token") from exc


def _token_der(der: bytes) -> bytes:
    """The DER token itself, whether given bare or inside a TimeStampResp."""
    try:
        is_token = cms.ContentInfo.load(der, strict=True)["content_type"].native == "signed_data"
    except (ValueError, TypeError, KeyError):
        is_token = False
    if is_token:
        return der
    response = parse_timestamp_response(der)
    if response.status not in {"granted", "granted_with_mods"} or response.token is None:
        raise TimestampVerificationError(f"the response carries no token (status {response.status})")
    return response.token


def _find_signer(signer_info: cms.SignerInfo, candidates: Sequence[x509.Certificate]) -> x509.Certificate:
    sid = signer_info["sid"]
    if sid.name != "issuer_and_serial_number":
        raise TimestampVerificationError("the signer is not identified by issuer and serial number")
    issuer_der = sid.chosen["issuer"].dump()
    serial = sid.chosen["serial_number"].native
    for certificate in candidates:
        if certificate.serial_number == serial and certificate.issuer.public_bytes() == issuer_der:
            return certificate
    raise TimestampVerificationError("the TSA certificate is neither in the token nor given")


def _check_signed_attributes(
    signer_info: cms.SignerInfo,
    *,
    tst_info_der: bytes,
    digest_name: str,
    signer_certificate: x509.Certificate,
) -> None:
    attributes = signer_info["signed_attrs"]
    if isinstance(attributes, core.Void) or not len(attributes):
        raise TimestampVerificationError("the token has no signed attributes")
    by_type: dict[str, object] = {}
    for attribute in attributes:
        name = attribute["type"].native
        if name in by_type or len(attribute["values"]) != 1:
            raise TimestampVerificationError(f"signed attribute {name} must occur once with one value")
        by_type[name] = attribute["values"][0]
    content_type = by_type.get("content_type")
    if not isinstance(content_type, cms.ContentType) or content_type.native != "tst_info":
        raise TimestampVerificationError("the content-type attribute is not id-ct-TSTInfo")
    if digest_name not in _HASHES:
        raise TimestampVerificationError(f"unsupported signer digest {digest_name}")
    message_digest = by_type.get("message_digest")
    if not isinstance(message_digest, core.OctetString) or message_digest.native != _digest(
        digest_name, tst_info_der
    ):
        raise TimestampVerificationError("the message-digest attribute does not match the TSTInfo")
    certificate_der = signer_certificate.public_bytes(serialization.Encoding.DER)
    version_2 = by_type.get("signing_certificate_v2")
    version_1 = by_type.get("signing_certificate")
    if isinstance(version_2, tsp.SigningCertificateV2):
        first = version_2["certs"][0]
        algorithm = first["hash_algorithm"]["algorithm"].native
        if algorithm not in _HASHES:
            raise TimestampVerificationError(f"unsupported ESSCertIDv2 hash {algorithm}")
        expected_hash = _digest(algorithm, certificate_der)
    elif isinstance(version_1, tsp.SigningCertificate):
        first = version_1["certs"][0]
        expected_hash = hashlib.sha1(certificate_der, usedforsecurity=False).digest()
    else:
        raise TimestampVerificationError("the token has no signing-certificate attribute")
    if first["cert_hash"].native != expected_hash:
        raise TimestampVerificationError("the signing-certificate attribute names another certificate")
    issuer_serial = first["issuer_serial"]
    if not isinstance(issuer_serial, core.Void) and issuer_serial["serial_number"].native != (
        signer_certificate.serial_number
    ):
        raise TimestampVerificationError("the signing-certificate attribute names another serial number")


def _check_signature(
    signer_info: cms.SignerInfo, signer: x509.Certificate, *, message: bytes, digest_name: str
) -> None:
    signature = signer_info["signature"].native
    public_key = signer.public_key()
    algorithm = _HASHES[digest_name]()
    try:
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(signature, message, ec.ECDSA(algorithm))
        elif isinstance(public_key, rsa.RSAPublicKey):
            if signer_info["signature_algorithm"].signature_algo != "rsassa_pkcs1v15":
                raise TimestampVerificationError("only RSA PKCS#1 v1.5 token signatures are supported")
            public_key.verify(signature, message, padding.PKCS1v15(), algorithm)
        else:
            raise TimestampVerificationError("unsupported TSA key type")
    except InvalidSignature as exc:
        raise TimestampVerificationError("the token signature does not verify") from exc


def _check_chain(
    signer: x509.Certificate,
    *,
    candidates: Sequence[x509.Certificate],
    trusted_roots: Sequence[x509.Certificate],
    at: datetime,
) -> None:
    trusted = {root.fingerprint(hashes.SHA256()) for root in trusted_roots}
    issuers = [*trusted_roots, *candidates]
    current = signer
    for _ in range(_MAX_CHAIN_LENGTH):
        if not current.not_valid_before_utc <= at <= current.not_valid_after_utc:
            raise TimestampVerificationError(f"{current.subject.rfc4514_string()} was not valid at {at}")
        if current.fingerprint(hashes.SHA256()) in trusted:
            return
        issuer = next((c for c in issuers if c.subject == current.issuer and _issued(current, c)), None)
        if issuer is None:
            raise TimestampVerificationError("the TSA certificate does not chain to a trusted root")
        constraints = _basic_constraints(issuer)
        if constraints is None or not constraints.ca:
            raise TimestampVerificationError(f"{issuer.subject.rfc4514_string()} is not a CA")
        current = issuer
    raise TimestampVerificationError("the certificate chain is too long")


@functools.lru_cache(maxsize=256)
def _issued(certificate: x509.Certificate, issuer: x509.Certificate) -> bool:
    # Cached: a pure function of two immutable certificates, and the P-384 signature check of the
    # same TSA certificate by the same root is otherwise most of every token verification.
    try:
        certificate.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _basic_constraints(certificate: x509.Certificate) -> x509.BasicConstraints | None:
    try:
        return certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return None


def _check_timestamping_certificate(certificate: x509.Certificate, *, error: type[Exception]) -> None:
    """RFC 3161 section 2.3: one EKU extension, critical, whose only purpose is timeStamping."""
    try:
        extension = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    except x509.ExtensionNotFound as exc:
        raise error("the TSA certificate has no extended key usage") from exc
    if not extension.critical or list(extension.value) != [ExtendedKeyUsageOID.TIME_STAMPING]:
        raise error("the TSA certificate's extended key usage must be timeStamping only, and critical")


def _signer_digest_for(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> hashes.HashAlgorithm:
    # Match the hash strength to the curve (P-256/SHA-256, P-384/SHA-384, P-521/SHA-512).
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if key.curve.key_size > 384:
            return hashes.SHA512()
        if key.curve.key_size > 256:
            return hashes.SHA384()
    return hashes.SHA256()


def _digest(algorithm: str, data: bytes) -> bytes:
    return hashlib.new(algorithm, data).digest()


def _accuracy(accuracy: tsp.Accuracy | core.Void) -> timedelta | None:
    if isinstance(accuracy, core.Void):
        return None
    return timedelta(
        seconds=accuracy["seconds"].native or 0,
        milliseconds=accuracy["millis"].native or 0,
        microseconds=accuracy["micros"].native or 0,
    )


def _tsa_name(name: asn1_x509.GeneralName | core.Void, *, signer: x509.Certificate) -> str | None:
    """The TSTInfo tsa field, which must name the signer (as OpenSSL checks it)."""
    if isinstance(name, core.Void):
        return None
    if name.name != "directory_name":
        raise TimestampVerificationError("the token's tsa field does not name its signer")
    subject_der = signer.subject.public_bytes()
    # Identical bytes are the same name; otherwise asn1crypto compares after RFC 5280
    # normalisation (case, spaces), which is much slower.
    # The Name sits under an explicit [4] tag: rebuild its universal SEQUENCE encoding to compare.
    same_bytes = parser.emit(0, 1, 16, name.chosen.contents or b"") == subject_der
    if not same_bytes and name.chosen != asn1_x509.Name.load(subject_der):
        raise TimestampVerificationError("the token's tsa field does not name its signer")
    return signer.subject.rfc4514_string()
