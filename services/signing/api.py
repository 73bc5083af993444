"""The SigningService servicer: checkpoints, digests, the RFC 3161 TSA, published keys, verification.

Work that blocks is kept off the event loop: token issuing together with its database record
(one ``asyncio.to_thread`` hop), token verification (milliseconds of ASN.1 and chain checks),
file I/O on the key directory, and large digest batches. A checkpoint signature (about 0.1 ms of
Ed25519 and note encoding) and a note verification (about 0.3 ms) run inline: a thread hop would
cost about as much as the work.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc
from awareness.signing.v1 import signing_pb2, signing_pb2_grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from google.protobuf import timestamp_pb2
from prometheus_client import Counter, Histogram
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from services.evidence.checkpoint import (
    NoteVerifier,
    parse_signed_note,
    sign_checkpoint,
    verify_checkpoint,
)
from services.evidence.errors import InvalidSignatureError, MalformedNoteError, UnknownSignerError
from services.runtime import auth, db
from services.runtime.errors import (
    FailedPreconditionError,
    FieldViolation,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
)
from services.runtime.metrics import ServiceMetrics
from services.runtime.paging import PageTokens, invalid_page_token, page_size
from services.signing import repository
from services.signing.config import SigningConfig
from services.signing.domain.errors import TimestampVerificationError
from services.signing.domain.pki import (
    ROOT_PRIVATE_KEY_FILE,
    KeyMaterial,
    KeyPurpose,
    KeyState,
    key_id_of,
    rotate_key,
)
from services.signing.domain.tsa import (
    FailureInfo,
    IssuedToken,
    SerialSource,
    TimestampOutcome,
    build_timestamp_request,
    rejection_response,
    verify_timestamp_token,
)
from services.signing.keys import ActiveKeys, load_active_keys, manifest_stamp
from services.signing.upstream import UpstreamTsa

log = logging.getLogger("awareness.signing")

MAX_DIGESTS = 1000
MAX_DIGEST_BYTES = 64
INLINE_DIGESTS = 16  # larger batches are signed in a worker thread
MAX_SERIAL_ATTEMPTS = 5
MAX_REQUEST_ID_LENGTH = 64
_KEY_NAME = re.compile(r"keys/([0-9a-f]{64})")

_PURPOSES: dict[int, KeyPurpose] = {
    signing_pb2.KEY_PURPOSE_CHECKPOINT: KeyPurpose.CHECKPOINT,
    signing_pb2.KEY_PURPOSE_TIMESTAMP: KeyPurpose.TIMESTAMP,
}
_PURPOSE_ENUMS = {purpose: number for number, purpose in _PURPOSES.items()}


@dataclass(frozen=True)
class SigningMetrics:
    timestamps_issued: Counter
    checkpoints_signed: Counter
    latency: Histogram
    upstream_requests: Counter

    @classmethod
    def create(cls, metrics: ServiceMetrics) -> SigningMetrics:
        return cls(
            timestamps_issued=metrics.counter(
                "timestamps_issued_total",
                "RFC 3161 responses from the internal TSA, by status (granted or the failure reported)",
                ["status"],
            ),
            checkpoints_signed=metrics.counter(
                "checkpoints_signed_total",
                "Checkpoints signed, by which TSA time-stamped them (internal, upstream, none)",
                ["tsa"],
            ),
            latency=metrics.histogram(
                "operation_duration_seconds", "Time spent in each signing operation", ["operation"]
            ),
            upstream_requests=metrics.counter(
                "upstream_tsa_requests_total",
                "Requests to the upstream TSA, by outcome (ok, error, breaker_open)",
                ["outcome"],
            ),
        )

    @contextmanager
    def timed(self, operation: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.latency.labels(operation).observe(time.perf_counter() - started)


class SigningServicer(signing_pb2_grpc.SigningServiceServicer):
    def __init__(
        self,
        *,
        config: SigningConfig,
        keys: ActiveKeys,
        sessions: sessionmaker[Session],
        metrics: SigningMetrics,
        upstream: UpstreamTsa | None = None,
        serial_source: SerialSource | None = None,
        clock: Callable[[], datetime] | None = None,
        page_tokens: PageTokens,
    ) -> None:
        self._config = config
        self._tokens = page_tokens
        self._keys = keys
        self._sessions = sessions
        self._metrics = metrics
        self._upstream = upstream
        self._clock = clock or (lambda: datetime.now(UTC))
        self._rotation_lock = asyncio.Lock()
        self._serial_source = serial_source  # kept across reloads (tests inject one)

    @property
    def keys(self) -> ActiveKeys:
        return self._keys

    # -- keys -------------------------------------------------------------------------------------

    async def reload_keys(self) -> bool:
        """Load the key directory again if its manifest changed; True when the keys changed."""
        stamp = await asyncio.to_thread(manifest_stamp, self._config.pki_dir)
        if stamp == self._keys.manifest_stamp:
            return False
        self._keys = await asyncio.to_thread(
            load_active_keys, self._config, serial_source=self._serial_source
        )
        log.info(
            "keys reloaded",
            extra={
                "checkpoint_key_id": self._keys.checkpoint_key.key_id,
                "timestamp_key_id": key_id_of(self._keys.authority.certificate),
            },
        )
        return True

    async def watch_keys(self) -> None:
        """Background job: pick up rotations made by another replica or a new Secret version."""
        while True:
            await asyncio.sleep(self._config.key_reload_seconds)
            try:
                await self.reload_keys()
            except Exception:
                log.exception("reloading the keys failed; still signing with the loaded ones")

    # -- RFC 3161 ---------------------------------------------------------------------------------

    async def Timestamp(  # noqa: N802 - gRPC method name
        self, request: signing_pb2.TimestampRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> signing_pb2.TimestampResponse:
        with self._metrics.timed("timestamp"):
            outcome = await asyncio.to_thread(self._issue_recorded, request.request, purpose="request")
        self._metrics.timestamps_issued.labels(outcome.status).inc()
        return signing_pb2.TimestampResponse(response=outcome.response)

    def _issue_recorded(self, der_request: bytes, *, purpose: str) -> TimestampOutcome:
        """Issue a token and record it; a serial already on record is never handed out."""
        authority = self._keys.authority
        for _ in range(MAX_SERIAL_ATTEMPTS):
            outcome = authority.issue(der_request)
            if outcome.issued is None:
                return outcome
            try:
                with db.transaction(self._sessions) as session:
                    repository.record_timestamp_token(
                        session,
                        token=outcome.issued,
                        tsa=repository.INTERNAL_TSA,
                        purpose=purpose,
                        recorded_at=self._clock(),
                    )
                return outcome
            except IntegrityError:
                log.warning("time-stamp serial already on record; issuing again with a new serial")
            except Exception:
                log.exception("time-stamp token could not be recorded")
                break
        # RFC 3161: the TSA's own trouble is a systemFailure response, not a transport error.
        return TimestampOutcome(
            response=rejection_response(FailureInfo.SYSTEM_FAILURE, "the time-stamp could not be recorded"),
            issued=None,
            failure=FailureInfo.SYSTEM_FAILURE,
        )

    async def VerifyTimestamp(  # noqa: N802
        self, request: signing_pb2.VerifyTimestampRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> signing_pb2.VerifyTimestampResponse:
        which = request.WhichOneof("token")
        if which is None:
            raise InvalidArgumentError(
                "give timestamp_token or timestamp_response",
                violations=[FieldViolation("timestamp_token", "required")],
            )
        token = getattr(request, which)
        imprint = request.WhichOneof("imprint")
        with self._metrics.timed("verify_timestamp"):
            return await asyncio.to_thread(
                self._verify_timestamp,
                token,
                data=request.data if imprint == "data" else None,
                digest=request.digest if imprint == "digest" else None,
            )

    def _verify_timestamp(
        self, token: bytes, *, data: bytes | None, digest: bytes | None
    ) -> signing_pb2.VerifyTimestampResponse:
        keyring = self._keys.keyring
        certificates = [key.certificate for key in keyring.for_purpose(KeyPurpose.TIMESTAMP)]
        try:
            info = verify_timestamp_token(
                token,
                data=data,
                digest=digest,
                trusted_roots=[keyring.root_certificate, *self._config.upstream_trusted_roots],
                certificates=certificates,
            )
        except TimestampVerificationError as exc:
            return signing_pb2.VerifyTimestampResponse(valid=False, reason=str(exc))
        except (ValueError, TypeError, KeyError):
            return signing_pb2.VerifyTimestampResponse(valid=False, reason="not a well-formed RFC 3161 token")
        response = signing_pb2.VerifyTimestampResponse(
            valid=True,
            gen_time=_timestamp(info.gen_time),
            serial=str(info.serial_number),
            policy=info.policy_oid,
            tsa=info.tsa_name or info.signer_certificate.subject.rfc4514_string(),
            hash_algorithm=info.hash_algorithm,
        )
        retired = next(
            (
                key
                for key in keyring.keys
                if key.key_id == info.signer_key_id and key.info.not_after is not None
            ),
            None,
        )
        if retired is not None and retired.info.not_after is not None:
            slack = info.accuracy.total_seconds() if info.accuracy is not None else 0.0
            if (info.gen_time - retired.info.not_after).total_seconds() > slack:
                response.valid = False
                response.reason = "the token is dated after its signing key was retired"
        return response

    # -- checkpoints ------------------------------------------------------------------------------

    async def SignCheckpoint(  # noqa: N802
        self, request: signing_pb2.SignCheckpointRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> signing_pb2.SignCheckpointResponse:
        origin = request.origin or self._config.log_origin
        violations = []
        if origin != self._config.log_origin:
            violations.append(
                FieldViolation(
                    "origin", f"this signing service signs checkpoints of {self._config.log_origin}"
                )
            )
        if request.tree_size < 0:
            violations.append(FieldViolation("tree_size", "must not be negative"))
        if len(request.root_hash) != 32:
            violations.append(FieldViolation("root_hash", "must be a 32-byte SHA-256 root hash"))
        if violations:
            raise InvalidArgumentError("invalid checkpoint", violations=violations)
        with self._metrics.timed("checkpoint"):
            keys = self._keys
            existing = await self._run_store(
                _find_checkpoint,
                self._sessions,
                origin=origin,
                tree_size=request.tree_size,
                root_hash=request.root_hash,
                key_id=keys.checkpoint_key.key_id,
            )
            if existing is not None:
                # A retry (the method is IDEMPOTENT): the same note and token as the first time.
                return signing_pb2.SignCheckpointResponse(checkpoint=existing)
            note = sign_checkpoint(
                origin=origin, tree_size=request.tree_size, root_hash=request.root_hash, key=keys.note_signer
            ).encode()
            upstream_token = await self._upstream.timestamp(note.encode()) if self._upstream else None
            checkpoint = await self._run_store(
                self._record_checkpoint,
                keys,
                origin=origin,
                tree_size=request.tree_size,
                root_hash=request.root_hash,
                note=note,
                upstream_token=upstream_token,
            )
        source = "none" if not checkpoint.tsa else "internal" if checkpoint.tsa == "internal" else "upstream"
        self._metrics.checkpoints_signed.labels(source).inc()
        return signing_pb2.SignCheckpointResponse(checkpoint=checkpoint)

    def _record_checkpoint(
        self,
        keys: ActiveKeys,
        *,
        origin: str,
        tree_size: int,
        root_hash: bytes,
        note: str,
        upstream_token: IssuedToken | None,
    ) -> signing_pb2.SignedCheckpoint:
        token = upstream_token
        tsa = self._upstream.url if (upstream_token is not None and self._upstream is not None) else ""
        signed_at = self._clock()
        for _ in range(MAX_SERIAL_ATTEMPTS):
            if token is None:
                outcome = keys.authority.issue(
                    build_timestamp_request(data=note.encode(), nonce=secrets.randbits(63))
                )
                self._metrics.timestamps_issued.labels(outcome.status).inc()
                token, tsa = outcome.issued, (repository.INTERNAL_TSA if outcome.issued else "")
            try:
                with db.transaction(self._sessions) as session:
                    repository.record_checkpoint(
                        session,
                        origin=origin,
                        tree_size=tree_size,
                        root_hash=root_hash,
                        key_id=keys.checkpoint_key.key_id,
                        signed_at=signed_at,
                        note=note,
                        tsa=tsa,
                        token=token,
                    )
            except IntegrityError:
                log.warning("time-stamp serial already on record; time-stamping again", extra={"tsa": tsa})
                token = None  # a fresh internal token, with a new serial
                continue
            return signing_pb2.SignedCheckpoint(
                origin=origin,
                tree_size=tree_size,
                root_hash=root_hash,
                timestamp=_timestamp(signed_at),
                note=note,
                key_id=keys.checkpoint_key.key_id,
                timestamp_token=token.token if token is not None else b"",
                tsa=tsa if token is not None else "",
            )
        raise UnavailableError("could not record the checkpoint's time-stamp", reason="TIMESTAMP_UNRECORDED")

    async def VerifyCheckpoint(  # noqa: N802
        self, request: signing_pb2.VerifyCheckpointRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> signing_pb2.VerifyCheckpointResponse:
        if not request.note:
            raise InvalidArgumentError("note is required", violations=[FieldViolation("note", "required")])
        with self._metrics.timed("verify_checkpoint"):
            return self._verify_checkpoint(request.note)

    def _verify_checkpoint(self, note: str) -> signing_pb2.VerifyCheckpointResponse:
        keys = self._keys
        try:
            names = {signature.key_name for signature in parse_signed_note(note).signatures}
        except MalformedNoteError as exc:
            return signing_pb2.VerifyCheckpointResponse(valid=False, reason=str(exc))
        names.add(self._config.log_origin)
        for key in keys.checkpoint_keys():
            verifiers = [keys.verifier_for(key, name=name) for name in sorted(names)]
            try:
                body = verify_checkpoint(note, verifier_keys=verifiers)
            except UnknownSignerError:
                continue
            except (InvalidSignatureError, MalformedNoteError) as exc:
                return signing_pb2.VerifyCheckpointResponse(valid=False, reason=str(exc))
            return signing_pb2.VerifyCheckpointResponse(
                valid=True,
                key_id=key.key_id,
                origin=body.origin,
                tree_size=body.tree_size,
                root_hash=body.root_hash,
            )
        return signing_pb2.VerifyCheckpointResponse(
            valid=False, reason="the note carries no signature from a published checkpoint key"
        )

    async def SignDigests(  # noqa: N802
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
        key = self._keys.checkpoint_key
        with self._metrics.timed("sign_digests"):
            # Ed25519 is deterministic: a retry with the same request id (and key) gets the same bytes.
            if len(digests) <= INLINE_DIGESTS:
                signatures = _sign_each(key, digests)
            else:
                signatures = await asyncio.to_thread(_sign_each, key, digests)
        return signing_pb2.SignDigestsResponse(
            signatures=[
                signing_pb2.DigestSignature(
                    digest=digest, signature=signature, key_id=key.key_id, algorithm="Ed25519"
                )
                for digest, signature in zip(digests, signatures, strict=True)
            ]
        )

    # -- published keys ---------------------------------------------------------------------------

    async def ListPublicKeys(  # noqa: N802
        self, request: signing_pb2.ListPublicKeysRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> signing_pb2.ListPublicKeysResponse:
        size = page_size(request.page_size)
        keys = self._keys
        listed = [
            key
            for key in _published_keys(keys, origin=self._config.log_origin)
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

    async def GetPublicKey(  # noqa: N802
        self, request: signing_pb2.GetPublicKeyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> signing_pb2.PublicKey:
        matched = _KEY_NAME.fullmatch(request.name)
        if matched is None:
            raise InvalidArgumentError(
                "name must be keys/{key_id} (64 lowercase hex digits)",
                violations=[FieldViolation("name", "not a key name")],
            )
        for key in _published_keys(self._keys, origin=self._config.log_origin):
            if key.key_id == matched.group(1):
                return key
        raise NotFoundError(
            f"{request.name} not found", reason="KEY_NOT_FOUND", metadata={"name": request.name}
        )

    async def RotateKey(  # noqa: N802
        self, request: signing_pb2.RotateKeyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> signing_pb2.RotateKeyResponse:
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
        if len(request.request_id) > MAX_REQUEST_ID_LENGTH:
            raise InvalidArgumentError(
                "request_id is too long",
                violations=[FieldViolation("request_id", f"at most {MAX_REQUEST_ID_LENGTH} characters")],
            )
        principal = auth.current_principal()
        async with self._rotation_lock:
            if request.request_id:
                earlier = await self._run_store(_find_rotation, self._sessions, request_id=request.request_id)
                if earlier is not None:
                    await self.reload_keys()
                    return self._rotation_response(earlier[0], earlier[1])
            self._check_keys_writable()
            previous = self._keys.keyring.active(purpose)
            try:
                created = await asyncio.to_thread(rotate_key, self._config.pki_dir, purpose)
            except PermissionError as exc:
                raise FailedPreconditionError(
                    f"the key directory {self._config.pki_dir} is read-only: {exc.strerror}",
                    reason="PKI_READ_ONLY",
                ) from exc
            except OSError as exc:
                raise FailedPreconditionError(
                    f"the key directory {self._config.pki_dir} cannot be written: {exc.strerror}",
                    reason="PKI_READ_ONLY",
                ) from exc
            await self.reload_keys()
            await self._run_store(
                _record_rotation,
                self._sessions,
                request_id=request.request_id,
                purpose=purpose.value,
                new_key_id=created.key_id,
                previous_key_id=previous.key_id,
                rotated_by=principal.subject if principal is not None else "",
                rotated_at=self._clock(),
            )
            log.info(
                "key rotated",
                extra={
                    "purpose": purpose.value,
                    "key_id": created.key_id,
                    "previous_key_id": previous.key_id,
                },
            )
            return self._rotation_response(created.key_id, previous.key_id)

    def _check_keys_writable(self) -> None:
        directory = self._config.pki_dir
        if not os.access(directory, os.W_OK):
            raise FailedPreconditionError(
                f"the key directory {directory} is read-only (a mounted Secret): rotate by publishing "
                "a new Secret version made with `awareness pki rotate`",
                reason="PKI_READ_ONLY",
            )
        if not (directory / ROOT_PRIVATE_KEY_FILE).exists():
            raise FailedPreconditionError(
                f"the root CA private key is not in {directory}, so no key can be issued here: rotate "
                "offline with `awareness pki rotate` and publish a new Secret version",
                reason="PKI_READ_ONLY",
            )

    def _rotation_response(self, new_key_id: str, previous_key_id: str) -> signing_pb2.RotateKeyResponse:
        published = {key.key_id: key for key in _published_keys(self._keys, origin=self._config.log_origin)}
        response = signing_pb2.RotateKeyResponse(key=published[new_key_id])
        if previous_key_id in published:
            response.previous_key.CopyFrom(published[previous_key_id])
        return response

    async def _run_store(self, function: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        try:
            return await db.run_db(function, *args, **kwargs)
        except OperationalError as exc:
            raise UnavailableError("the signing store is unavailable", reason="STORE_UNAVAILABLE") from exc


# -- store helpers (run in a worker thread) --------------------------------------------------------


def _find_checkpoint(
    sessions: sessionmaker[Session], *, origin: str, tree_size: int, root_hash: bytes, key_id: str
) -> signing_pb2.SignedCheckpoint | None:
    with sessions() as session:
        row = repository.find_checkpoint(
            session, origin=origin, tree_size=tree_size, root_hash=root_hash, key_id=key_id
        )
        if row is None:
            return None
        return signing_pb2.SignedCheckpoint(
            origin=row.origin,
            tree_size=row.tree_size,
            root_hash=row.root_hash,
            timestamp=_timestamp(row.signed_at),
            note=row.note,
            key_id=row.key_id,
            timestamp_token=row.timestamp_token,
            tsa=row.tsa,
        )


def _find_rotation(sessions: sessionmaker[Session], *, request_id: str) -> tuple[str, str] | None:
    with sessions() as session:
        row = repository.find_rotation(session, request_id=request_id)
        return None if row is None else (row.new_key_id, row.previous_key_id)


def _record_rotation(sessions: sessionmaker[Session], **fields: Any) -> None:
    with db.transaction(sessions) as session:
        repository.record_rotation(session, **fields)


# -- messages --------------------------------------------------------------------------------------


def _sign_each(key: KeyMaterial, digests: list[bytes]) -> list[bytes]:
    private_key = key.ed25519_private_key()
    return [private_key.sign(digest) for digest in digests]


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
    message = signing_pb2.PublicKey(
        name=f"keys/{key_id}",
        key_id=key_id,
        purpose=purpose,  # type: ignore[arg-type]
        algorithm=_algorithm_name(public_key),
        public_key_pem=public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode(),
        certificate_pem=_pem(certificate),
        not_before=_timestamp(certificate.not_valid_before_utc),
        not_after=_timestamp(certificate.not_valid_after_utc),
        state=state,  # type: ignore[arg-type]
        activate_time=_timestamp(activate_time),
    )
    if retire_time is not None:
        message.retire_time.CopyFrom(_timestamp(retire_time))
    return message


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


def _timestamp(when: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(when.astimezone(UTC))
    return stamp
