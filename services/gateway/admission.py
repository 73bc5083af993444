"""Who may pass the gateway's doors: authenticate, rate limit, authorize.

One rule for both doors. The HTTP routes and the gRPC door ask ``Admission.admit`` with the
caller's ``authorization`` value, its address and the method's permission, and turn its answer
into their own transport's refusal: a Starlette JSON Status, or a gRPC status with ErrorInfo.
A known caller refused an audited method leaves an access record, as a refusal by the service
itself would: the call never reaches the service's interceptor.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import Counter

from services.gateway.authn import Authenticator
from services.gateway.config import GatewayConfig
from services.gateway.domain.ratelimit import Decision, Scope
from services.gateway.ratelimit import RateLimiter
from services.runtime import audit, auth
from services.runtime.audit import AccessRecord, AuditRecorder
from services.runtime.errors import (
    AwarenessError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnauthenticatedError,
)
from services.runtime.protos import audit_action


@dataclass(frozen=True, slots=True)
class Admitted:
    principal: auth.Principal
    decision: Decision


class RefusedError(Exception):
    """The caller may not pass; ``decision`` is the rate-limit state to report (headers), if any."""

    def __init__(self, error: AwarenessError, decision: Decision | None) -> None:
        super().__init__(error.message)
        self.error = error
        self.decision = decision


def rate_limited(decision: Decision) -> ResourceExhaustedError:
    return ResourceExhaustedError(
        f"rate limit exceeded ({decision.rejected_scope}); retry after {decision.retry_after_seconds}s",
        reason="RATE_LIMITED",
        metadata={"scope": decision.rejected_scope or "", "limit": str(decision.limit)},
    )


@dataclass
class Admission:
    config: GatewayConfig
    authenticator: Authenticator
    limiter: RateLimiter
    rejections: Counter  # by scope
    auth_failures: Counter  # by reason
    recorder: AuditRecorder | None = None

    def _scopes(self, *, ip: str, principal: auth.Principal | None) -> list[Scope]:
        config = self.config
        scopes: list[Scope] = []
        if principal is not None and config.rate_principal_per_min > 0:
            scopes.append(Scope("principal", f"principal:{principal.subject}", config.rate_principal_per_min))
        if config.rate_ip_per_min > 0:
            scopes.append(Scope("ip", f"ip:{ip}", config.rate_ip_per_min))
        if config.rate_global_per_min > 0:
            scopes.append(Scope("global", "global", config.rate_global_per_min))
        return scopes

    async def limit(self, *, ip: str, principal: auth.Principal | None) -> Decision:
        """Count one request of ``principal`` from ``ip``; the decision, refusals counted."""
        decision = await self.limiter.check(self._scopes(ip=ip, principal=principal))
        if not decision.allowed:
            self.rejections.labels(decision.rejected_scope or "unknown").inc()
        return decision

    async def limit_failed_auth(self, *, ip: str) -> Decision:
        """A refused credential counts only in its address's own bucket, so a flood of bad keys
        never spends the IP and global budgets that valid keys from that address rely on."""
        limit = self.config.rate_auth_failures_per_min
        scopes = [Scope("auth_failures", f"authfail:{ip}", limit)] if limit > 0 else []
        decision = await self.limiter.check(scopes)
        if not decision.allowed:
            self.rejections.labels("auth_failures").inc()
        return decision

    async def admit(
        self, *, authorization: str | None, ip: str, permission: str, method: str = "", resource: str = ""
    ) -> Admitted:
        """The admitted caller, or ``RefusedError`` raised with the error to answer.

        ``method`` (``/package.Service/Method``) and ``resource`` name the call for its access record.
        """
        try:
            principal = await self.authenticator.authenticate(authorization)
        except AwarenessError as exc:
            if isinstance(exc, UnauthenticatedError):
                self.auth_failures.labels(exc.reason).inc()
                decision = await self.limit_failed_auth(ip=ip)
            else:
                decision = await self.limit(ip=ip, principal=None)
            raise RefusedError(exc if decision.allowed else rate_limited(decision), decision) from exc
        decision = await self.limit(ip=ip, principal=principal)
        if not decision.allowed:
            raise RefusedError(rate_limited(decision), decision)
        if not principal.has(permission):
            error = PermissionDeniedError(
                f"{principal.subject} lacks permission {permission}",
                reason="MISSING_PERMISSION",
                metadata={"permission": permission},
            )
            self._record_refusal(principal, method=method, resource=resource)
            raise RefusedError(error, decision)
        return Admitted(principal=principal, decision=decision)

    def _record_refusal(self, principal: auth.Principal, *, method: str, resource: str) -> None:
        action = audit_action(method) if method and self.recorder is not None else None
        if action is None or self.recorder is None:
            return
        self.recorder.record(
            AccessRecord(
                principal=principal.subject,
                action=action,
                method=method,
                resource=resource,
                outcome="PERMISSION_DENIED",
                time=audit.now(),
                details={"refused_by": "gateway"},
            )
        )
