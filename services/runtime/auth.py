"""Principals, roles and permissions, and the internal call credential.

The gateway authenticates callers and forwards the principal and roles in gRPC
metadata. Every hop signs that metadata with an HMAC under the shared internal
secret, and every service verifies it, so a pod that can reach a service cannot
simply claim to be the gateway. Services check permissions again with the same
table the gateway uses.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from services.runtime.errors import PermissionDeniedError, UnauthenticatedError

PRINCIPAL_HEADER: Final = "x-awareness-principal"
ROLES_HEADER: Final = "x-awareness-roles"
TIMESTAMP_HEADER: Final = "x-awareness-timestamp"
SIGNATURE_HEADER: Final = "x-awareness-signature"
MAX_CLOCK_SKEW_SECONDS: Final = 300
SERVICE_SUBJECT_PREFIX: Final = "service:"

PERMISSIONS: Final = frozenset(
    {
        "ingest:write",
        "events:read",
        # Decrypted subject, summary, details and label notes; without it reads are pseudonymous.
        "events:read_personal",
        "events:label",
        "policy:read",
        "policy:author",
        "policy:approve",
        "policy:retire",
        "model:read",
        "model:train",
        "model:promote",
        "gdpr:export",
        "gdpr:erase",
        "gdpr:consent",
        "gdpr:retention",
        "audit:verify",
        # The GDPR audit trail and erasure records: who asked for whose data, and when.
        "gdpr:audit",
        "timestamp:request",
        "keys:admin",
        # Granted only to services calling each other.
        "internal:call",
    }
)

ROLE_PERMISSIONS: Final[Mapping[str, frozenset[str]]] = {
    "admin": PERMISSIONS - {"internal:call"},
    "integration": frozenset({"ingest:write", "audit:verify", "timestamp:request"}),
    "analyst": frozenset(
        {
            "events:read",
            "events:read_personal",
            "events:label",
            "audit:verify",
            "timestamp:request",
            "policy:read",
            "model:read",
        }
    ),
    "policy_author": frozenset({"policy:author", "policy:read", "events:read"}),
    "policy_approver": frozenset({"policy:approve", "policy:retire", "policy:read", "events:read"}),
    "auditor": frozenset(
        {"audit:verify", "gdpr:audit", "events:read", "timestamp:request", "policy:read", "model:read"}
    ),
    "dpo": frozenset(
        {
            "gdpr:export",
            "gdpr:erase",
            "gdpr:consent",
            "gdpr:retention",
            "gdpr:audit",
            "audit:verify",
            "events:read",
            "events:read_personal",
        }
    ),
    "ml_engineer": frozenset({"model:read", "model:train", "model:promote", "events:read"}),
    "service": frozenset(PERMISSIONS),
}
ROLES: Final = frozenset(ROLE_PERMISSIONS)


@dataclass(frozen=True)
class Principal:
    """Who is calling: a person or integration (via the gateway) or another service."""

    subject: str
    roles: frozenset[str]

    @property
    def permissions(self) -> frozenset[str]:
        granted: set[str] = set()
        for role in self.roles:
            granted |= ROLE_PERMISSIONS.get(role, frozenset())
        return frozenset(granted)

    def has(self, permission: str) -> bool:
        return permission in self.permissions

    @classmethod
    def for_service(cls, service: str) -> Principal:
        return cls(subject=f"service:{service}", roles=frozenset({"service"}))

    @property
    def service(self) -> str | None:
        """The service this principal is, when it is one (not a person or integration)."""
        if "service" in self.roles and self.subject.startswith(SERVICE_SUBJECT_PREFIX):
            return self.subject.removeprefix(SERVICE_SUBJECT_PREFIX)
        return None


_current: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "awareness_principal", default=None
)


def current_principal() -> Principal | None:
    return _current.get()


def set_current_principal(principal: Principal | None) -> contextvars.Token[Principal | None]:
    return _current.set(principal)


def require_caller(method: str, allowed: frozenset[str], principal: Principal) -> None:
    """Refuse ``principal`` unless it is one of the services ``allowed`` to call ``method``."""
    if principal.service not in allowed:
        raise PermissionDeniedError(
            f"{principal.subject} may not call {method}: only {', '.join(sorted(allowed))}",
            reason="CALLER_NOT_ALLOWED",
            metadata={"allowed_callers": ",".join(sorted(allowed))},
        )


def require_permission(permission: str, principal: Principal | None = None) -> Principal:
    """The calling principal, if it holds ``permission``; otherwise the right error."""
    who = principal if principal is not None else current_principal()
    if who is None:
        raise UnauthenticatedError("no authenticated principal on this call", reason="NO_PRINCIPAL")
    if not who.has(permission):
        raise PermissionDeniedError(
            f"{who.subject} lacks permission {permission}",
            reason="MISSING_PERMISSION",
            metadata={"permission": permission},
        )
    return who


def _signing_input(method: str, subject: str, roles: str, timestamp: str) -> bytes:
    return "\n".join((method, subject, roles, timestamp)).encode()


def sign_metadata(
    *, secret: bytes, method: str, principal: Principal, now: float | None = None
) -> list[tuple[str, str]]:
    """Metadata that proves this call comes from a holder of the internal secret."""
    roles = ",".join(sorted(principal.roles))
    timestamp = str(int(time.time() if now is None else now))
    signature = hmac.new(
        secret, _signing_input(method, principal.subject, roles, timestamp), hashlib.sha256
    ).hexdigest()
    return [
        (PRINCIPAL_HEADER, principal.subject),
        (ROLES_HEADER, roles),
        (TIMESTAMP_HEADER, timestamp),
        (SIGNATURE_HEADER, signature),
    ]


def verify_metadata(
    *, secret: bytes, method: str, metadata: Iterable[tuple[str, str | bytes]], now: float | None = None
) -> Principal:
    values: dict[str, str] = {}
    for key, value in metadata:
        values[key.lower()] = value.decode() if isinstance(value, bytes) else value
    subject = values.get(PRINCIPAL_HEADER)
    signature = values.get(SIGNATURE_HEADER)
    timestamp = values.get(TIMESTAMP_HEADER, "")
    roles = values.get(ROLES_HEADER, "")
    if not subject or not signature:
        raise UnauthenticatedError(
            "missing internal credential: calls must come through the gateway or another service",
            reason="MISSING_INTERNAL_CREDENTIAL",
        )
    expected = hmac.new(secret, _signing_input(method, subject, roles, timestamp), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, signature):
        raise UnauthenticatedError("invalid internal credential", reason="BAD_INTERNAL_CREDENTIAL")
    try:
        skew = abs((time.time() if now is None else now) - int(timestamp))
    except ValueError as exc:
        raise UnauthenticatedError("invalid credential timestamp", reason="BAD_INTERNAL_CREDENTIAL") from exc
    if skew > MAX_CLOCK_SKEW_SECONDS:
        raise UnauthenticatedError("internal credential expired", reason="EXPIRED_INTERNAL_CREDENTIAL")
    role_set = frozenset(r for r in roles.split(",") if r)
    unknown = role_set - ROLES
    if unknown:
        raise UnauthenticatedError(f"unknown roles {sorted(unknown)}", reason="UNKNOWN_ROLE")
    return Principal(subject=subject, roles=role_set)


def parse_roles(roles: Sequence[str]) -> frozenset[str]:
    unknown = set(roles) - ROLES
    if unknown:
        raise ValueError(f"unknown roles: {', '.join(sorted(unknown))}; known: {', '.join(sorted(ROLES))}")
    return frozenset(roles)
