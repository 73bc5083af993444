"""The signing use cases: time-stamps, checkpoints, digests, key reloads and rotations.

The servicer (api.py) validates requests and maps protos; this layer does the work and records it.
Work that blocks is kept off the event loop: token issuing together with its database record (one
``asyncio.to_thread`` hop), token verification (milliseconds of ASN.1 and chain checks), file I/O on
the key directory, and large digest batches. A checkpoint signature (about 0.1 ms of Ed25519 and note
encoding) and a note verification (about 0.3 ms) run inline: a thread hop would cost about as much as
the work.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from prometheus_client import Counter, Gauge, Histogram
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from services.evidence.checkpoint import parse_signed_note, sign_checkpoint, verify_checkpoint
from services.evidence.errors import InvalidSignatureError, MalformedNoteError, UnknownSignerError
from services.runtime import db
from services.runtime.errors import FailedPreconditionError, UnavailableError
from services.runtime.metrics import ServiceMetrics
from services.signing import repository
from services.signing.config import SigningConfig
from services.signing.domain.errors import TimestampVerificationError
from services.signing.domain.pki import ROOT_PRIVATE_KEY_FILE, KeyMaterial, KeyPurpose, key_id_of, rotate_key
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

INLINE_DIGESTS = 16  # larger batches are signed in a worker thread
MAX_SERIAL_ATTEMPTS = 5


@dataclass(frozen=True)
class SigningMetrics:
    timestamps_issued: Counter
    checkpoints_signed: Counter
    latency: Histogram
    upstream_requests: Counter
    certificate_expiry: Gauge

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
            certificate_expiry=metrics.gauge(
                "certificate_expiry_timestamp_seconds",
                "Expiry (Unix time) of each certificate new signatures chain to: root, timestamp, checkpoint",
                ["certificate"],
            ),
        )

    @contextmanager
    def timed(self, operation: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.latency.labels(operation).observe(time.perf_counter() - started)


@dataclass(frozen=True, slots=True)
class CheckpointRecord:
    """A signed checkpoint as recorded: the note and the time-stamp token over it (empty if none)."""

    origin: str
    tree_size: int
    root_hash: bytes
    signed_at: datetime
    note: str
    key_id: str
    timestamp_token: bytes = field(repr=False)
    tsa: str


@dataclass(frozen=True, slots=True)
class TimestampCheck:
    """A token's verdict; the token's details are set whenever it parsed and verified cryptographically."""

    valid: bool
    reason: str = ""
    gen_time: datetime | None = None
    serial: str = ""
    policy: str = ""
    tsa: str = ""
    hash_algorithm: str = ""


@dataclass(frozen=True, slots=True)
class CheckpointCheck:
    valid: bool
    reason: str = ""
    key_id: str = ""
    origin: str = ""
    tree_size: int = 0
    root_hash: bytes = b""


@dataclass(frozen=True, slots=True)
class Rotation:
    new_key_id: str
    previous_key_id: str


class SigningService:
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
    ) -> None:
        self._config = config
        self._keys = keys
        self._sessions = sessions
        self._metrics = metrics
        self._upstream = upstream
        self._clock = clock or (lambda: datetime.now(UTC))
        self._rotation_lock = asyncio.Lock()
        self._serial_source = serial_source  # kept across reloads (tests inject one)
        # Read at scrape time from the current snapshot, so a rotation or reload shows at once.
        for certificate in keys.certificates():
            metrics.certificate_expiry.labels(certificate).set_function(
                functools.partial(self._certificate_expiry, certificate)
            )

    @property
    def keys(self) -> ActiveKeys:
        return self._keys

    def _certificate_expiry(self, certificate: str) -> float:
        return self._keys.certificates()[certificate].not_valid_after_utc.timestamp()

    @property
    def log_origin(self) -> str:
        return self._config.log_origin

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

    async def timestamp(self, der_request: bytes) -> TimestampOutcome:
        with self._metrics.timed("timestamp"):
            outcome = await asyncio.to_thread(self._issue_recorded, der_request, purpose="request")
        self._metrics.timestamps_issued.labels(outcome.status).inc()
        return outcome

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

    async def verify_timestamp(
        self, token: bytes, *, data: bytes | None, digest: bytes | None
    ) -> TimestampCheck:
        with self._metrics.timed("verify_timestamp"):
            return await asyncio.to_thread(self._verify_timestamp, token, data=data, digest=digest)

    def _verify_timestamp(self, token: bytes, *, data: bytes | None, digest: bytes | None) -> TimestampCheck:
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
            return TimestampCheck(valid=False, reason=str(exc))
        except (ValueError, TypeError, KeyError):
            return TimestampCheck(valid=False, reason="not a well-formed RFC 3161 token")
        valid, reason = True, ""
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
                valid, reason = False, "the token is dated after its signing key was retired"
        return TimestampCheck(
            valid=valid,
            reason=reason,
            gen_time=info.gen_time,
            serial=str(info.serial_number),
            policy=info.policy_oid,
            tsa=info.tsa_name or info.signer_certificate.subject.rfc4514_string(),
            hash_algorithm=info.hash_algorithm,
        )

    # -- checkpoints ------------------------------------------------------------------------------

    async def sign_checkpoint(self, *, origin: str, tree_size: int, root_hash: bytes) -> CheckpointRecord:
        """Sign and time-stamp a checkpoint; a retry gets the same note and token as the first time."""
        with self._metrics.timed("checkpoint"):
            keys = self._keys
            existing = await db.run_db(
                self._find_checkpoint,
                origin=origin,
                tree_size=tree_size,
                root_hash=root_hash,
                key_id=keys.checkpoint_key.key_id,
            )
            if existing is not None:
                return existing
            note = sign_checkpoint(
                origin=origin, tree_size=tree_size, root_hash=root_hash, key=keys.note_signer
            ).encode()
            upstream_token = await self._upstream.timestamp(note.encode()) if self._upstream else None
            checkpoint = await db.run_db(
                self._record_checkpoint,
                keys,
                origin=origin,
                tree_size=tree_size,
                root_hash=root_hash,
                note=note,
                upstream_token=upstream_token,
            )
        source = "none" if not checkpoint.tsa else "internal" if checkpoint.tsa == "internal" else "upstream"
        self._metrics.checkpoints_signed.labels(source).inc()
        return checkpoint

    def _find_checkpoint(
        self, *, origin: str, tree_size: int, root_hash: bytes, key_id: str
    ) -> CheckpointRecord | None:
        with self._sessions() as session:
            row = repository.find_checkpoint(
                session, origin=origin, tree_size=tree_size, root_hash=root_hash, key_id=key_id
            )
            if row is None:
                return None
            return CheckpointRecord(
                origin=row.origin,
                tree_size=row.tree_size,
                root_hash=row.root_hash,
                signed_at=row.signed_at,
                note=row.note,
                key_id=row.key_id,
                timestamp_token=row.timestamp_token,
                tsa=row.tsa,
            )

    def _record_checkpoint(
        self,
        keys: ActiveKeys,
        *,
        origin: str,
        tree_size: int,
        root_hash: bytes,
        note: str,
        upstream_token: IssuedToken | None,
    ) -> CheckpointRecord:
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
            return CheckpointRecord(
                origin=origin,
                tree_size=tree_size,
                root_hash=root_hash,
                signed_at=signed_at,
                note=note,
                key_id=keys.checkpoint_key.key_id,
                timestamp_token=token.token if token is not None else b"",
                tsa=tsa if token is not None else "",
            )
        raise UnavailableError("could not record the checkpoint's time-stamp", reason="TIMESTAMP_UNRECORDED")

    def verify_checkpoint(self, note: str) -> CheckpointCheck:
        with self._metrics.timed("verify_checkpoint"):
            return self._verify_checkpoint(note)

    def _verify_checkpoint(self, note: str) -> CheckpointCheck:
        keys = self._keys
        try:
            names = {signature.key_name for signature in parse_signed_note(note).signatures}
        except MalformedNoteError as exc:
            return CheckpointCheck(valid=False, reason=str(exc))
        names.add(self._config.log_origin)
        for key in keys.checkpoint_keys():
            verifiers = [keys.verifier_for(key, name=name) for name in sorted(names)]
            try:
                body = verify_checkpoint(note, verifier_keys=verifiers)
            except UnknownSignerError:
                continue
            except (InvalidSignatureError, MalformedNoteError) as exc:
                return CheckpointCheck(valid=False, reason=str(exc))
            return CheckpointCheck(
                valid=True,
                key_id=key.key_id,
                origin=body.origin,
                tree_size=body.tree_size,
                root_hash=body.root_hash,
            )
        return CheckpointCheck(
            valid=False, reason="the note carries no signature from a published checkpoint key"
        )

    async def sign_digests(self, digests: list[bytes]) -> tuple[KeyMaterial, list[bytes]]:
        """Ed25519 signatures with the active checkpoint key (deterministic: a retry gets the same bytes)."""
        key = self._keys.checkpoint_key
        with self._metrics.timed("sign_digests"):
            if len(digests) <= INLINE_DIGESTS:
                return key, _sign_each(key, digests)
            return key, await asyncio.to_thread(_sign_each, key, digests)

    # -- rotation ---------------------------------------------------------------------------------

    async def rotate_key(self, purpose: KeyPurpose, *, request_id: str, actor: str) -> Rotation:
        """A new key generation of ``purpose``; a retry with the same request id returns the first one."""
        async with self._rotation_lock:
            if request_id:
                earlier = await db.run_db(self._find_rotation, request_id=request_id)
                if earlier is not None:
                    await self.reload_keys()
                    return earlier
            self._check_keys_writable()
            previous = self._keys.keyring.active(purpose)
            try:
                created = await asyncio.to_thread(rotate_key, self._config.pki_dir, purpose)
            except OSError as exc:  # PermissionError included
                verb = "is read-only" if isinstance(exc, PermissionError) else "cannot be written"
                raise FailedPreconditionError(
                    f"the key directory {self._config.pki_dir} {verb}: {exc.strerror}",
                    reason="PKI_READ_ONLY",
                ) from exc
            await self.reload_keys()
            await db.run_db(
                self._record_rotation,
                request_id=request_id,
                purpose=purpose.value,
                new_key_id=created.key_id,
                previous_key_id=previous.key_id,
                rotated_by=actor,
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
            return Rotation(new_key_id=created.key_id, previous_key_id=previous.key_id)

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

    def _find_rotation(self, *, request_id: str) -> Rotation | None:
        with self._sessions() as session:
            row = repository.find_rotation(session, request_id=request_id)
            return None if row is None else Rotation(row.new_key_id, row.previous_key_id)

    def _record_rotation(self, **fields: Any) -> None:
        with db.transaction(self._sessions) as session:
            repository.record_rotation(session, **fields)


def _sign_each(key: KeyMaterial, digests: list[bytes]) -> list[bytes]:
    private_key = key.ed25519_private_key()
    return [private_key.sign(digest) for digest in digests]
