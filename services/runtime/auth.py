"""Principals, roles and permissions, and who a call acts for.

The gateway authenticates people and integrations and forwards the principal and roles in
gRPC metadata. Every hop is mTLS with a certificate per service (services.runtime.identity),
so the callee knows which service called; only the gateway's certificate may name another
principal. Services check permissions again with the same table the gateway uses.
"""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, TypeVar

from services.runtime.errors import PermissionDeniedError, UnauthenticatedError

T = TypeVar("T")

PRINCIPAL_HEADER: Final = "x-awareness-principal"
ROLES_HEADER: Final = "x-awareness-roles"
# The one service whose calls may act for people and integrations.
DELEGATING_SERVICE: Final = "gateway"
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
        # The organisation's directory (department and manager per pseudonym) imported into gdpr.
        "directory:import",
        "audit:verify",
        # The GDPR audit trail and erasure records: who asked for whose data, and when.
        "gdpr:audit",
        "timestamp:request",
        "keys:admin",
        # Aggregates (k-anonymous by department) and the per-person risk by pseudonym.
        "analytics:read",
        "analytics:read_risk",
        # Issue a weekly report: render it, time-stamp its digest, record it in the log.
        "reports:create",
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
            "analytics:read",
            "analytics:read_risk",
            "reports:create",
        }
    ),
    "policy_author": frozenset({"policy:author", "policy:read", "events:read"}),
    "policy_approver": frozenset({"policy:approve", "policy:retire", "policy:read", "events:read"}),
    "auditor": frozenset(
        {
            "audit:verify",
            "gdpr:audit",
            "events:read",
            "timestamp:request",
            "policy:read",
            "model:read",
            "analytics:read",
        }
    ),
    "dpo": frozenset(
        {
            "gdpr:export",
            "gdpr:erase",
            "gdpr:consent",
            "gdpr:retention",
            "gdpr:audit",
            "directory:import",
            "audit:verify",
            "events:read",
            "events:read_personal",
            "analytics:read",
            "analytics:read_risk",
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


async def acting_as(principal: Principal, call: Callable[[], Awaitable[T]]) -> T:
    """Run ``call`` with ``principal`` as the identity outgoing channels sign (the gateway's
    delegation: a person's or integration's request, or the gateway acting as itself)."""
    previous = _current.get()
    _current.set(principal)
    try:
        return await call()
    finally:
        _current.set(previous)


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


def principal_metadata(principal: Principal) -> list[tuple[str, str]]:
    """The metadata that names the principal a delegating caller acts for."""
    return [(PRINCIPAL_HEADER, principal.subject), (ROLES_HEADER, ",".join(sorted(principal.roles)))]


def principal_of_call(
    *, caller: str | None, callee: str, metadata: Iterable[tuple[str, str | bytes]]
) -> Principal:
    """Who a call acts for: the calling service itself, or the principal a delegating caller names.

    ``caller`` is the service proven by the client certificate. Only the gateway (the door for people
    and integrations) and the callee's own identity (its CLI, run beside it) may name another
    principal; any other service acts as itself, and a claim to be someone else is refused.
    """
    if caller is None:
        raise UnauthenticatedError(
            "no client certificate: services are reached over mTLS, by the gateway or another service",
            reason="MISSING_CLIENT_CERTIFICATE",
        )
    values: dict[str, str] = {}
    for key, value in metadata:
        if key in (PRINCIPAL_HEADER, ROLES_HEADER):
            values[key] = value.decode() if isinstance(value, bytes) else value
    subject = values.get(PRINCIPAL_HEADER)
    if subject is None:
        return Principal.for_service(caller)
    if caller not in (DELEGATING_SERVICE, callee):
        raise PermissionDeniedError(
            f"service:{caller} may not act for {subject}: only the gateway carries other principals",
            reason="PRINCIPAL_NOT_DELEGABLE",
            metadata={"caller": caller},
        )
    role_set = frozenset(r for r in values.get(ROLES_HEADER, "").split(",") if r)
    unknown = role_set - ROLES
    if unknown:
        raise UnauthenticatedError(f"unknown roles {sorted(unknown)}", reason="UNKNOWN_ROLE")
    if "service" in role_set and subject != f"{SERVICE_SUBJECT_PREFIX}{caller}":
        raise PermissionDeniedError(
            f"service:{caller} may not claim to be {subject}: a service proves itself by its certificate",
            reason="PRINCIPAL_NOT_DELEGABLE",
            metadata={"caller": caller},
        )
    return Principal(subject=subject, roles=role_set)


def parse_roles(roles: Sequence[str]) -> frozenset[str]:
    unknown = set(roles) - ROLES
    if unknown:
        raise ValueError(f"unknown roles: {', '.join(sorted(unknown))}; known: {', '.join(sorted(ROLES))}")
    return frozenset(roles)
