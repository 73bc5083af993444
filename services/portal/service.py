"""The portal's use cases: signing people in and out, and calling the services on their behalf.

The portal holds no domain data and has no shortcut to any store but its own sessions: every read
and action is a gRPC call through the gateway's channels, signed for the person, so the services
check the same permissions and record the same access as for the JSON routes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from awareness.analytics.v1 import analytics_pb2_grpc
from awareness.gdpr.v1 import gdpr_pb2_grpc
from awareness.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from awareness.policy.v1 import policy_pb2_grpc
from awareness.scoring.v1 import scoring_pb2_grpc
from awareness.signing.v1 import signing_pb2, signing_pb2_grpc
from sqlalchemy.orm import Session, sessionmaker

from services.gateway.authn import Authenticator
from services.portal import repository
from services.portal.config import PortalConfig
from services.portal.domain.sessions import Expiry, SessionPolicy, new_token, token_hash
from services.runtime import auth, db
from services.runtime.clients import ChannelFactory
from services.runtime.errors import PermissionDeniedError, UnauthenticatedError

T = TypeVar("T")
API_KEY_PREFIX = "apikey:"


@dataclass(frozen=True, slots=True)
class Person:
    """Someone signed in: who the services see, and the session's CSRF token."""

    principal: auth.Principal
    csrf_token: str
    token_hash: str

    @property
    def roles(self) -> frozenset[str]:
        return self.principal.roles

    def can(self, permission: str) -> bool:
        return self.principal.has(permission)


@dataclass(frozen=True, slots=True)
class Ended:
    """A session that existed but has ended, and why (the sign-in page says so)."""

    why: Expiry | str


class Sessions:
    """Server-side sessions in the gateway's store; the cookie carries only a random token."""

    def __init__(
        self,
        *,
        store: sessionmaker[Session],
        authenticator: Authenticator,
        config: PortalConfig,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._store = store
        self._authenticator = authenticator
        self._clock = clock
        self.policy = SessionPolicy(
            idle=timedelta(seconds=config.idle_seconds), absolute=timedelta(seconds=config.max_seconds)
        )

    async def sign_in_with_api_key(self, api_key: str) -> tuple[str, Person]:
        """A new session for the holder of ``api_key``: its cookie token and the person.

        Raises UnauthenticatedError for a wrong, revoked or expired key and PermissionDeniedError
        for a credential with no role."""
        principal = await self._authenticator.authenticate(f"Bearer {api_key.strip()}")
        return await self.start(principal)

    async def start(self, principal: auth.Principal) -> tuple[str, Person]:
        if not principal.roles:
            raise PermissionDeniedError(
                "this account has no role in Awareness; ask an administrator for one", reason="NO_ROLE"
            )
        token, csrf = new_token(), new_token()
        hashed = token_hash(token)
        key_id = principal.subject.removeprefix(API_KEY_PREFIX) if _is_key(principal) else None
        now = self._clock()

        def add() -> None:
            with db.transaction(self._store) as session:
                # Sessions nobody came back to are swept here, so the table never outgrows its use.
                repository.delete_sessions_before(
                    session, created_before=now - self.policy.absolute, idle_before=now - self.policy.idle
                )
                repository.add_session(
                    session,
                    token_hash=hashed,
                    subject=principal.subject,
                    roles=principal.roles,
                    key_id=key_id,
                    csrf_token=csrf,
                    now=now,
                )

        await db.run_db(add)
        return token, Person(principal=principal, csrf_token=csrf, token_hash=hashed)

    async def resolve(self, token: str | None) -> Person | Ended | None:
        """The person a cookie token signs in, an ended session, or None for no session at all."""
        if not token:
            return None
        hashed = token_hash(token)
        record = await db.run_db(self._find, hashed)
        if record is None:
            return None
        now = self._clock()
        expiry = self.policy.expiry(created_at=record.created_at, last_seen_at=record.last_seen_at, now=now)
        if expiry is not None:
            await self.end(hashed)
            return Ended(expiry)
        principal = auth.Principal(subject=record.subject, roles=record.roles)
        if record.key_id is not None:
            try:
                # Roles, revocation and expiry are the key's as of now, not as of sign-in.
                principal = await self._authenticator.proven_key(record.key_id)
            except UnauthenticatedError as exc:
                await self.end(hashed)
                return Ended(exc.reason)
        if self.policy.needs_touch(last_seen_at=record.last_seen_at, now=now):
            await db.run_db(self._touch, hashed, now)
        return Person(principal=principal, csrf_token=record.csrf_token, token_hash=hashed)

    async def end(self, hashed: str) -> None:
        def delete() -> None:
            with db.transaction(self._store) as session:
                repository.delete_session(session, token_hash=hashed)

        await db.run_db(delete)

    def _find(self, hashed: str) -> repository.SessionRecord | None:
        with self._store() as session:
            return repository.find_session(session, token_hash=hashed)

    def _touch(self, hashed: str, now: datetime) -> None:
        with db.transaction(self._store) as session:
            repository.touch_session(session, token_hash=hashed, now=now)


def _is_key(principal: auth.Principal) -> bool:
    return principal.subject.startswith(API_KEY_PREFIX)


class Services:
    """The services' stubs, each call made as the person (the channel signs for the principal set)."""

    def __init__(self, channels: ChannelFactory) -> None:
        self._channels = channels

    async def as_person(self, person: Person, call: Callable[[], Awaitable[T]]) -> T:
        return await auth.acting_as(person.principal, call)

    def ingest(self) -> ingest_pb2_grpc.IngestServiceStub:
        return ingest_pb2_grpc.IngestServiceStub(self._channels.channel("ingest"))

    def signing(self) -> signing_pb2_grpc.SigningServiceStub:
        return signing_pb2_grpc.SigningServiceStub(self._channels.channel("signing"))

    def policy(self) -> policy_pb2_grpc.PolicyServiceStub:
        return policy_pb2_grpc.PolicyServiceStub(self._channels.channel("policy"))

    def scoring(self) -> scoring_pb2_grpc.ScoringServiceStub:
        return scoring_pb2_grpc.ScoringServiceStub(self._channels.channel("scoring"))

    def gdpr(self) -> gdpr_pb2_grpc.GdprServiceStub:
        return gdpr_pb2_grpc.GdprServiceStub(self._channels.channel("gdpr"))

    def analytics(self) -> analytics_pb2_grpc.AnalyticsServiceStub:
        return analytics_pb2_grpc.AnalyticsServiceStub(self._channels.channel("analytics"))

    def breaker_states(self) -> dict[str, str]:
        return self._channels.breaker_states()

    async def list_events(
        self, person: Person, request: ingest_pb2.ListEventsRequest
    ) -> ingest_pb2.ListEventsResponse:
        return await self.as_person(person, lambda: self.ingest().ListEvents(request))

    async def get_event(self, person: Person, name: str) -> ingest_pb2.Event:
        return await self.as_person(
            person, lambda: self.ingest().GetEvent(ingest_pb2.GetEventRequest(name=name))
        )

    async def label_event(self, person: Person, request: ingest_pb2.LabelEventRequest) -> ingest_pb2.Event:
        return await self.as_person(person, lambda: self.ingest().LabelEvent(request))

    async def inclusion_evidence(self, person: Person, event: ingest_pb2.Event) -> Evidence | None:
        """The proof of an event's leaf in the newest checkpoint, with that checkpoint and the log's
        published keys; None until the event is checkpointed."""
        receipt = event.receipt
        if not receipt.HasField("leaf_index") or receipt.state != ingest_pb2.Receipt.STATE_CHECKPOINTED:
            return None
        ingest = self.ingest()

        async def gather() -> Evidence:
            checkpoint = await ingest.GetCheckpoint(ingest_pb2.GetCheckpointRequest())
            proof, keys = await asyncio.gather(
                ingest.GetInclusionProof(
                    ingest_pb2.GetInclusionProofRequest(
                        leaf_index=receipt.leaf_index, tree_size=checkpoint.tree_size
                    )
                ),
                self.signing().ListPublicKeys(signing_pb2.ListPublicKeysRequest()),
            )
            return Evidence(
                leaf_index=receipt.leaf_index,
                leaf_hash=bytes(proof.leaf_hash),
                tree_size=checkpoint.tree_size,
                proof=[bytes(node) for node in proof.hashes],
                note=checkpoint.note,
                verifier_keys=[key.note_verifier_key for key in keys.public_keys if key.note_verifier_key],
            )

        return await self.as_person(person, gather)


@dataclass(frozen=True, slots=True)
class Evidence:
    leaf_index: int
    leaf_hash: bytes
    tree_size: int
    proof: list[bytes]
    note: str
    verifier_keys: list[str]
