# ruff: noqa: N802 - gRPC method names are the proto's (PascalCase)
"""The SigningService servicer: transport only (request validation, proto <-> domain, one use case per RPC).

The work (checkpoints, digests, the RFC 3161 TSA, verification, key rotation) is in ``service.py``;
here are the published-key messages, which are only a view of the loaded keys.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

import grpc
from awareness.signing.v1 import signing_pb2, signing_pb2_grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from services.evidence.checkpoint import NoteVerifier
from services.runtime import audit, auth
from services.runtime.errors import FieldViolation, InvalidArgumentError, NotFoundError
from services.runtime.paging import PageTokens, invalid_page_token, page_size
from services.runtime.timestamps import optional_timestamp, to_timestamp
from services.signing.domain.pki import KeyMaterial, KeyPurpose, KeyState, key_id_of
from services.signing.keys import ActiveKeys
from services.signing.service import CheckpointRecord, SigningService

MAX_DIGESTS = 1000
MAX_DIGEST_BYTES = 64
MAX_REQUEST_ID_LENGTH = 64
_KEY_NAME = re.compile(r"keys/([0-9a-f]{64})")

_PURPOSES: dict[int, KeyPurpose] = {
    signing_pb2.KEY_PURPOSE_CHECKPOINT: KeyPurpose.CHECKPOINT,
    signing_pb2.KEY_PURPOSE_TIMESTAMP: KeyPurpose.TIMESTAMP,
}
_PURPOSE_ENUMS = {purpose: number for number, purpose in _PURPOSES.items()}


class SigningServicer(signing_pb2_grpc.SigningServiceServicer):
    def __init__(self, *, signing: SigningService, page_tokens: PageTokens) -> None:
        self._signing = signing
        self._tokens = page_tokens

    # -- RFC 3161 ---------------------------------------------------------------------------------

    async def Timestamp(
        self, request: signing_pb2.TimestampRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> signing_pb2.TimestampResponse:
        outcome = await self._signing.timestamp(request.request)
        return signing_pb2.TimestampResponse(response=outcome.response)

    async def VerifyTimestamp(
        self, request: signing_pb2.VerifyTimestampRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> signing_pb2.VerifyTimestampResponse:
        which = request.WhichOneof("token")
        if which is None:
            raise InvalidArgumentError(
                "give timestamp_token or timestamp_response",
                violations=[FieldViolation("timestamp_token", "required")],
            )
        imprint = request.WhichOneof("imprint")
        check = await self._signing.verify_timestamp(
            getattr(request, which),
            data=request.data if imprint == "data" else None,
            digest=request.digest if imprint == "digest" else None,
        )
        if check.gen_time is None:
            return signing_pb2.VerifyTimestampResponse(valid=check.valid, reason=check.reason)
        return signing_pb2.VerifyTimestampResponse(
            valid=check.valid,
            reason=check.reason,
            gen_time=to_timestamp(check.gen_time),
            serial=check.serial,
            policy=check.policy,
            tsa=check.tsa,
            hash_algorithm=check.hash_algorithm,
        )

    # -- checkpoints ------------------------------------------------------------------------------

    async def SignCheckpoint(
        self, request: signing_pb2.SignCheckpointRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> signing_pb2.SignCheckpointResponse:
        log_origin = self._signing.log_origin
        origin = request.origin or log_origin
        violations = []
        if origin != log_origin:
            violations.append(
                FieldViolation("origin", f"this signing service signs checkpoints of {log_origin}")
            )
        if request.tree_size < 0:
            violations.append(FieldViolation("tree_size", "must not be negative"))
        if len(request.root_hash) != 32:
            violations.append(FieldViolation("root_hash", "must be a 32-byte SHA-256 root hash"))
        if violations:
            raise InvalidArgumentError("invalid checkpoint", violations=violations)
        checkpoint = await self._signing.sign_checkpoint(
            origin=origin, tree_size=request.tree_size, root_hash=request.root_hash
        )
        return signing_pb2.SignCheckpointResponse(checkpoint=_checkpoint_message(checkpoint))

    async def VerifyCheckpoint(
        self, request: signing_pb2.VerifyCheckpointRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> signing_pb2.VerifyCheckpointResponse:
        if not request.note:
            raise InvalidArgumentError("note is required", violations=[FieldViolation("note", "required")])
        check = self._signing.verify_checkpoint(request.note)
        return signing_pb2.VerifyCheckpointResponse(
            valid=check.valid,
            reason=check.reason,
            key_id=check.key_id,
            origin=check.origin,
            tree_size=check.tree_size,
            root_hash=check.root_hash,
        )

    async def SignDigests(
        self, request: signing_pb2.SignDigestsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> signing_pb2.SignDigestsResponse:
        digests = list(request.digests)
        violations = [
            FieldViolation(f"digests[{index}]", f"must be 1 to {MAX_DIGEST_BYTES} bytes")
            for index, digest in enumerate(digests)
            if not 0 < len(digest) <= MAX_DIGEST_BYTES
        ][:20]
        if not digests or len(digests) > MAX_DIGESTS:
            violations.insert(0, FieldViolation("digests", f"give 1 to {MAX_DIGESTS} digests"))
        if len(request.request_id) > MAX_REQUEST_ID_LENGTH:
            violations.append(FieldViolation("request_id", f"at most {MAX_REQUEST_ID_LENGTH} characters"))
        if violations:
            raise InvalidArgumentError("invalid digests", violations=violations)
        key, signatures = await self._signing.sign_digests(digests)
        return signing_pb2.SignDigestsResponse(
            signatures=[
                signing_pb2.DigestSignature(
                    digest=digest, signature=signature, key_id=key.key_id, algorithm="Ed25519"
                )
                for digest, signature in zip(digests, signatures, strict=True)
            ]
        )

    # -- published keys ---------------------------------------------------------------------------

    async def ListPublicKeys(
        self, request: signing_pb2.ListPublicKeysRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> signing_pb2.ListPublicKeysResponse:
        size = page_size(request.page_size)
        keys = self._signing.keys
        listed = [
            key
            for key in _published_keys(keys, origin=self._signing.log_origin)
            if _matches(key, request.purpose)
        ]
        filters = {"purpose": request.purpose}
        start = 0
        after = self._tokens.decode(
            request.page_token, method="signing.ListPublicKeys", filters=filters, shape=(str,)
        )
        if after is not None:
            position = next((index for index, key in enumerate(listed) if key.key_id == after[0]), None)
            if position is None:
                raise invalid_page_token(
                    "page_token names a key no longer published; start again without one"
                )
            start = position + 1
        page = listed[start : start + size]
        more = start + size < len(listed)
        return signing_pb2.ListPublicKeysResponse(
            public_keys=page,
            next_page_token=self._tokens.encode(
                [page[-1].key_id], method="signing.ListPublicKeys", filters=filters
            )
            if more and page
            else "",
            certificate_chain_pem=[_pem(keys.keyring.root_certificate)],
        )

    async def GetPublicKey(
        self, request: signing_pb2.GetPublicKeyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> signing_pb2.PublicKey:
        matched = _KEY_NAME.fullmatch(request.name)
        if matched is None:
            raise InvalidArgumentError(
                "name must be keys/{key_id} (64 lowercase hex digits)",
                violations=[FieldViolation("name", "not a key name")],
            )
        for key in _published_keys(self._signing.keys, origin=self._signing.log_origin):
            if key.key_id == matched.group(1):
                return key
        raise NotFoundError(
            f"{request.name} not found", reason="KEY_NOT_FOUND", metadata={"name": request.name}
        )

    async def RotateKey(
        self, request: signing_pb2.RotateKeyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> signing_pb2.RotateKeyResponse:
        audit.note(resource="keys")  # the collection, until the new key exists
        if request.purpose == signing_pb2.KEY_PURPOSE_ROOT_CA:
            raise InvalidArgumentError(
                "the root CA is not rotated online: it is the trust anchor auditors pin",
                violations=[FieldViolation("purpose", "CHECKPOINT or TIMESTAMP")],
            )
        purpose = _PURPOSES.get(request.purpose)
        if purpose is None:
            raise InvalidArgumentError(
                "purpose is required", violations=[FieldViolation("purpose", "CHECKPOINT or TIMESTAMP")]
            )
        audit.note(details={"purpose": purpose.value})
        if len(request.request_id) > MAX_REQUEST_ID_LENGTH:
            raise InvalidArgumentError(
                "request_id is too long",
                violations=[FieldViolation("request_id", f"at most {MAX_REQUEST_ID_LENGTH} characters")],
            )
        principal = auth.current_principal()
        rotation = await self._signing.rotate_key(
            purpose, request_id=request.request_id, actor=principal.subject if principal is not None else ""
        )
        published = {
            key.key_id: key for key in _published_keys(self._signing.keys, origin=self._signing.log_origin)
        }
        response = signing_pb2.RotateKeyResponse(key=published[rotation.new_key_id])
        if rotation.previous_key_id in published:
            response.previous_key.CopyFrom(published[rotation.previous_key_id])
        audit.note(
            resource=response.key.name,
            details={"key_id": rotation.new_key_id, "previous_key_id": rotation.previous_key_id},
        )
        return response


# -- messages --------------------------------------------------------------------------------------


def _checkpoint_message(checkpoint: CheckpointRecord) -> signing_pb2.SignedCheckpoint:
    return signing_pb2.SignedCheckpoint(
        origin=checkpoint.origin,
        tree_size=checkpoint.tree_size,
        root_hash=checkpoint.root_hash,
        timestamp=to_timestamp(checkpoint.signed_at),
        note=checkpoint.note,
        key_id=checkpoint.key_id,
        timestamp_token=checkpoint.timestamp_token,
        tsa=checkpoint.tsa,
    )


def _published_keys(keys: ActiveKeys, *, origin: str) -> list[signing_pb2.PublicKey]:
    """Every key generation, newest first, then the root CA."""
    published = [_public_key_message(key, origin=origin) for key in reversed(keys.keyring.keys)]
    root = keys.keyring.root_certificate
    published.append(
        _certificate_message(
            root,
            purpose=signing_pb2.KEY_PURPOSE_ROOT_CA,
            state=signing_pb2.PublicKey.STATE_ACTIVE,
            activate_time=root.not_valid_before_utc,
            retire_time=None,
        )
    )
    return published


def _public_key_message(key: KeyMaterial, *, origin: str) -> signing_pb2.PublicKey:
    message = _certificate_message(
        key.certificate,
        purpose=_PURPOSE_ENUMS[key.info.purpose],
        state=signing_pb2.PublicKey.STATE_ACTIVE
        if key.info.state is KeyState.ACTIVE
        else signing_pb2.PublicKey.STATE_RETIRED,
        activate_time=key.info.not_before,
        retire_time=key.info.not_after,
    )
    if key.info.purpose is KeyPurpose.CHECKPOINT:
        message.note_verifier_key = NoteVerifier(name=origin, public_key=key.ed25519_public_key()).vkey
    return message


def _certificate_message(
    certificate: x509.Certificate,
    *,
    purpose: int,
    state: int,
    activate_time: datetime,
    retire_time: datetime | None,
) -> signing_pb2.PublicKey:
    public_key = certificate.public_key()
    key_id = key_id_of(public_key)
    return signing_pb2.PublicKey(
        name=f"keys/{key_id}",
        key_id=key_id,
        purpose=purpose,  # type: ignore[arg-type]
        algorithm=_algorithm_name(public_key),
        public_key_pem=public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode(),
        certificate_pem=_pem(certificate),
        not_before=to_timestamp(certificate.not_valid_before_utc),
        not_after=to_timestamp(certificate.not_valid_after_utc),
        state=state,  # type: ignore[arg-type]
        activate_time=to_timestamp(activate_time),
        retire_time=optional_timestamp(retire_time),
    )


def _algorithm_name(public_key: Any) -> str:
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return "Ed25519"
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        size = public_key.curve.key_size
        digest = 512 if size > 384 else 384 if size > 256 else 256
        return f"ECDSA-P{size}-SHA{digest}"
    if isinstance(public_key, rsa.RSAPublicKey):
        return f"RSA-{public_key.key_size}-SHA256"
    return type(public_key).__name__


def _matches(key: signing_pb2.PublicKey, purpose: int) -> bool:
    return purpose == signing_pb2.KEY_PURPOSE_UNSPECIFIED or key.purpose == purpose


def _pem(certificate: x509.Certificate) -> str:
    return certificate.public_bytes(serialization.Encoding.PEM).decode()
