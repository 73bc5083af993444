"""gRPC transport of the policy service: request checks, the servicer, conversion via :mod:`.convert`.

Each RPC calls one use case of :mod:`services.policy.service` through the runtime's ``run_db`` (blocking work
off the event loop; an unreachable store answers UNAVAILABLE, reason STORE_UNAVAILABLE).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, TypeAlias

import grpc
from awareness.policy.v1 import policy_pb2, policy_pb2_grpc
from typing_extensions import override

from services.policy.convert import (
    event_facts,
    history_to_proto,
    is_policy_name,
    policy_id_from_name,
    policy_to_proto,
    result_to_proto,
    severity_name,
)
from services.policy.domain.lifecycle import Permission, PolicySeverity, PolicyState, Principal
from services.policy.repository import StoredPolicy
from services.policy.service import PolicyEvaluation, PolicyFields, PolicyOperations
from services.runtime import audit, auth
from services.runtime.db import run_db
from services.runtime.errors import (
    FieldViolation,
    InvalidArgumentError,
    UnauthenticatedError,
)
from services.runtime.paging import PageTokens, page_size

DEFAULT_PAGE_SIZE: Final = 50
MAX_EVENTS_PER_CALL: Final = 1000
_EDITABLE: Final = ("title", "description", "rule", "severity")

# Runtime permissions (the gateway's vocabulary) -> the domain's finer-grained ones.
PERMISSION_GRANTS: Final[Mapping[str, frozenset[Permission]]] = {
    "policy:author": frozenset({Permission.AUTHOR, Permission.SUBMIT}),
    "policy:approve": frozenset({Permission.APPROVE, Permission.REJECT}),
    "policy:retire": frozenset({Permission.RETIRE}),
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


# ------------------------------------------------------------------------------------- access records

POLICIES: Final = "policies"


def _note_policy(name: str) -> None:
    """Name the policy a call acts on in its access record, before anything can fail.

    Only a valid name is recorded: an invalid one may be anything a caller typed (an e-mail address
    too), so the record then names the collection. Titles, rules and reasons are never recorded.
    """
    audit.note(resource=name if is_policy_name(name) else POLICIES)


def _recorded(stored: StoredPolicy) -> policy_pb2.Policy:
    """The answer of a lifecycle call, and the version and state it left in its access record."""
    policy = policy_to_proto(stored)
    audit.note(
        resource=policy.name,
        details={"version": str(stored.version.version), "state": stored.version.state.value},
    )
    return policy


# ------------------------------------------------------------------------------------------- servicer


def _fields_from(policy: policy_pb2.Policy, *, paths: Sequence[str] | None) -> PolicyFields:
    """The editable fields a request sets: those in ``paths``, or (no mask) every non-empty one (AIP-134)."""
    values = {
        "title": policy.title,
        "description": policy.description,
        "rule": policy.rule,
        "severity": severity_name(policy.severity),
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
        return PolicySeverity(severity_name(value))
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
        _note_policy(f"{POLICIES}/{request.policy_id}" if request.policy_id else POLICIES)
        if request.validate_only:
            audit.skip()  # a check that changes nothing leaves no access record (AIP-163)
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
            validate_only=request.validate_only,
        )
        return policy_to_proto(stored) if request.validate_only else _recorded(stored)

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
        rows, next_page_token = await self._tokens.fetch_page(
            lambda fetch_limit: run_db(
                self._operations.list_current, limit=fetch_limit, after=after, state=state, severity=severity
            ),
            size=limit,
            position=lambda row: [row.version.name, row.version.version],
            method="policy.ListPolicies",
            filters=scope,
        )
        return policy_pb2.ListPoliciesResponse(
            policies=[policy_to_proto(row) for row in rows], next_page_token=next_page_token
        )

    @override
    async def UpdatePolicy(
        self, request: policy_pb2.UpdatePolicyRequest, context: Context
    ) -> policy_pb2.Policy:
        _note_policy(request.policy.name)
        if request.validate_only:
            audit.skip()  # a check that changes nothing leaves no access record (AIP-163)
        principal = self._caller()
        policy_id = policy_id_from_name(request.policy.name, field="policy.name")
        fields = _fields_from(request.policy, paths=_mask_paths(request.update_mask.paths))
        stored = await run_db(
            self._operations.update,
            principal=principal,
            policy_id=policy_id,
            fields=fields,
            etag=request.policy.etag,
            validate_only=request.validate_only,
        )
        return policy_to_proto(stored) if request.validate_only else _recorded(stored)

    async def _act(
        self, use_case: Callable[..., StoredPolicy], name: str, **arguments: Any
    ) -> policy_pb2.Policy:
        """A lifecycle RPC on ``policies/{policy}``: the caller, the id, the use case, the stored result.

        The four RPCs below differ only in the use case and its fields; their same shape is the generated
        servicer's, one method per RPC, and is left as is (``duplicates`` reports it).
        """
        _note_policy(name)
        principal = self._caller()
        policy_id = policy_id_from_name(name)
        return _recorded(await run_db(use_case, principal=principal, policy_id=policy_id, **arguments))

    @override
    async def SubmitPolicy(
        self, request: policy_pb2.SubmitPolicyRequest, context: Context
    ) -> policy_pb2.Policy:
        return await self._act(self._operations.submit, request.name, etag=request.etag)

    @override
    async def ApprovePolicy(
        self, request: policy_pb2.ApprovePolicyRequest, context: Context
    ) -> policy_pb2.Policy:
        return await self._act(self._operations.approve, request.name, etag=request.etag)

    @override
    async def RejectPolicy(
        self, request: policy_pb2.RejectPolicyRequest, context: Context
    ) -> policy_pb2.Policy:
        return await self._act(
            self._operations.reject, request.name, etag=request.etag, reason=request.reason
        )

    @override
    async def RetirePolicy(
        self, request: policy_pb2.RetirePolicyRequest, context: Context
    ) -> policy_pb2.Policy:
        return await self._act(
            self._operations.retire, request.name, etag=request.etag, reason=request.reason
        )

    @override
    async def CreatePolicyRevision(
        self, request: policy_pb2.CreatePolicyRevisionRequest, context: Context
    ) -> policy_pb2.Policy:
        _note_policy(request.name)
        principal = self._caller()
        policy_id = policy_id_from_name(request.name)
        stored = await run_db(
            self._operations.revise,
            principal=principal,
            policy_id=policy_id,
            request_id=_request_id(request.request_id),
        )
        return _recorded(stored)

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
        rows, next_page_token = await self._tokens.fetch_page(
            lambda fetch_limit: run_db(
                self._operations.history,
                policy_id=policy_id,
                limit=fetch_limit,
                after_id=after[0] if after else None,
            ),
            size=limit,
            position=lambda row: [row.id],
            method="policy.ListPolicyHistory",
            filters=scope,
        )
        return policy_pb2.ListPolicyHistoryResponse(
            entries=[history_to_proto(row) for row in rows], next_page_token=next_page_token
        )

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
