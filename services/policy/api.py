"""gRPC transport of the policy service: request validation, proto <-> domain conversion, and the servicer.

Each write RPC is one database transaction (:class:`PolicyOperations`): read the versions, let the domain
decide (:mod:`services.policy.domain.lifecycle`), write its changes with :func:`repository.apply_changes`.
Blocking work runs off the event loop through :func:`services.runtime.db.run_db`.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import math
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeAlias, TypeVar

import grpc
from awareness.policy.v1 import policy_pb2, policy_pb2_grpc
from google.protobuf import timestamp_pb2
from prometheus_client import Counter, Gauge, Histogram
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from typing_extensions import override

from services.policy import repository
from services.policy.domain import errors as domain_errors
from services.policy.domain.cel import (
    CompiledPolicySet,
    EvaluationResult,
    EventFacts,
    PolicyEvaluator,
    SubjectFacts,
)
from services.policy.domain.lifecycle import (
    Permission,
    PolicyAction,
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
from services.runtime import auth, db
from services.runtime.db import transaction
from services.runtime.errors import (
    AbortedError,
    AlreadyExistsError,
    FieldViolation,
    InvalidArgumentError,
    NotFoundError,
    UnauthenticatedError,
    UnavailableError,
)
from services.runtime.paging import PageTokens, page_size

log = logging.getLogger("awareness.policy")

T = TypeVar("T")

DEFAULT_PAGE_SIZE: Final = 50
MAX_EVENTS_PER_CALL: Final = 1000
_NAME = re.compile(r"^policies/([a-z]([a-z0-9-]{0,61}[a-z0-9])?)$")
_EDITABLE: Final = ("title", "description", "rule", "severity")

# Runtime permissions (the gateway's vocabulary) -> the domain's finer-grained ones.
PERMISSION_GRANTS: Final[Mapping[str, frozenset[Permission]]] = {
    "policy:author": frozenset({Permission.AUTHOR, Permission.SUBMIT}),
    "policy:approve": frozenset({Permission.APPROVE, Permission.REJECT}),
    "policy:retire": frozenset({Permission.RETIRE}),
}

_HISTORY_ACTIONS: Final[Mapping[PolicyAction, int]] = {
    PolicyAction.CREATE: policy_pb2.PolicyHistoryEntry.ACTION_CREATE,
    PolicyAction.UPDATE: policy_pb2.PolicyHistoryEntry.ACTION_UPDATE,
    PolicyAction.SUBMIT: policy_pb2.PolicyHistoryEntry.ACTION_SUBMIT,
    PolicyAction.APPROVE: policy_pb2.PolicyHistoryEntry.ACTION_APPROVE,
    PolicyAction.REJECT: policy_pb2.PolicyHistoryEntry.ACTION_REJECT,
    PolicyAction.RETIRE: policy_pb2.PolicyHistoryEntry.ACTION_RETIRE,
    PolicyAction.SUPERSEDE: policy_pb2.PolicyHistoryEntry.ACTION_RETIRE,
    PolicyAction.NEW_VERSION: policy_pb2.PolicyHistoryEntry.ACTION_REVISE,
}


# ------------------------------------------------------------------------------------------ principals


def domain_principal(principal: auth.Principal | None) -> Principal:
    """The domain's view of the caller: its subject and the policy permissions its roles grant."""
    if principal is None or not principal.subject:
        raise UnauthenticatedError("no authenticated principal on this call", reason="NO_PRINCIPAL")
    granted: set[Permission] = set()
    for runtime_permission, permissions in PERMISSION_GRANTS.items():
        if principal.has(runtime_permission):
            granted |= permissions
    return Principal(id=principal.subject, permissions=frozenset(granted))


# ------------------------------------------------------------------------------------------ conversion


def policy_id_from_name(name: str, *, field: str = "name") -> str:
    match = _NAME.fullmatch(name)
    if match is None:
        raise InvalidArgumentError(
            f"{field} must look like policies/{{policy}}, got {name!r}",
            reason="INVALID_POLICY_NAME",
            violations=[FieldViolation(field, "must be policies/{policy} with a valid policy id")],
        )
    return match.group(1)


def _severity_name(value: int) -> str:
    """``SEVERITY_HIGH`` -> ``HIGH``; unspecified or unknown numbers give an empty string."""
    try:
        name = policy_pb2.Severity.Name(value)  # type: ignore[arg-type]
    except ValueError:
        return ""
    return "" if value == policy_pb2.SEVERITY_UNSPECIFIED else name.removeprefix("SEVERITY_")


def _timestamp(moment: datetime.datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def policy_to_proto(stored: StoredPolicy) -> policy_pb2.Policy:
    snapshot = stored.version
    return policy_pb2.Policy(
        name=f"policies/{snapshot.name}",
        title=snapshot.title,
        description=snapshot.description,
        rule=snapshot.rule,
        severity=policy_pb2.Severity.Value(f"SEVERITY_{snapshot.severity.value}"),
        version=snapshot.version,
        state=policy_pb2.Policy.State.Value(f"STATE_{snapshot.state.value}"),
        author=snapshot.author_id,
        submitter=snapshot.submitter_id or "",
        approver=snapshot.approver_id or "",
        reject_reason=stored.reject_reason or "",
        retire_reason=stored.retire_reason or "",
        create_time=_timestamp(snapshot.create_time),
        update_time=_timestamp(snapshot.update_time),
        etag=snapshot.etag,
    )


def history_to_proto(stored: StoredHistoryEntry) -> policy_pb2.PolicyHistoryEntry:
    entry = stored.entry
    return policy_pb2.PolicyHistoryEntry(
        actor=entry.actor,
        time=_timestamp(entry.time),
        action=_HISTORY_ACTIONS[entry.action],  # type: ignore[arg-type]
        from_state=(
            policy_pb2.Policy.STATE_UNSPECIFIED
            if entry.from_state is None
            else policy_pb2.Policy.State.Value(f"STATE_{entry.from_state.value}")
        ),
        to_state=policy_pb2.Policy.State.Value(f"STATE_{entry.to_state.value}"),
        version=entry.version,
        reason=entry.reason or "",
        changed_fields=list(entry.changed_fields),
    )


def _subject_facts(facts: Mapping[str, float]) -> SubjectFacts:
    """The subject history ingest sends as named aggregates, in the shape rules read (``subject.*``)."""
    return SubjectFacts(
        events_24h=int(facts.get("events_24h", 0)),
        violations_30d=int(facts.get("violations_30d", 0)),
        phishing_clicks_30d=int(facts.get("phishing_clicks_30d", 0)),
        phishing_reports_30d=int(facts.get("phishing_reports_30d", 0)),
        training_overdue=facts.get("training_overdue", 0.0) != 0.0,
        facts=dict(facts),
    )


def event_facts(event: policy_pb2.EvaluationInput, *, index: int) -> EventFacts:
    """One ``EvaluationInput`` as the evaluator sees it; refuses what no rule could be judged on."""
    violations = []
    if not event.event_id:
        violations.append(FieldViolation(f"events[{index}].event_id", "required"))
    if not event.type:
        violations.append(FieldViolation(f"events[{index}].type", "required"))
    if not event.HasField("occurred_at"):
        violations.append(FieldViolation(f"events[{index}].occurred_at", "required"))
    if violations:
        raise InvalidArgumentError(
            f"event {index} lacks required fields", reason="INVALID_EVENT", violations=violations
        )
    return EventFacts(
        event_id=event.event_id,
        event_type=event.type,
        source=event.source,
        severity=_severity_name(event.severity),
        occurred_at=event.occurred_at.ToDatetime(tzinfo=datetime.UTC),
        details=dict(event.details),
        subject=_subject_facts(event.facts),
    )


def result_to_proto(result: EvaluationResult) -> policy_pb2.EvaluationResult:
    return policy_pb2.EvaluationResult(
        event_id=result.event_id,
        violations=[
            policy_pb2.Violation(
                policy=f"policies/{violation.policy}",
                version=violation.version,
                severity=policy_pb2.Severity.Value(f"SEVERITY_{violation.severity}"),
                title=violation.title,
            )
            for violation in result.violations
        ],
        errors=[
            policy_pb2.EvaluationError(
                policy=f"policies/{error.policy}", version=error.version, message=error.message
            )
            for error in result.errors
        ],
    )


@contextlib.contextmanager
def field_errors(prefix: str) -> Iterator[None]:
    """Attach a BadRequest field violation (``<prefix>.<field>``) to the domain's argument errors.

    An invalid CEL rule also carries the compiler's message in ErrorInfo metadata, next to its position.
    """
    try:
        yield
    except domain_errors.InvalidRuleError as exc:
        exc.metadata.setdefault("compiler_message", exc.message)
        field = f"{prefix}.rule" if prefix else "rule"
        position = f" at line {exc.line}, column {exc.column}" if exc.line is not None else ""
        exc.violations = (FieldViolation(field, f"invalid CEL{position}: {exc.message}"),)
        raise
    except domain_errors.InvalidArgumentError as exc:
        name = exc.metadata.get("field")
        if name:
            field = f"{prefix}.{name}" if prefix else name
            exc.violations = (FieldViolation(field, exc.message),)
        raise


async def run_db(func: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Blocking store work off the event loop; an unreachable store answers UNAVAILABLE (retryable)."""
    try:
        return await db.run_db(func, *args, **kwargs)
    except OperationalError as exc:
        log.warning("policy store unavailable", extra={"error": type(exc.orig).__name__})
        raise UnavailableError(
            "the policy store is unavailable; retry later", reason="STORE_UNAVAILABLE"
        ) from None


# ---------------------------------------------------------------------------------------- operations


def _request_id(value: str) -> str | None:
    if not value:
        return None
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise InvalidArgumentError(
            "request_id must be a UUID",
            reason="INVALID_REQUEST_ID",
            violations=[FieldViolation("request_id", "must be a UUID")],
        ) from None


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

    def _reread(self, policy_id: str, version: int) -> StoredPolicy:
        with transaction(self._sessions) as session:
            stored = repository.get_version(session, policy_id=policy_id, version=version)
        if stored is None:  # pragma: no cover - the row was just written in a committed transaction
            raise _not_found(policy_id)
        return stored

    def create(
        self, *, principal: Principal, policy_id: str, fields: PolicyFields, request_id: str | None
    ) -> StoredPolicy:
        if request_id is not None:
            with transaction(self._sessions) as session:
                earlier = repository.find_by_request_id(session, request_id=request_id)
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
        try:
            with transaction(self._sessions) as session:
                self._write(session, [change], request_id=request_id)
        except IntegrityError:
            if request_id is not None:  # a concurrent retry of the same call won the race
                with transaction(self._sessions) as session:
                    earlier = repository.find_by_request_id(session, request_id=request_id)
                if earlier is not None:
                    return earlier
            raise AlreadyExistsError(
                f"policy policies/{change.after.name} already exists",
                reason="POLICY_ALREADY_EXISTS",
                metadata={"policy": f"policies/{change.after.name}"},
            ) from None
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
        self, *, principal: Principal, policy_id: str, fields: PolicyFields, etag: str
    ) -> StoredPolicy:
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
        if request_id is not None:
            with transaction(self._sessions) as session:
                earlier = repository.find_by_request_id(session, request_id=request_id)
            if earlier is not None:
                return earlier
        try:
            with transaction(self._sessions) as session:
                latest = self._versions(session, policy_id)[-1]
                change = new_version(latest.version, principal=principal, now=self._clock())
                self._write(session, [change], request_id=request_id)
        except IntegrityError:
            if request_id is not None:
                with transaction(self._sessions) as session:
                    earlier = repository.find_by_request_id(session, request_id=request_id)
                if earlier is not None:
                    return earlier
            raise AbortedError(
                f"another revision of policies/{policy_id} was started concurrently",
                reason="CONCURRENT_REVISION",
                metadata={"policy": f"policies/{policy_id}"},
            ) from None
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
            except OperationalError:
                if self._policy_set is None:
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


# ------------------------------------------------------------------------------------------- servicer


def _fields_from(policy: policy_pb2.Policy, *, paths: Sequence[str] | None) -> PolicyFields:
    """The editable fields a request sets: those in ``paths``, or (no mask) every non-empty one (AIP-134)."""
    values = {
        "title": policy.title,
        "description": policy.description,
        "rule": policy.rule,
        "severity": _severity_name(policy.severity),
    }
    if paths is None:
        chosen = {name: value for name, value in values.items() if value}
    else:
        chosen = {name: values[name] for name in paths}
    return PolicyFields(**chosen)


def _mask_paths(paths: Sequence[str]) -> list[str] | None:
    if not paths:
        return None
    if list(paths) == ["*"]:
        return list(_EDITABLE)
    unknown = [path for path in paths if path not in _EDITABLE]
    if unknown:
        raise InvalidArgumentError(
            f"update_mask may name only {', '.join(_EDITABLE)} (or *); got {', '.join(unknown)}",
            reason="INVALID_UPDATE_MASK",
            violations=[
                FieldViolation("update_mask", f"unknown or read-only field {path}") for path in unknown
            ],
        )
    return list(dict.fromkeys(paths))


def _state_filter(value: int) -> PolicyState | None:
    if value == policy_pb2.Policy.STATE_UNSPECIFIED:
        return None
    try:
        return PolicyState(policy_pb2.Policy.State.Name(value).removeprefix("STATE_"))  # type: ignore[arg-type]
    except ValueError:
        raise InvalidArgumentError(
            "unknown state", reason="INVALID_FILTER", violations=[FieldViolation("state", "unknown state")]
        ) from None


def _severity_filter(value: int) -> PolicySeverity | None:
    if value == policy_pb2.SEVERITY_UNSPECIFIED:
        return None
    try:
        return PolicySeverity(_severity_name(value))
    except ValueError:
        raise InvalidArgumentError(
            "no policy has this severity",
            reason="INVALID_FILTER",
            violations=[FieldViolation("severity", "must be LOW, MEDIUM, HIGH or CRITICAL")],
        ) from None


Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


class PolicyServicer(policy_pb2_grpc.PolicyServiceServicer):
    """Every RPC of ``awareness.policy.v1.PolicyService``."""

    def __init__(
        self, *, operations: PolicyOperations, evaluation: PolicyEvaluation, page_tokens: PageTokens
    ) -> None:
        self._operations = operations
        self._evaluation = evaluation
        self._tokens = page_tokens

    @staticmethod
    def _caller() -> Principal:
        return domain_principal(auth.current_principal())

    @override
    async def CreatePolicy(
        self, request: policy_pb2.CreatePolicyRequest, context: Context
    ) -> policy_pb2.Policy:
        principal = self._caller()
        if not request.HasField("policy"):
            raise InvalidArgumentError(
                "policy is required",
                reason="POLICY_REQUIRED",
                violations=[FieldViolation("policy", "required")],
            )
        if request.policy_id:
            policy_id_from_name(f"policies/{request.policy_id}", field="policy_id")
        stored = await run_db(
            self._operations.create,
            principal=principal,
            policy_id=request.policy_id,
            fields=_fields_from(request.policy, paths=list(_EDITABLE)),
            request_id=_request_id(request.request_id),
        )
        return policy_to_proto(stored)

    @override
    async def GetPolicy(self, request: policy_pb2.GetPolicyRequest, context: Context) -> policy_pb2.Policy:
        self._caller()
        policy_id = policy_id_from_name(request.name)
        if request.version < 0:
            raise InvalidArgumentError(
                "version must not be negative",
                reason="INVALID_VERSION",
                violations=[FieldViolation("version", "must be >= 0")],
            )
        return policy_to_proto(
            await run_db(self._operations.get, policy_id=policy_id, version=request.version)
        )

    @override
    async def ListPolicies(
        self, request: policy_pb2.ListPoliciesRequest, context: Context
    ) -> policy_pb2.ListPoliciesResponse:
        self._caller()
        limit = page_size(request.page_size, default=DEFAULT_PAGE_SIZE)
        state = _state_filter(request.state)
        severity = _severity_filter(request.severity)
        scope = {"state": state, "severity": severity}
        after = self._tokens.decode(
            request.page_token, method="policy.ListPolicies", filters=scope, shape=(str, int)
        )
        rows = await run_db(
            self._operations.list_current, limit=limit + 1, after=after, state=state, severity=severity
        )
        response = policy_pb2.ListPoliciesResponse(policies=[policy_to_proto(row) for row in rows[:limit]])
        if len(rows) > limit:
            last = rows[limit - 1].version
            response.next_page_token = self._tokens.encode(
                [last.name, last.version], method="policy.ListPolicies", filters=scope
            )
        return response

    @override
    async def UpdatePolicy(
        self, request: policy_pb2.UpdatePolicyRequest, context: Context
    ) -> policy_pb2.Policy:
        principal = self._caller()
        policy_id = policy_id_from_name(request.policy.name, field="policy.name")
        fields = _fields_from(request.policy, paths=_mask_paths(request.update_mask.paths))
        stored = await run_db(
            self._operations.update,
            principal=principal,
            policy_id=policy_id,
            fields=fields,
            etag=request.policy.etag,
        )
        return policy_to_proto(stored)

    @override
    async def SubmitPolicy(
        self, request: policy_pb2.SubmitPolicyRequest, context: Context
    ) -> policy_pb2.Policy:
        principal = self._caller()
        policy_id = policy_id_from_name(request.name)
        stored = await run_db(
            self._operations.submit, principal=principal, policy_id=policy_id, etag=request.etag
        )
        return policy_to_proto(stored)

    @override
    async def ApprovePolicy(
        self, request: policy_pb2.ApprovePolicyRequest, context: Context
    ) -> policy_pb2.Policy:
        principal = self._caller()
        policy_id = policy_id_from_name(request.name)
        stored = await run_db(
            self._operations.approve, principal=principal, policy_id=policy_id, etag=request.etag
        )
        return policy_to_proto(stored)

    @override
    async def RejectPolicy(
        self, request: policy_pb2.RejectPolicyRequest, context: Context
    ) -> policy_pb2.Policy:
        principal = self._caller()
        policy_id = policy_id_from_name(request.name)
        stored = await run_db(
            self._operations.reject,
            principal=principal,
            policy_id=policy_id,
            etag=request.etag,
            reason=request.reason,
        )
        return policy_to_proto(stored)

    @override
    async def RetirePolicy(
        self, request: policy_pb2.RetirePolicyRequest, context: Context
    ) -> policy_pb2.Policy:
        principal = self._caller()
        policy_id = policy_id_from_name(request.name)
        stored = await run_db(
            self._operations.retire,
            principal=principal,
            policy_id=policy_id,
            etag=request.etag,
            reason=request.reason,
        )
        return policy_to_proto(stored)

    @override
    async def CreatePolicyRevision(
        self, request: policy_pb2.CreatePolicyRevisionRequest, context: Context
    ) -> policy_pb2.Policy:
        principal = self._caller()
        policy_id = policy_id_from_name(request.name)
        stored = await run_db(
            self._operations.revise,
            principal=principal,
            policy_id=policy_id,
            request_id=_request_id(request.request_id),
        )
        return policy_to_proto(stored)

    @override
    async def ListPolicyHistory(
        self, request: policy_pb2.ListPolicyHistoryRequest, context: Context
    ) -> policy_pb2.ListPolicyHistoryResponse:
        self._caller()
        policy_id = policy_id_from_name(request.parent, field="parent")
        limit = page_size(request.page_size, default=DEFAULT_PAGE_SIZE)
        scope = {"parent": policy_id}
        after = self._tokens.decode(
            request.page_token, method="policy.ListPolicyHistory", filters=scope, shape=(int,)
        )
        rows = await run_db(
            self._operations.history,
            policy_id=policy_id,
            limit=limit + 1,
            after_id=after[0] if after else None,
        )
        response = policy_pb2.ListPolicyHistoryResponse(
            entries=[history_to_proto(row) for row in rows[:limit]]
        )
        if len(rows) > limit:
            response.next_page_token = self._tokens.encode(
                [rows[limit - 1].id], method="policy.ListPolicyHistory", filters=scope
            )
        return response

    @override
    async def EvaluateEvents(
        self, request: policy_pb2.EvaluateEventsRequest, context: Context
    ) -> policy_pb2.EvaluateEventsResponse:
        self._caller()
        if len(request.events) > MAX_EVENTS_PER_CALL:
            raise InvalidArgumentError(
                f"at most {MAX_EVENTS_PER_CALL} events per call",
                reason="TOO_MANY_EVENTS",
                violations=[FieldViolation("events", f"at most {MAX_EVENTS_PER_CALL}")],
            )
        events = [event_facts(event, index=index) for index, event in enumerate(request.events)]
        results = await run_db(self._evaluation.evaluate, events)
        return policy_pb2.EvaluateEventsResponse(results=[result_to_proto(result) for result in results])
