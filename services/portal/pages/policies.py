"""The portal's policies pages (see docs/portal.md): the list, a policy with its history and diffs, the
editor with its live rule check, and the lifecycle's forms (submit, approve, reject, retire, revise).

Every read and action is a call to the policy service made as the person; the service enforces the
permissions and the four-eyes rule, the pages only hide what the person may not do and say why.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import Any, Final, TypeVar
from urllib.parse import urlencode

import grpc
from awareness.policy.v1 import policy_pb2, policy_pb2_grpc
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from services.portal.api import ERROR_PAGES, failure_of, first, portal_state, render, signed_in
from services.portal.domain import policies
from services.portal.domain.policies import PolicyDraft
from services.portal.service import Person
from services.runtime.errors import (
    FailedPreconditionError,
    FieldViolation,
    InvalidArgumentError,
    PermissionDeniedError,
)

T = TypeVar("T")
LIST: Final = "/portal/policies"
# A policy's history is short; this many pages of 1000 entries is far beyond any real one.
HISTORY_PAGES: Final = 10
DONE_MESSAGES: Final = {
    "created": "Draft created. Submit it for review when it is ready.",
    "saved": "Draft saved.",
    "submitted": "Submitted for review. Someone other than its writers approves or rejects it.",
    "approved": "Approved: this version is now active.",
    "rejected": "Rejected: the version is a draft again, with your reason.",
    "retired": "Retired: the policy is no longer evaluated.",
    "revised": "Revision started: a new draft version, copied from the last one.",
}
BARRIER_MESSAGES: Final = {
    "wrote": "You wrote this version, so someone else approves it.",
    "submitted": "You submitted this version, so someone else approves it.",
}


def _stub(request: Request) -> policy_pb2_grpc.PolicyServiceStub:
    return portal_state(request).services.policy()


async def _call(request: Request, person: Person, call: Callable[[], Awaitable[T]]) -> T:
    """One call (or a coroutine of several) to the policy service, made as ``person``."""
    return await portal_state(request).services.as_person(person, call)


def _refusal(exc: grpc.aio.AioRpcError) -> tuple[str, list[FieldViolation]]:
    """The ErrorInfo reason and the BadRequest violations of a refused call."""
    failed = failure_of(exc)
    return failed.reason, failed.violations


def _policy_id(request: Request) -> str:
    policy_id: str = request.path_params["policy_id"]
    return policy_id


def _done(policy_id: str, what: str) -> Response:
    return RedirectResponse(f"{LIST}/{policy_id}?done={what}", status_code=303)


# ------------------------------------------------------------------------------------------- list


@signed_in("/portal/policies")
async def list_page(request: Request, person: Person) -> Response:
    filters = policies.parse_list_filters(request.query_params)
    listed = policy_pb2.ListPoliciesResponse()
    if not filters.violations:
        stub = _stub(request)
        listed = await _call(request, person, lambda: stub.ListPolicies(policies.list_request(filters)))
    context = {
        "filters": filters,
        "policies": listed.policies,
        "next_query": urlencode(filters.query(page_token=listed.next_page_token))
        if listed.next_page_token
        else "",
        "first_query": urlencode(filters.query(page_token="")),
        "states": policies.STATES,
        "state_names": policies.STATE_NAMES,
        "state_help": policies.STATE_HELP,
        "severity_names": policies.SEVERITY_NAMES,
        "policy_id_of": policies.policy_id_of,
    }
    return render(request, "policies.html", context, person=person, status=400 if filters.violations else 200)


# -------------------------------------------------------------------------------------- a policy


async def _history(stub: policy_pb2_grpc.PolicyServiceStub, name: str) -> list[policy_pb2.PolicyHistoryEntry]:
    entries: list[policy_pb2.PolicyHistoryEntry] = []
    token = ""
    for _ in range(HISTORY_PAGES):
        page = await stub.ListPolicyHistory(
            policy_pb2.ListPolicyHistoryRequest(parent=name, page_size=1000, page_token=token)
        )
        entries.extend(page.entries)
        token = page.next_page_token
        if not token:
            break
    return entries


@signed_in("/portal/policies/{policy_id}")
async def policy_page(request: Request, person: Person) -> Response:
    policy_id = _policy_id(request)
    name = f"policies/{policy_id}"
    stub = _stub(request)
    query = request.query_params

    async def gather() -> dict[str, Any]:
        newest, entries = await asyncio.gather(
            stub.GetPolicy(policy_pb2.GetPolicyRequest(name=name)), _history(stub, name)
        )
        states = policies.version_states(entries)
        active_version = next(
            (version for version, state in states.items() if state == policy_pb2.Policy.STATE_ACTIVE), None
        )
        shown_version = policies.parse_version(query.get("version", ""), newest=newest.version)
        choice, diff_violations = policies.parse_diff_choice(query, newest=newest.version)
        wanted = {
            version for version in (shown_version, active_version) if version and version != newest.version
        }
        if choice:
            wanted.update(version for version in choice if version != newest.version)
        fetched = await asyncio.gather(
            *(
                stub.GetPolicy(policy_pb2.GetPolicyRequest(name=name, version=version))
                for version in sorted(wanted)
            )
        )
        versions = {policy.version: policy for policy in (newest, *fetched)}
        return {
            "newest": newest,
            "entries": entries,
            "states": states,
            "shown": versions[shown_version or newest.version],
            "active": versions.get(active_version) if active_version else None,
            "diff": policies.diff_versions(versions[choice[0]], versions[choice[1]]) if choice else None,
            "diff_choice": choice,
            "diff_violations": diff_violations,
        }

    found = await _call(request, person, gather)
    newest: policy_pb2.Policy = found["newest"]
    entries: list[policy_pb2.PolicyHistoryEntry] = found["entries"]
    barrier = policies.approval_barrier(newest, entries, person.principal.subject)
    context = {
        **found,
        "policy_id": policy_id,
        "barrier": barrier,
        "barrier_message": BARRIER_MESSAGES.get(barrier, ""),
        "actions": policies.available_actions(
            newest, has_active=found["active"] is not None, can=person.can, barrier=barrier
        ),
        "writers": policies.writers(entries, found["shown"].version),
        "done": DONE_MESSAGES.get(query.get("done", ""), ""),
        "request_id": str(uuid.uuid4()),
        "state_names": policies.STATE_NAMES,
        "state_help": policies.STATE_HELP,
        "severity_names": policies.SEVERITY_NAMES,
        "action_names": policies.ACTION_NAMES,
    }
    status = 400 if found["diff_violations"] else 200
    return render(request, "policy.html", context, person=person, status=status)


# ------------------------------------------------------------------------------------- the editor


def _editor(
    request: Request,
    person: Person,
    *,
    draft: PolicyDraft,
    policy: policy_pb2.Policy | None = None,
    violations: list[FieldViolation] | None = None,
    rule_check: policies.RuleCheck | None = None,
    request_id: str = "",
    done: str = "",
    status: int = 200,
) -> Response:
    """The editor: a new policy (``policy`` None) or the DRAFT version ``policy``; a refused rule's
    verdict shows under the rule, as the live check would have shown it."""
    refused = violations or []
    if rule_check is None and any(policies.FORM_FIELDS.get(v.field) == "rule" for v in refused):
        rule_check = policies.rule_check(refused)
    shown = policies.readable(refused)
    context = {
        "done": DONE_MESSAGES.get(done, ""),
        "draft": draft,
        "policy": policy,
        "policy_id": policies.policy_id_of(policy.name) if policy else "",
        "violations": shown,
        "errors": policies.errors_by_field(shown),
        "rule_check": rule_check,
        "request_id": request_id or str(uuid.uuid4()),
        "severities": policies.SEVERITIES,
    }
    return render(request, "policy_edit.html", context, person=person, status=status)


def _require_author(person: Person) -> None:
    # The service refuses a write anyway; this saves the person a form they could never send.
    if not person.can("policy:author"):
        raise PermissionDeniedError(
            "writing policies needs the policy_author role", reason="MISSING_PERMISSION"
        )


@signed_in("/portal/policies:new")
async def new_page(request: Request, person: Person) -> Response:
    _require_author(person)
    return _editor(request, person, draft=PolicyDraft())


async def _draft_version(request: Request, person: Person, policy_id: str) -> policy_pb2.Policy:
    """The policy's newest version, which must be a DRAFT to be edited (409 otherwise)."""
    stub = _stub(request)
    newest: policy_pb2.Policy = await _call(
        request, person, lambda: stub.GetPolicy(policy_pb2.GetPolicyRequest(name=f"policies/{policy_id}"))
    )
    if newest.state != policy_pb2.Policy.STATE_DRAFT:
        raise FailedPreconditionError(
            f"version {newest.version} is {policies.STATE_NAMES[newest.state]}; only a draft can be edited. "
            "Start a revision from the policy's page to change it.",
            reason="POLICY_NOT_DRAFT",
        )
    return newest


@signed_in("/portal/policies/{policy_id}/edit")
async def edit_page(request: Request, person: Person) -> Response:
    _require_author(person)
    draft_version = await _draft_version(request, person, _policy_id(request))
    return _editor(
        request,
        person,
        draft=policies.draft_from_policy(draft_version),
        policy=draft_version,
        done=request.query_params.get("done", ""),
    )


def _checked_draft(form: Mapping[str, list[str]]) -> PolicyDraft:
    draft = policies.draft_from_form(form)
    refused = policies.offered_choice_violations(draft)
    if refused:
        raise InvalidArgumentError("the form asked for a choice it does not offer", violations=refused)
    return draft


@signed_in("/portal/policies")
async def create(request: Request, person: Person) -> Response:
    form: dict[str, list[str]] = request.state.form
    draft = _checked_draft(form)
    request_id = first(form, "request_id")
    stub = _stub(request)
    try:
        created: policy_pb2.Policy = await _call(
            request, person, lambda: stub.CreatePolicy(policies.create_request(draft, request_id=request_id))
        )
    except grpc.aio.AioRpcError as exc:
        violations = _inline_violations(exc)
        if violations is None:
            raise
        return _editor(request, person, draft=draft, violations=violations, request_id=request_id, status=400)
    return _done(policies.policy_id_of(created.name), "created")


def _inline_violations(exc: grpc.aio.AioRpcError) -> list[FieldViolation] | None:
    """The violations to show in the editor beside their inputs, or None for a refusal the error page
    explains (permission, state, a concurrent change)."""
    if exc.code() == grpc.StatusCode.ALREADY_EXISTS:
        return [FieldViolation("policy_id", "a policy with this id already exists; choose another")]
    if exc.code() != grpc.StatusCode.INVALID_ARGUMENT:
        return None
    _reason, violations = _refusal(exc)
    return violations or [FieldViolation("", exc.details() or "the request was not valid")]


@signed_in("/portal/policies/{policy_id}:update")
async def update(request: Request, person: Person) -> Response:
    policy_id = _policy_id(request)
    form: dict[str, list[str]] = request.state.form
    draft = _checked_draft(form)
    name = f"policies/{policy_id}"
    edit = policies.update_request(name, draft, etag=first(form, "etag"))
    stub = _stub(request)
    try:
        await _call(request, person, lambda: stub.UpdatePolicy(edit))
    except grpc.aio.AioRpcError as exc:
        violations = _inline_violations(exc)
        if violations is None:
            raise
        shown = policy_pb2.Policy(name=name, etag=first(form, "etag"))
        return _editor(request, person, draft=draft, policy=shown, violations=violations, status=400)
    return _done(policy_id, "saved")


@signed_in("/portal/policies:check")
async def check_rule(request: Request, person: Person) -> Response:
    """The rule checked by the policy service without storing anything (validate_only).

    htmx asks as the author types and gets only the verdict; a browser without JavaScript posts the
    editor here with its "Check the rule" button and gets the editor back with the verdict."""
    form: dict[str, list[str]] = request.state.form
    draft = policies.draft_from_form(form)
    policy_id = first(form, "policy")  # set when editing an existing draft
    stub = _stub(request)
    if policy_id:
        name = f"policies/{policy_id}"
        call = stub.UpdatePolicy
        checked: Any = policies.update_request(
            name, draft, etag=first(form, "etag"), validate_only=True, rule_only=True
        )
    else:
        call = stub.CreatePolicy
        # Without the id: the rule's check must not wait on a well-formed or free id.
        checked = policies.create_request(replace(draft, policy_id=""), validate_only=True)
    try:
        await _call(request, person, lambda: call(checked))
        verdict = policies.RuleCheck(compiles=True)
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.INVALID_ARGUMENT:
            headline = ERROR_PAGES.get(exc.code(), (0, "The rule could not be checked"))[1]
            verdict = policies.RuleCheck(
                compiles=False, message=f"{headline}: {exc.details() or ''}".rstrip(": ")
            )
        else:
            verdict = policies.rule_check(_refusal(exc)[1])
    partial = request.headers.get("hx-request") == "true" and request.headers.get("hx-boosted") != "true"
    if partial:
        return render(request, "policy_rule_check.html", {"rule_check": verdict}, person=person)
    shown = policy_pb2.Policy(name=f"policies/{policy_id}", etag=first(form, "etag")) if policy_id else None
    return _editor(
        request, person, draft=draft, policy=shown, rule_check=verdict, request_id=first(form, "request_id")
    )


# ---------------------------------------------------------------------------------------- lifecycle


@signed_in("/portal/policies/{policy_id}:submit")
async def submit(request: Request, person: Person) -> Response:
    policy_id = _policy_id(request)
    form: dict[str, list[str]] = request.state.form
    stub = _stub(request)
    submit_request = policy_pb2.SubmitPolicyRequest(name=f"policies/{policy_id}", etag=first(form, "etag"))
    await _call(request, person, lambda: stub.SubmitPolicy(submit_request))
    return _done(policy_id, "submitted")


@signed_in("/portal/policies/{policy_id}:approve")
async def approve(request: Request, person: Person) -> Response:
    policy_id = _policy_id(request)
    form: dict[str, list[str]] = request.state.form
    stub = _stub(request)
    approve_request = policy_pb2.ApprovePolicyRequest(name=f"policies/{policy_id}", etag=first(form, "etag"))
    try:
        await _call(request, person, lambda: stub.ApprovePolicy(approve_request))
    except grpc.aio.AioRpcError as exc:
        reason, _violations = _refusal(exc)
        if exc.code() != grpc.StatusCode.PERMISSION_DENIED or reason != "SEPARATION_OF_DUTIES":
            raise
        # The four-eyes rule, in words: the service's refusal names the person and the version.
        return render(
            request,
            "error.html",
            {
                "headline": "You cannot approve this version",
                "message": "You wrote or submitted this version, so someone else approves it: every policy "
                "change needs a second person (separation of duties). "
                f"The policy service said: {exc.details() or 'refused'}.",
                "violations": [],
                "code": reason,
            },
            person=person,
            status=403,
        )
    return _done(policy_id, "approved")


@signed_in("/portal/policies/{policy_id}:reject")
async def reject(request: Request, person: Person) -> Response:
    policy_id = _policy_id(request)
    form: dict[str, list[str]] = request.state.form
    reason = first(form, "reason")
    if not reason:
        raise InvalidArgumentError(
            "a rejection needs a reason", violations=[FieldViolation("reason", "say why, for the author")]
        )
    stub = _stub(request)
    reject_request = policy_pb2.RejectPolicyRequest(
        name=f"policies/{policy_id}", reason=reason, etag=first(form, "etag")
    )
    await _call(request, person, lambda: stub.RejectPolicy(reject_request))
    return _done(policy_id, "rejected")


@signed_in("/portal/policies/{policy_id}:retire")
async def retire(request: Request, person: Person) -> Response:
    policy_id = _policy_id(request)
    form: dict[str, list[str]] = request.state.form
    if first(form, "confirm") != "yes":
        raise InvalidArgumentError(
            "retiring stops the policy from being evaluated; confirm it",
            violations=[FieldViolation("confirm", "tick the box to confirm")],
        )
    stub = _stub(request)
    retire_request = policy_pb2.RetirePolicyRequest(
        name=f"policies/{policy_id}", reason=first(form, "reason"), etag=first(form, "etag")
    )
    await _call(request, person, lambda: stub.RetirePolicy(retire_request))
    return _done(policy_id, "retired")


@signed_in("/portal/policies/{policy_id}:revise")
async def revise(request: Request, person: Person) -> Response:
    policy_id = _policy_id(request)
    form: dict[str, list[str]] = request.state.form
    stub = _stub(request)
    revise_request = policy_pb2.CreatePolicyRevisionRequest(
        name=f"policies/{policy_id}", request_id=first(form, "request_id")
    )
    await _call(request, person, lambda: stub.CreatePolicyRevision(revise_request))
    return RedirectResponse(f"{LIST}/{policy_id}/edit?done=revised", status_code=303)


routes: list[BaseRoute] = [
    Route("/policies", list_page, methods=["GET"]),
    Route("/policies", create, methods=["POST"]),
    Route("/policies:new", new_page, methods=["GET"]),
    Route("/policies:check", check_rule, methods=["POST"]),
    Route("/policies/{policy_id}", policy_page, methods=["GET"]),
    Route("/policies/{policy_id}/edit", edit_page, methods=["GET"]),
    Route("/policies/{policy_id}:update", update, methods=["POST"]),
    Route("/policies/{policy_id}:submit", submit, methods=["POST"]),
    Route("/policies/{policy_id}:approve", approve, methods=["POST"]),
    Route("/policies/{policy_id}:reject", reject, methods=["POST"]),
    Route("/policies/{policy_id}:retire", retire, methods=["POST"]),
    Route("/policies/{policy_id}:revise", revise, methods=["POST"]),
]
