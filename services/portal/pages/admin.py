"""The portal's admin pages (see docs/portal.md): the gateway's API keys (list, create, revoke) and
the health of every service and breaker.

API keys live in the gateway's own store, which the portal runs inside, so no downstream service
checks these actions: every page here checks ``keys:admin`` itself. Keys are created and revoked
exactly as ``awareness keys create|revoke`` does (services/gateway/cli.py), and each change leaves
the same access record, appended by the gateway's recorder under the administrator's name.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Final
from urllib.parse import urlencode

from sqlalchemy.orm import Session, sessionmaker
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from services.gateway import cli, repository
from services.portal.api import SIGN_IN, portal_state, render, signed_in
from services.portal.domain import admin
from services.portal.service import Person
from services.runtime import audit, auth, db
from services.runtime.config import SERVICES
from services.runtime.errors import (
    FieldViolation,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
)

PERMISSION: Final = "keys:admin"
HOME: Final = "/portal/admin"
CREATE_ACTION: Final = "api_key.create"
REVOKE_ACTION: Final = "api_key.revoke"
# The method an access record names, beside the CLI's "awareness keys create".
CREATE_METHOD: Final = "awareness portal keys create"
REVOKE_METHOD: Final = "awareness portal keys revoke"


def _store(request: Request) -> sessionmaker[Session]:
    return portal_state(request).store


def _record(request: Request, record: audit.AccessRecord) -> None:
    recorder = portal_state(request).admission.recorder
    if recorder is not None:
        recorder.record(record)


def _require_admin(request: Request, person: Person, *, action: str = "", resource: str = "") -> None:
    """Refuse a person without ``keys:admin``; a refused key change leaves an access record, as a
    refusal at the gateway's door does."""
    try:
        auth.require_permission(PERMISSION, person.principal)
    except PermissionDeniedError:
        if action:
            _record(
                request,
                audit.AccessRecord(
                    principal=person.principal.subject,
                    action=action,
                    method=CREATE_METHOD if action == CREATE_ACTION else REVOKE_METHOD,
                    resource=resource,
                    outcome="PERMISSION_DENIED",
                    time=audit.now(),
                    details={"refused_by": "portal"},
                ),
            )
        raise


def _used_forms(request: Request) -> admin.UsedForms:
    """This replica's memory of the creation forms already used (see admin.UsedForms)."""
    state = request.app.state
    used: admin.UsedForms | None = getattr(state, "admin_used_forms", None)
    if used is None:
        used = admin.UsedForms()
        state.admin_used_forms = used
    return used


# --- API keys -----------------------------------------------------------------------------------


@signed_in("/portal/admin")
async def keys_page(request: Request, person: Person) -> Response:
    _require_admin(request, person)
    store = _store(request)

    def listed() -> list[repository.KeyRecord]:
        with store() as session:
            return repository.list_keys(session)

    records = await db.run_db(listed)
    context = {
        "keys": admin.key_rows(records, now=datetime.now(UTC), state=cli.key_state),
        "roles": admin.ASSIGNABLE_ROLES,
        "role_permissions": admin.role_permissions,
        "max_expiry_days": admin.MAX_EXPIRY_DAYS,
        # A fresh id per rendering: the same form sent twice creates one key (admin.UsedForms).
        "form_id": str(uuid.uuid4()),
        "done": request.query_params.get("done", ""),
        "changed": request.query_params.get("key", ""),
    }
    return render(request, "admin.html", context, person=person)


@signed_in("/portal/admin/keys")
async def to_keys(request: Request, person: Person) -> Response:
    """The list, for whoever opens the creation form's address (a reload after htmx pushed it)."""
    return RedirectResponse(HOME, status_code=303)


@signed_in("/portal/admin/keys")
async def create_key(request: Request, person: Person) -> Response:
    _require_admin(request, person, action=CREATE_ACTION, resource="apiKeys")
    wanted = admin.new_key_form(request.state.form)
    used = _used_forms(request)
    earlier = used.claim(wanted.form_id)
    if earlier is not None:
        return render(request, "admin_key_repeated.html", {"key_id": earlier}, person=person, status=409)
    store = _store(request)

    def create() -> tuple[str, repository.KeyRecord]:
        with db.transaction(store) as session:
            new_key, record = cli.store_new_key(
                session,
                name=wanted.name,
                roles=wanted.roles,
                expires_in_days=wanted.expires_in_days,
                now=datetime.now(UTC),
            )
            return new_key.token, record

    try:
        token, record = await db.run_db(create)
    except cli.InvalidKeyRequestError as exc:
        used.release(wanted.form_id)
        raise InvalidArgumentError(str(exc), violations=[FieldViolation(exc.field, str(exc))]) from exc
    except BaseException:
        used.release(wanted.form_id)
        raise
    used.settle(wanted.form_id, record.key_id)
    _record(
        request,
        cli.key_change_record(
            principal=person.principal.subject,
            method=CREATE_METHOD,
            action=CREATE_ACTION,
            key_id=record.key_id,
            details=cli.created_key_details(record),
        ),
    )
    # Shown once, in this response only. htmx puts the list's address in the history, so a reload
    # (or Back) fetches the list, never this page again; without JavaScript a reload resends the
    # form, which admin.UsedForms answers without the key.
    return render(
        request,
        "admin_key_created.html",
        {"token": token, "key": record, "sign_in": str(request.url.replace(path=SIGN_IN, query=""))},
        person=person,
        headers={"HX-Push-Url": HOME},
    )


async def _find(request: Request, key_id: str) -> repository.KeyRecord:
    store = _store(request)

    def find() -> repository.KeyRecord | None:
        with store() as session:
            return repository.find_key(session, key_id=key_id)

    record = await db.run_db(find)
    if record is None:
        raise NotFoundError(f"no API key {key_id}", reason="KEY_NOT_FOUND")
    return record


@signed_in("/portal/admin/keys/{key_id}:revoke")
async def confirm_revocation(request: Request, person: Person) -> Response:
    _require_admin(request, person)
    record = await _find(request, request.path_params["key_id"])
    context = {
        "key": record,
        "state": cli.key_state(record, datetime.now(UTC)),
        "cache_seconds": portal_state(request).admission.config.key_cache_seconds,
    }
    return render(request, "admin_revoke.html", context, person=person)


@signed_in("/portal/admin/keys/{key_id}:revoke")
async def revoke_key(request: Request, person: Person) -> Response:
    key_id = request.path_params["key_id"]
    _require_admin(request, person, action=REVOKE_ACTION, resource=f"apiKeys/{key_id}")
    form: dict[str, list[str]] = request.state.form
    if form.get("confirm") != ["yes"]:
        raise InvalidArgumentError(
            "the revocation was not confirmed", violations=[FieldViolation("confirm", "confirm it")]
        )
    store = _store(request)

    def revoke() -> repository.KeyRecord | None:
        with db.transaction(store) as session:
            return repository.revoke_key(session, key_id=key_id, now=datetime.now(UTC))

    record = await db.run_db(revoke)
    if record is None:
        raise NotFoundError(f"no API key {key_id}", reason="KEY_NOT_FOUND")
    _record(
        request,
        cli.key_change_record(
            principal=person.principal.subject,
            method=REVOKE_METHOD,
            action=REVOKE_ACTION,
            key_id=record.key_id,
            details={},
        ),
    )
    return RedirectResponse(f"{HOME}?{urlencode({'done': 'revoked', 'key': record.key_id})}", status_code=303)


# --- health -------------------------------------------------------------------------------------


@signed_in("/portal/admin/health")
async def health_page(request: Request, person: Person) -> Response:
    _require_admin(request, person)
    report = await portal_state(request).health()
    context = {
        "rows": admin.health_rows(
            SERVICES,
            {service: report[service]["health"] for service in SERVICES},
            {service: report[service]["breaker"] for service in SERVICES},
        ),
        "key_store": report["key_store"]["health"],
        "rate_limiter": report["rate_limiter"],
        "checked_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
    }
    return render(request, "admin_health.html", context, person=person)


# The ":revoke" routes come first: nothing else under /admin/keys/ takes a path parameter, but the
# order keeps it that way if something does.
routes: list[BaseRoute] = [
    Route("/admin", keys_page, methods=["GET"]),
    Route("/admin/keys", to_keys, methods=["GET"]),
    Route("/admin/keys", create_key, methods=["POST"]),
    Route("/admin/keys/{key_id}:revoke", confirm_revocation, methods=["GET"]),
    Route("/admin/keys/{key_id}:revoke", revoke_key, methods=["POST"]),
    Route("/admin/health", health_page, methods=["GET"]),
]
