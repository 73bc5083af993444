"""The portal's transport: pages and forms over HTTP, for people in a browser.

Every page but sign-in needs a session. Every form and htmx request carries the session's CSRF
token. A person's request is rate limited as their API calls are, and every read or action is a
call to the owning service made as that person: a refusal there is a refusal here.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final, TypeVar
from urllib.parse import parse_qsl, urlencode

import grpc
import jinja2
from awareness.gdpr.v1 import gdpr_pb2
from awareness.ingest.v1 import ingest_pb2
from awareness.policy.v1 import policy_pb2
from awareness.scoring.v1 import scoring_pb2
from grpc_status import rpc_status
from sqlalchemy.orm import Session, sessionmaker
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from services.gateway.admission import Admission
from services.gateway.middleware import ROUTE_KEY
from services.portal.config import PortalConfig
from services.portal.domain import charts, display, history, queue
from services.portal.domain.sessions import Expiry, csrf_matches, new_token, safe_next
from services.portal.oidc import OidcSignIn
from services.portal.service import Ended, Evidence, Person, Services, Sessions
from services.runtime.errors import (
    AwarenessError,
    FieldViolation,
    InvalidArgumentError,
    error_info,
    field_violations,
)

log = logging.getLogger("awareness.portal")

T = TypeVar("T")
SESSION_COOKIE: Final = "awareness_portal"
SIGN_IN_COOKIE: Final = "awareness_portal_sign_in"
OIDC_COOKIE: Final = "awareness_portal_oidc"
OIDC_CALLBACK: Final = "/portal/oidc/callback"
CSRF_FIELD: Final = "csrf_token"
CSRF_HEADER: Final = "x-csrf-token"
FORM_TYPE: Final = "application/x-www-form-urlencoded"
HOME: Final = "/portal/"
SIGN_IN: Final = "/portal/sign-in"
# What the home page counts from: the newest events of this many days, at most this many.
HOME_DAYS: Final = 14
HOME_SAMPLE: Final = 1000
ENDED_MESSAGES: Final = {
    Expiry.IDLE.value: "You were signed out after a period without activity. Sign in again.",
    Expiry.ABSOLUTE.value: "Your session reached its maximum length. Sign in again.",
    "KEY_REVOKED": "The API key you signed in with was revoked.",
    "KEY_EXPIRED": "The API key you signed in with has expired.",
    "signed_out": "You are signed out.",
}
# gRPC status -> (HTTP status, headline) for the error page.
ERROR_PAGES: Final[Mapping[grpc.StatusCode, tuple[int, str]]] = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "That request was not valid"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "Your role does not allow this"),
    grpc.StatusCode.NOT_FOUND: (404, "Not found"),
    grpc.StatusCode.ALREADY_EXISTS: (409, "That already exists"),
    grpc.StatusCode.FAILED_PRECONDITION: (409, "That cannot be done in the current state"),
    grpc.StatusCode.ABORTED: (409, "Someone else changed this at the same time; try again"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "Too many requests; wait a moment"),
    grpc.StatusCode.UNAVAILABLE: (503, "A service is unavailable; try again shortly"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (503, "A service took too long to answer; try again"),
}


@dataclass
class PortalState:
    sessions: Sessions
    services: Services
    admission: Admission
    templates: jinja2.Environment
    config: PortalConfig
    # The gateway's own store (API keys, sessions) and its report of every dependency's health.
    store: sessionmaker[Session]
    health: Callable[[], Awaitable[dict[str, Any]]]
    oidc: OidcSignIn | None = None


def portal_state(request: Request) -> PortalState:
    state: PortalState = request.app.state.portal
    return state


def _mark_route(request: Request, template: str) -> None:
    request.scope.setdefault("state", {})[ROUTE_KEY] = template


def _client_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def render(
    request: Request,
    template: str,
    context: Mapping[str, Any],
    *,
    person: Person | None = None,
    status: int = 200,
    headers: Mapping[str, str] | None = None,
) -> HTMLResponse:
    state = portal_state(request)
    page = state.templates.get_template(template).render(
        {
            "person": person,
            "csrf_token": person.csrf_token if person else "",
            "path": request.url.path,
            "display": display,
            **context,
        }
    )
    return HTMLResponse(page, status_code=status, headers=dict(headers or {}))


def _secure(request: Request, config: PortalConfig) -> bool:
    return config.secure_cookies or request.url.scheme == "https"


# --- failures -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Failure:
    """What a refused or failed call said: its code, message, ErrorInfo reason and field violations."""

    code: grpc.StatusCode
    message: str
    reason: str
    violations: list[FieldViolation]

    @property
    def page(self) -> tuple[int, str]:
        """The HTTP status and headline of the error page for it."""
        return ERROR_PAGES.get(self.code, (502, "Something went wrong behind the portal"))


def failure_of(exc: grpc.aio.AioRpcError | AwarenessError) -> Failure:
    if isinstance(exc, AwarenessError):
        return Failure(exc.code, exc.message, exc.reason, list(exc.violations))
    try:
        status = rpc_status.from_call(exc)
    except ValueError:
        status = None
    if status is None:
        return Failure(exc.code(), exc.details() or "", "", [])
    info = error_info(status)
    return Failure(exc.code(), exc.details() or "", info.reason if info else "", field_violations(status))


async def part(
    services: Services,
    person: Person,
    call: Callable[[], Awaitable[T]],
    *,
    whole_page: Collection[grpc.StatusCode] = (),
) -> T | str:
    """One part of a page: its answer, or why it is unavailable (so the rest of the page still shows).
    A failure with a code in ``whole_page`` (say NOT_FOUND, when the page is about what is missing)
    is the page's answer instead."""
    try:
        return await services.as_person(person, call)
    except (grpc.aio.AioRpcError, AwarenessError) as exc:
        failed = failure_of(exc)
        # A refusal is the whole page's answer (403, or back to sign-in), not one part's.
        if failed.code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
            raise
        if failed.code in whole_page:
            raise
        return f"unavailable ({failed.code.name})"


def error_page(
    request: Request, exc: grpc.aio.AioRpcError | AwarenessError, *, person: Person | None
) -> Response:
    failed = failure_of(exc)
    code, message, violations = failed.code, failed.message, failed.violations
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return _to_sign_in(request, ended=None)
    status, headline = failed.page
    if status >= 500:
        log.warning("portal call failed", extra={"code": code.name, "route": request.url.path})
    return render(
        request,
        "error.html",
        {"headline": headline, "message": message, "violations": violations, "code": code.name},
        person=person,
        status=status,
    )


# --- sessions -----------------------------------------------------------------------------

Handler = Callable[[Request, Person], Awaitable[Response]]
Endpoint = Callable[[Request], Awaitable[Response]]


def _to_sign_in(request: Request, *, ended: Ended | None) -> Response:
    query = {"next": request.url.path + (f"?{request.url.query}" if request.url.query else "")}
    if ended is not None:
        query["ended"] = ended.why.value if isinstance(ended.why, Expiry) else ended.why
    response = RedirectResponse(f"{SIGN_IN}?{urlencode(query)}", status_code=303)
    if ended is not None:
        response.delete_cookie(SESSION_COOKIE, path="/portal")
    return response


async def read_form(request: Request) -> dict[str, list[str]]:
    """An URL-encoded form (the body limit is the gateway's): each field's values, in order."""
    media_type = (request.headers.get("content-type") or "").split(";", 1)[0].strip().lower()
    if media_type != FORM_TYPE:
        return {}
    body = (await request.body()).decode("utf-8", errors="replace")
    form: dict[str, list[str]] = {}
    for key, value in parse_qsl(body, keep_blank_values=True, max_num_fields=2000):
        form.setdefault(key, []).append(value)
    return form


def first(form: Mapping[str, list[str]], name: str) -> str:
    values = form.get(name) or [""]
    return values[0].strip()


def signed_in(route: str) -> Callable[[Handler], Endpoint]:
    """A page for a signed-in person: session, rate limit, and for a form its CSRF token."""

    def wrap(handler: Handler) -> Endpoint:
        async def endpoint(request: Request) -> Response:
            _mark_route(request, route)
            state = portal_state(request)
            found = await state.sessions.resolve(request.cookies.get(SESSION_COOKIE))
            if not isinstance(found, Person):
                return _to_sign_in(request, ended=found)
            decision = await state.admission.limit(ip=_client_ip(request), principal=found.principal)
            if not decision.allowed:
                return render(
                    request,
                    "error.html",
                    {"headline": "Too many requests; wait a moment", "message": "", "violations": []},
                    person=found,
                    status=429,
                    headers={"Retry-After": str(max(1, decision.retry_after_seconds))},
                )
            if request.method == "POST":
                form = await read_form(request)
                presented = first(form, CSRF_FIELD) or request.headers.get(CSRF_HEADER)
                if not csrf_matches(found.csrf_token, presented):
                    return render(
                        request,
                        "error.html",
                        {
                            "headline": "This form has expired",
                            "message": "Reload the page and try again.",
                            "violations": [],
                            "code": "CSRF_TOKEN_MISMATCH",
                        },
                        person=found,
                        status=403,
                    )
                request.state.form = form
            try:
                return await handler(request, found)
            except (grpc.aio.AioRpcError, AwarenessError) as exc:
                return error_page(request, exc, person=found)

        return endpoint

    return wrap


async def sign_in_page(request: Request) -> Response:
    _mark_route(request, "/portal/sign-in")
    state = portal_state(request)
    found = await state.sessions.resolve(request.cookies.get(SESSION_COOKIE))
    target = safe_next(request.query_params.get("next"), default=HOME)
    if isinstance(found, Person):
        return RedirectResponse(target, status_code=303)
    return _sign_in_form(
        request, target=target, notice=ENDED_MESSAGES.get(request.query_params.get("ended", ""))
    )


def _sign_in_form(
    request: Request, *, target: str, notice: str | None = None, error: str = "", status: int = 200
) -> Response:
    # Login CSRF: the form's token must match this cookie, which another site cannot set or read.
    token = new_token()
    response = render(
        request,
        "sign_in.html",
        {
            "next": target,
            "notice": notice,
            "error": error,
            "sign_in_token": token,
            "oidc": portal_state(request).oidc,
        },
        status=status,
    )
    response.set_cookie(
        SIGN_IN_COOKIE,
        token,
        max_age=3600,
        path=SIGN_IN,
        httponly=True,
        samesite="strict",
        secure=_secure(request, portal_state(request).config),
    )
    return response


async def sign_in(request: Request) -> Response:
    _mark_route(request, "/portal/sign-in")
    state = portal_state(request)
    form = await read_form(request)
    target = safe_next(first(form, "next"), default=HOME)
    expected = request.cookies.get(SIGN_IN_COOKIE, "")
    if not csrf_matches(expected, first(form, CSRF_FIELD)):
        return _sign_in_form(request, target=target, error="The sign-in form expired. Try again.", status=403)
    api_key = first(form, "api_key")
    if not api_key:
        return _sign_in_form(request, target=target, error="Enter your API key.", status=400)
    try:
        token, _person = await state.sessions.sign_in_with_api_key(api_key)
    except AwarenessError as exc:
        if exc.code == grpc.StatusCode.UNAUTHENTICATED:
            state.admission.auth_failures.labels(exc.reason).inc()
            decision = await state.admission.limit_failed_auth(ip=_client_ip(request))
            if not decision.allowed:
                return _sign_in_form(
                    request, target=target, error="Too many failed attempts; wait a minute.", status=429
                )
            return _sign_in_form(request, target=target, error="That API key is not valid.", status=401)
        if exc.code == grpc.StatusCode.PERMISSION_DENIED:
            return _sign_in_form(request, target=target, error=exc.message, status=403)
        raise
    return _signed_in_redirect(request, token, target)


def _callback_url(request: Request, oidc: OidcSignIn) -> str:
    if oidc.config.public_url:
        return oidc.config.public_url + OIDC_CALLBACK
    return str(request.url.replace(path=OIDC_CALLBACK, query=""))


async def oidc_start(request: Request) -> Response:
    _mark_route(request, "/portal/oidc/start")
    state = portal_state(request)
    target = safe_next(request.query_params.get("next"), default=HOME)
    if state.oidc is None:
        return _sign_in_form(
            request, target=target, error="Sign-in with an identity provider is not set up.", status=404
        )
    try:
        started = await state.oidc.start(next_path=target, redirect_uri=_callback_url(request, state.oidc))
    except AwarenessError as exc:
        return _sign_in_form(request, target=target, error=exc.message, status=503)
    response = RedirectResponse(started.authorization_url, status_code=303)
    response.set_cookie(
        OIDC_COOKIE,
        started.cookie,
        max_age=600,
        path="/portal/oidc",
        httponly=True,
        samesite="lax",  # sent on the provider's top-level redirect back, never on a cross-site POST
        secure=_secure(request, state.config),
    )
    return response


async def oidc_callback(request: Request) -> Response:
    _mark_route(request, OIDC_CALLBACK)
    state = portal_state(request)
    if state.oidc is None:
        return _sign_in_form(
            request, target=HOME, error="Sign-in with an identity provider is not set up.", status=404
        )
    params = request.query_params
    if params.get("error"):
        return _sign_in_form(
            request,
            target=HOME,
            error=f"The identity provider did not sign you in ({params['error'][:100]}).",
            status=401,
        )
    try:
        principal, target = await state.oidc.finish(
            cookie=request.cookies.get(OIDC_COOKIE),
            state=params.get("state", ""),
            code=params.get("code", ""),
            redirect_uri=_callback_url(request, state.oidc),
        )
        token, _person = await state.sessions.start(principal)
    except AwarenessError as exc:
        if exc.code == grpc.StatusCode.UNAUTHENTICATED:
            state.admission.auth_failures.labels(exc.reason).inc()
            return _sign_in_form(request, target=HOME, error=exc.message, status=401)
        if exc.code == grpc.StatusCode.PERMISSION_DENIED:
            return _sign_in_form(request, target=HOME, error=exc.message, status=403)
        raise
    response = _signed_in_redirect(request, token, safe_next(target, default=HOME))
    response.delete_cookie(OIDC_COOKIE, path="/portal/oidc")
    return response


def _signed_in_redirect(request: Request, token: str, target: str) -> Response:
    config = portal_state(request).config
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=config.max_seconds,
        path="/portal",
        httponly=True,
        samesite="lax",
        secure=_secure(request, config),
    )
    response.delete_cookie(SIGN_IN_COOKIE, path=SIGN_IN)
    return response


@signed_in("/portal/sign-out")
async def sign_out(request: Request, person: Person) -> Response:
    await portal_state(request).sessions.end(person.token_hash)
    response = RedirectResponse(f"{SIGN_IN}?ended=signed_out", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/portal")
    return response


# --- home ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Card:
    """One figure on the home page for one role's work, with where to act on it."""

    title: str
    figure: str
    note: str
    link: str
    # A name (a model version) rather than a count: set smaller, so a long one still fits.
    is_name: bool = False


async def _role_cards(services: Services, person: Person) -> list[Card]:
    """A card per piece of work the person's roles do; a service that cannot answer shows as such
    instead of failing the whole page."""
    wanted: list[tuple[str, str, Callable[[], Awaitable[tuple[str, str]]]]] = []

    async def count_policies(state: policy_pb2.Policy.State.ValueType) -> tuple[str, str]:
        listed = await services.policy().ListPolicies(
            policy_pb2.ListPoliciesRequest(page_size=100, state=state)
        )
        return f"{len(listed.policies)}{'+' if listed.next_page_token else ''}", ""

    async def erasures() -> tuple[str, str]:
        listed = await services.gdpr().ListErasureRecords(gdpr_pb2.ListErasureRecordsRequest(page_size=100))
        return f"{len(listed.erasure_records)}{'+' if listed.next_page_token else ''}", "erasure records kept"

    async def champion() -> tuple[str, str]:
        champions = await services.scoring().ListModels(
            scoring_pb2.ListModelsRequest(page_size=1, status=scoring_pb2.Model.STATUS_CHAMPION)
        )
        challengers = await services.scoring().ListModels(
            scoring_pb2.ListModelsRequest(page_size=100, status=scoring_pb2.Model.STATUS_CHALLENGER)
        )
        version = champions.models[0].version if champions.models else "none"
        waiting = len(challengers.models)
        return version, {0: "no challenger waiting", 1: "1 challenger waiting"}.get(
            waiting, f"{waiting} challengers waiting"
        )

    async def checkpoint() -> tuple[str, str]:
        latest = await services.ingest().GetCheckpoint(ingest_pb2.GetCheckpointRequest())
        return f"{latest.tree_size:,} leaves", f"signed {display.when(latest.timestamp)}"

    if person.can("policy:approve"):
        wanted.append(
            (
                "Policies waiting for review",
                "/portal/policies",
                lambda: count_policies(policy_pb2.Policy.STATE_REVIEW),
            )
        )
    if person.can("policy:author"):
        wanted.append(
            ("Policy drafts", "/portal/policies", lambda: count_policies(policy_pb2.Policy.STATE_DRAFT))
        )
    if person.can("gdpr:audit"):
        wanted.append(("Erasures", "/portal/privacy", erasures))
    if person.can("model:read"):
        wanted.append(("Champion model", "/portal/models", champion))
    if person.can("audit:verify"):
        wanted.append(("Latest checkpoint", "/portal/evidence", checkpoint))
    answers = await asyncio.gather(
        *(services.as_person(person, fetch) for _, _, fetch in wanted), return_exceptions=True
    )
    cards = []
    for (title, link, fetch), answer in zip(wanted, answers, strict=True):
        if isinstance(answer, BaseException):
            if not isinstance(answer, (grpc.aio.AioRpcError, AwarenessError)):
                raise answer
            cards.append(Card(title, "—", f"unavailable ({failure_of(answer).code.name})", link))
        else:
            figure, note = answer
            cards.append(Card(title, figure, note, link, is_name=fetch is champion))
    return cards


@signed_in("/portal/")
async def home(request: Request, person: Person) -> Response:
    context: dict[str, Any] = {"charts": [], "open_triage": None, "sample": 0, "days": HOME_DAYS}
    context["cards"] = await _role_cards(portal_state(request).services, person)
    if person.can("events:read"):
        services = portal_state(request).services
        start = display.now() - timedelta(days=HOME_DAYS - 1)
        since = start.date().isoformat()
        recent_request = queue.list_request(queue.QueueFilters(since=since), page_size=HOME_SAMPLE)
        recent_request.view = ingest_pb2.EVENT_VIEW_BASIC
        open_request = ingest_pb2.ListEventsRequest(
            page_size=HOME_SAMPLE, triage_state=ingest_pb2.TRIAGE_STATE_NEW, view=ingest_pb2.EVENT_VIEW_BASIC
        )
        recent, open_items = await asyncio.gather(
            services.list_events(person, recent_request), services.list_events(person, open_request)
        )
        events = [event for event in recent.events if not event.type.startswith("audit.")]
        days = [(start + timedelta(days=offset)).date().isoformat() for offset in range(HOME_DAYS)]
        context.update(
            open_triage=f"{len(open_items.events):,}{'+' if open_items.next_page_token else ''}",
            sample=len(events),
            sample_capped=bool(recent.next_page_token),
            charts=_home_charts(events, days),
        )
    return render(request, "home.html", context, person=person)


def _home_charts(events: list[ingest_pb2.Event], days: list[str]) -> list[charts.Chart]:
    per_day = charts.stacked_by_day(
        "Events per day, by type", days, ((display.day_of(event.occurred_at), event.type) for event in events)
    )
    levels = [name for name in queue.LEVELS]
    level_counts = {name: 0 for name in levels}
    violations: dict[str, int] = {}
    for event in events:
        level = display.RISK_LEVELS.get(event.metadata.risk_level, "")
        if level:
            level_counts[level] += 1
        for violation in event.metadata.violations:
            title = violation.title or violation.policy
            violations[title] = violations.get(title, 0) + 1
    risk = charts.bar_chart(
        "Risk levels",
        [(name, level_counts[name]) for name in levels],
        css_classes=[f"risk-{name}" for name in levels],
    )
    top = sorted(violations.items(), key=lambda item: (-item[1], item[0]))[:5]
    policies = charts.bar_chart("Most violated policies", top, unit="violations")
    return [per_day, risk, policies]


# --- analyst: the triage queue and an event ------------------------------------------------


@signed_in("/portal/events")
async def events(request: Request, person: Person) -> Response:
    filters = queue.parse_filters(request.query_params)
    listed = await portal_state(request).services.list_events(person, queue.list_request(filters))
    context = {
        "filters": filters,
        "events": listed.events,
        "next_query": urlencode(filters.query(page_token=listed.next_page_token))
        if listed.next_page_token
        else "",
        "levels": queue.LEVELS,
        "labels": queue.LABELS,
        "triage_states": queue.TRIAGE_STATES,
        "done": request.query_params.get("done", ""),
    }
    status = 400 if filters.violations else 200
    return render(request, "events.html", context, person=person, status=status)


def _label_request(name: str, form: Mapping[str, list[str]]) -> ingest_pb2.LabelEventRequest:
    """The LabelEvent call a form asks for; a choice the form never offers is refused here."""
    label, triage = first(form, "label"), first(form, "triage")
    violations = []
    if label and label not in queue.LABELS:
        violations.append(FieldViolation("label", f"one of {', '.join(queue.LABELS)}"))
    if triage and triage not in queue.TRIAGE_STATES:
        violations.append(FieldViolation("triage", f"one of {', '.join(queue.TRIAGE_STATES)}"))
    if not label and not triage:
        violations.append(FieldViolation("label", "choose a label, a triage state or both"))
    if violations:
        raise InvalidArgumentError("the form asked for no valid change", violations=violations)
    return ingest_pb2.LabelEventRequest(
        name=name,
        note=first(form, "note"),
        label=queue.LABELS.get(label, ingest_pb2.LABEL_UNSPECIFIED),
        triage_state=queue.TRIAGE_STATES.get(triage, ingest_pb2.TRIAGE_STATE_UNSPECIFIED),
    )


@signed_in("/portal/events:label")
async def label_many(request: Request, person: Person) -> Response:
    """Label or triage the selected events of the queue, one call each; the first refusal stops."""
    form: dict[str, list[str]] = request.state.form
    names = [f"events/{event_id}" for event_id in form.get("event", []) if event_id][:100]
    if not names:
        raise InvalidArgumentError(
            "no event chosen", violations=[FieldViolation("event", "choose at least one")]
        )
    services = portal_state(request).services
    for name in names:
        await services.label_event(person, _label_request(name, form))
    back = safe_next(first(form, "back"), default="/portal/events")
    separator = "&" if "?" in back else "?"
    return RedirectResponse(f"{back}{separator}done={len(names)}", status_code=303)


@signed_in("/portal/events/{event_id}")
async def event_page(request: Request, person: Person) -> Response:
    name = f"events/{request.path_params['event_id']}"
    services = portal_state(request).services
    event = await services.get_event(person, name)

    async def no_evidence() -> Evidence | None:
        return None

    async def label_history() -> ingest_pb2.ListAccessRecordsResponse | str | None:
        # The history is the access records, which only roles that may read them see.
        if not person.can(history.HISTORY_PERMISSION):
            return None
        wanted = history.history_request(name)
        return await part(services, person, lambda: services.ingest().ListAccessRecords(wanted))

    evidence, listed = await asyncio.gather(
        services.inclusion_evidence(person, event) if person.can("audit:verify") else no_evidence(),
        label_history(),
    )
    context = {
        "event": event,
        "evidence": evidence_json(evidence) if evidence else None,
        "history": history.label_changes(listed.access_records)
        if isinstance(listed, ingest_pb2.ListAccessRecordsResponse)
        else listed,
        "history_more": isinstance(listed, ingest_pb2.ListAccessRecordsResponse)
        and bool(listed.next_page_token),
        "history_permission": history.HISTORY_PERMISSION,
        "history_size": history.HISTORY_SIZE,
        "labels": queue.LABELS,
        "triage_states": queue.TRIAGE_STATES,
        "done": request.query_params.get("done", ""),
    }
    return render(request, "event.html", context, person=person)


@signed_in("/portal/events/{event_id}:label")
async def label_one(request: Request, person: Person) -> Response:
    event_id = request.path_params["event_id"]
    form: dict[str, list[str]] = request.state.form
    await portal_state(request).services.label_event(person, _label_request(f"events/{event_id}", form))
    return RedirectResponse(f"/portal/events/{event_id}?done=labelled", status_code=303)


def evidence_json(evidence: Evidence) -> dict[str, Any]:
    """The inclusion evidence as static/verify.js reads it."""

    def b64(value: bytes) -> str:
        return base64.b64encode(value).decode()

    return {
        "kind": "inclusion",
        "leafIndex": evidence.leaf_index,
        "leafHash": b64(evidence.leaf_hash),
        "treeSize": evidence.tree_size,
        "proof": [b64(node) for node in evidence.proof],
        "note": evidence.note,
        "verifierKeys": evidence.verifier_keys,
    }
