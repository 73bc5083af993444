"""Use cases of the policy service, each one database transaction, and the evaluation of events.

A write reads the versions, lets the domain decide (:mod:`services.policy.domain.lifecycle`) and writes its
changes with :func:`repository.apply_changes`. Everything here blocks: the servicer calls it through
``run_db``.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from prometheus_client import Counter, Gauge, Histogram
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from services.policy import repository
from services.policy.domain import errors as domain_errors
from services.policy.domain.cel import CompiledPolicySet, EvaluationResult, EventFacts, PolicyEvaluator
from services.policy.domain.lifecycle import (
    PolicyChange,
    PolicySeverity,
    PolicyState,
    Principal,
    approve_policy,
    create_policy,
    new_version,
    reject_policy,
    retire_policy,
    submit_policy,
    update_draft,
)
from services.policy.repository import StoredHistoryEntry, StoredPolicy
from services.runtime.db import is_store_outage, transaction
from services.runtime.errors import (
    AbortedError,
    AlreadyExistsError,
    AwarenessError,
    FieldViolation,
    NotFoundError,
)

log = logging.getLogger("awareness.policy")


def _violation(exc: domain_errors.PolicyInvalidArgumentError, prefix: str) -> FieldViolation | None:
    """The BadRequest violation (``<prefix>.<field>``) of one domain argument error, if it names a field."""
    if isinstance(exc, domain_errors.InvalidRuleError):
        position = f" at line {exc.line}, column {exc.column}" if exc.line is not None else ""
        return FieldViolation(f"{prefix}.rule" if prefix else "rule", f"invalid CEL{position}: {exc.message}")
    name = exc.metadata.get("field")
    if not name:
        return None
    return FieldViolation(f"{prefix}.{name}" if prefix else name, exc.message)


@contextlib.contextmanager
def field_errors(prefix: str) -> Iterator[None]:
    """Attach BadRequest field violations (``<prefix>.<field>``) to the domain's argument errors: one for the
    error raised and one for each of its ``others`` (the request's other invalid fields).

    An invalid CEL rule also carries the compiler's message in ErrorInfo metadata, next to its position.
    """
    try:
        yield
    except domain_errors.PolicyInvalidArgumentError as exc:
        if isinstance(exc, domain_errors.InvalidRuleError):
            exc.metadata.setdefault("compiler_message", exc.message)
        violations = [found for error in (exc, *exc.others) if (found := _violation(error, prefix))]
        if violations:
            exc.violations = tuple(violations)
        raise


# ---------------------------------------------------------------------------------------- operations


@dataclass(frozen=True, kw_only=True)
class PolicyFields:
    """Editable fields of a request; ``None`` means "leave as is"."""

    title: str | None = None
    description: str | None = None
    rule: str | None = None
    severity: str | None = None


def _target(versions: Sequence[StoredPolicy], state: PolicyState) -> StoredPolicy:
    """The version an action applies to: the one in ``state`` if any, else the newest (whose state then makes
    the domain refuse the action with the right reason)."""
    for stored in versions:
        if stored.version.state is state:
            return stored
    return versions[-1]


def _not_found(policy_id: str) -> NotFoundError:
    return NotFoundError(
        f"policy policies/{policy_id} does not exist",
        reason="POLICY_NOT_FOUND",
        metadata={"policy": f"policies/{policy_id}"},
    )


def _already_exists(policy_id: str) -> AlreadyExistsError:
    return AlreadyExistsError(
        f"policy policies/{policy_id} already exists",
        reason="POLICY_ALREADY_EXISTS",
        metadata={"policy": f"policies/{policy_id}"},
    )


class PolicyOperations:
    """The use cases, each one database transaction (blocking: call them through ``run_db``)."""

    def __init__(
        self,
        *,
        sessions: sessionmaker[Session],
        clock: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC),
        on_active_set_change: Callable[[], None] = lambda: None,
    ) -> None:
        self._sessions = sessions
        self._clock = clock
        self._on_active_set_change = on_active_set_change

    def _versions(self, session: Session, policy_id: str) -> list[StoredPolicy]:
        versions = repository.list_versions(session, policy_id=policy_id)
        if not versions:
            raise _not_found(policy_id)
        return versions

    def _write(
        self, session: Session, changes: Sequence[PolicyChange], *, request_id: str | None = None
    ) -> None:
        repository.apply_changes(session, changes=changes, request_id=request_id)

    def _earlier(self, request_id: str | None) -> StoredPolicy | None:
        """What an earlier call with this request_id stored, if any (retries answer the same)."""
        if request_id is None:
            return None
        with transaction(self._sessions) as session:
            return repository.find_by_request_id(session, request_id=request_id)

    def _replay_or_raise(self, request_id: str | None, conflict: AwarenessError) -> StoredPolicy:
        """After an insert lost a race: an earlier call with this request_id won it (answer as it was
        answered), else ``conflict``."""
        earlier = self._earlier(request_id)
        if earlier is not None:
            return earlier
        raise conflict from None

    def create(
        self,
        *,
        principal: Principal,
        policy_id: str,
        fields: PolicyFields,
        request_id: str | None,
        validate_only: bool = False,
    ) -> StoredPolicy:
        """Version 1 of a new policy; with ``validate_only``, the version it would be, and nothing stored."""
        earlier = None if validate_only else self._earlier(request_id)
        if earlier is not None:
            return earlier
        with field_errors("policy"):
            change = create_policy(
                principal=principal,
                name=policy_id or f"policy-{uuid.uuid4().hex[:16]}",
                title=fields.title or "",
                rule=fields.rule or "",
                severity=fields.severity or "",
                description=fields.description or "",
                now=self._clock(),
            )
        if validate_only:
            with transaction(self._sessions) as session:
                if repository.list_versions(session, policy_id=change.after.name):
                    raise _already_exists(change.after.name)
            return repository.StoredPolicy(version=change.after)
        try:
            with transaction(self._sessions) as session:
                self._write(session, [change], request_id=request_id)
        except IntegrityError:
            return self._replay_or_raise(request_id, _already_exists(change.after.name))
        return repository.StoredPolicy(version=change.after)

    def get(self, *, policy_id: str, version: int) -> StoredPolicy:
        with transaction(self._sessions) as session:
            versions = self._versions(session, policy_id)
        if version == 0:
            return versions[-1]
        for stored in versions:
            if stored.version.version == version:
                return stored
        raise NotFoundError(
            f"policy policies/{policy_id} has no version {version}",
            reason="POLICY_VERSION_NOT_FOUND",
            metadata={"policy": f"policies/{policy_id}", "version": str(version)},
        )

    def list_current(
        self,
        *,
        limit: int,
        after: tuple[str, int] | None,
        state: PolicyState | None,
        severity: PolicySeverity | None,
    ) -> list[StoredPolicy]:
        with transaction(self._sessions) as session:
            return repository.list_current_versions(
                session, limit=limit, after=after, state=state, severity=severity
            )

    def history(self, *, policy_id: str, limit: int, after_id: int | None) -> list[StoredHistoryEntry]:
        with transaction(self._sessions) as session:
            self._versions(session, policy_id)
            return repository.list_history(session, policy_id=policy_id, limit=limit, after_id=after_id)

    def update(
        self,
        *,
        principal: Principal,
        policy_id: str,
        fields: PolicyFields,
        etag: str,
        validate_only: bool = False,
    ) -> StoredPolicy:
        """The DRAFT version edited; with ``validate_only``, the version it would be, and nothing stored."""
        with transaction(self._sessions) as session:
            target = _target(self._versions(session, policy_id), PolicyState.DRAFT)
            with field_errors("policy"):
                change = update_draft(
                    target.version,
                    principal=principal,
                    now=self._clock(),
                    etag=etag or None,
                    title=fields.title,
                    description=fields.description,
                    rule=fields.rule,
                    severity=fields.severity,
                )
            if not validate_only:
                self._write(session, [change])
        return repository.StoredPolicy(version=change.after, reject_reason=target.reject_reason)

    def submit(self, *, principal: Principal, policy_id: str, etag: str) -> StoredPolicy:
        with transaction(self._sessions) as session:
            target = _target(self._versions(session, policy_id), PolicyState.DRAFT)
            change = submit_policy(target.version, principal=principal, now=self._clock(), etag=etag or None)
            self._write(session, [change])
        return repository.StoredPolicy(version=change.after)

    def approve(self, *, principal: Principal, policy_id: str, etag: str) -> StoredPolicy:
        with transaction(self._sessions) as session:
            versions = self._versions(session, policy_id)
            target = _target(versions, PolicyState.REVIEW)
            active = next(
                (
                    stored.version
                    for stored in versions
                    if stored.version.state is PolicyState.ACTIVE
                    and stored.version.version != target.version.version
                ),
                None,
            )
            changes = approve_policy(
                target.version,
                principal=principal,
                now=self._clock(),
                etag=etag or None,
                currently_active=active,
            )
            self._write(session, changes)
        self._on_active_set_change()
        return repository.StoredPolicy(version=changes[0].after)

    def reject(self, *, principal: Principal, policy_id: str, etag: str, reason: str) -> StoredPolicy:
        with transaction(self._sessions) as session:
            target = _target(self._versions(session, policy_id), PolicyState.REVIEW)
            with field_errors(""):
                change = reject_policy(
                    target.version, principal=principal, now=self._clock(), reason=reason, etag=etag or None
                )
            self._write(session, [change])
        return repository.StoredPolicy(version=change.after, reject_reason=change.history.reason)

    def retire(self, *, principal: Principal, policy_id: str, etag: str, reason: str) -> StoredPolicy:
        with transaction(self._sessions) as session:
            target = _target(self._versions(session, policy_id), PolicyState.ACTIVE)
            change = retire_policy(
                target.version, principal=principal, now=self._clock(), etag=etag or None, reason=reason
            )
            self._write(session, [change])
        self._on_active_set_change()
        return repository.StoredPolicy(version=change.after, retire_reason=change.history.reason)

    def revise(self, *, principal: Principal, policy_id: str, request_id: str | None) -> StoredPolicy:
        earlier = self._earlier(request_id)
        if earlier is not None:
            return earlier
        try:
            with transaction(self._sessions) as session:
                latest = self._versions(session, policy_id)[-1]
                change = new_version(latest.version, principal=principal, now=self._clock())
                self._write(session, [change], request_id=request_id)
        except IntegrityError:
            return self._replay_or_raise(
                request_id,
                AbortedError(
                    f"another revision of policies/{policy_id} was started concurrently",
                    reason="CONCURRENT_REVISION",
                    metadata={"policy": f"policies/{policy_id}"},
                ),
            )
        return repository.StoredPolicy(version=change.after)


# ---------------------------------------------------------------------------------------- evaluation


@dataclass(frozen=True, kw_only=True)
class EvaluationMetrics:
    evaluations: Counter
    errors: Counter
    violations: Counter
    latency: Histogram
    active_policies: Gauge


class ActivePolicyCache:
    """The compiled set of ACTIVE versions, shared by every evaluation.

    Re-checked at most every ``check_interval_seconds`` (and right after a local approval or retirement):
    the check reads the active-set generation, a single-row lookup, and reloads the set only when it moved,
    so approvals on other replicas take effect within one interval.
    """

    def __init__(
        self,
        *,
        sessions: sessionmaker[Session],
        evaluator: PolicyEvaluator,
        check_interval_seconds: float = 1.0,
        on_reload: Callable[[int], None] = lambda _count: None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sessions = sessions
        self._evaluator = evaluator
        self._interval = check_interval_seconds
        self._on_reload = on_reload
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._generation: int | None = None
        self._policy_set: CompiledPolicySet | None = None
        self._checked_at = -math.inf

    def invalidate(self) -> None:
        """Check the generation on the next use (this replica just changed the active set)."""
        with self._lock:
            self._checked_at = -math.inf

    def current(self) -> CompiledPolicySet:
        with self._lock:
            now = self._monotonic()
            if self._policy_set is not None and now - self._checked_at < self._interval:
                return self._policy_set
            try:
                self._refresh()
            except Exception as exc:
                if self._policy_set is None or not is_store_outage(exc):
                    raise
                # Keep judging with the last known set while the store is down; check again next interval.
                log.warning("policy store unavailable; evaluating with the cached active policies")
            self._checked_at = now
            assert self._policy_set is not None  # _refresh set it, or raised on the first load
            return self._policy_set

    def _refresh(self) -> None:
        with self._sessions() as session:
            # Generation first, then the set: a change committed in between shows as a newer generation
            # at the next check, so the cache can lag by one interval but never stays stale.
            generation = repository.active_set_generation(session)
            if self._policy_set is None or generation != self._generation:
                policies = repository.list_active_policies(session)
                self._policy_set = self._evaluator.policy_set(policies)
                self._generation = generation
                self._on_reload(len(policies))
                log.info("active policies loaded", extra={"count": len(policies), "generation": generation})


class PolicyEvaluation:
    """Judges batches of events against the cached active set, recording metrics (blocking, CPU-bound)."""

    def __init__(self, *, cache: ActivePolicyCache, evaluator: PolicyEvaluator, metrics: EvaluationMetrics):
        self._cache = cache
        self._evaluator = evaluator
        self._metrics = metrics

    def evaluate(self, events: Sequence[EventFacts]) -> list[EvaluationResult]:
        policy_set = self._cache.current()
        results: list[EvaluationResult] = []
        failing: set[str] = set()
        for event in events:
            started = time.perf_counter()
            result = policy_set.evaluate(self._evaluator.activation(event), event_id=event.event_id)
            self._metrics.latency.observe(time.perf_counter() - started)
            results.append(result)
            failing.update(error.policy for error in result.errors)
        self._metrics.evaluations.inc(len(events))
        error_count = sum(len(result.errors) for result in results)
        if error_count:
            self._metrics.errors.inc(error_count)
            # Policy names only: events carry personal details that must not reach the logs.
            log.warning("policy rules failed", extra={"errors": error_count, "policies": sorted(failing)})
        self._metrics.violations.inc(sum(len(result.violations) for result in results))
        return results
