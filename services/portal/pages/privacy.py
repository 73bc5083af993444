"""The data protection officer's pages (docs/portal.md): look a person up, export, erase, consent,
retention, erasure records and the gdpr audit trail.

A person's identifier (an e-mail address, say) never goes into a URL: the lookup and every action
on a person is a POST, and its answer is rendered from the POST itself. What those pages link to
names the pseudonym only. Repeating a consent change or an erasure (a reloaded form) repeats its
idempotency key, so the service returns the first call's record instead of acting twice.

The identifier is resolved to a pseudonym through ingest's ListEvents ``subject`` filter (and the
consent history): gdpr's LookupSubject and CheckConsent are internal methods (callers: ingest,
scoring) that the gateway may not call for a person. The consent state is derived from the history
by the gdpr service's own rule (``services.portal.domain.privacy``).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlencode

import grpc
from awareness.gdpr.v1 import gdpr_pb2
from awareness.ingest.v1 import ingest_pb2
from grpc_status import rpc_status
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from services.portal.api import first, portal_state, render, signed_in
from services.portal.domain import privacy
from services.portal.service import Person, Services
from services.runtime.errors import (
    FieldViolation,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    field_violations,
)

log = logging.getLogger("awareness.portal.privacy")

HOME: Final = "/portal/privacy"
PAGE_SIZE: Final = 25
COUNT_PAGE: Final = 500
AUDIT_PAGE: Final = 50
CONSENT_HISTORY_SHOWN: Final = 10
ERASURE_SCAN: Final = 100  # erasure records searched for a resubmitted erasure's request id
# An export streams a person's whole history and a retention run may shred many keys: both may
# take longer than an ordinary call.
EXPORT_TIMEOUT_SECONDS: Final = 300.0
RETENTION_TIMEOUT_SECONDS: Final = 120.0
AREA_PERMISSIONS: Final = ("gdpr:export", "gdpr:erase", "gdpr:consent", "gdpr:retention", "gdpr:audit")
CONSENT_DONE: Final = {"grant": "granted", "withdraw": "withdrawn"}


def _services(request: Request) -> Services:
    return portal_state(request).services


def _form(request: Request) -> dict[str, list[str]]:
    form: dict[str, list[str]] = request.state.form
    return form


def _require_any(person: Person, permissions: tuple[str, ...]) -> None:
    """Refuse a page whose every part needs a permission the person lacks (no call would succeed)."""
    if not any(person.can(permission) for permission in permissions):
        raise PermissionDeniedError(
            "Data protection is for the data protection officer and auditors; your role has none of "
            + ", ".join(permissions),
            reason="MISSING_PERMISSION",
        )


def _violations_of(exc: grpc.aio.AioRpcError) -> list[FieldViolation]:
    try:
        status = rpc_status.from_call(exc)
    except ValueError:
        status = None
    found = field_violations(status) if status is not None else []
    return found or [FieldViolation("request", exc.details() or "was refused")]


# --- looking a person up ------------------------------------------------------------------------


@dataclass
class Subject:
    """What the portal learned about an identifier, for one page; ``pseudonym`` empty: nobody."""

    identifier: str
    pseudonym: str = ""
    count: privacy.EventCount | None = None
    consents: list[privacy.ConsentState] | None = None  # None: the role may not read consent
    history: list[gdpr_pb2.ConsentRecord] = field(default_factory=list)


async def _consent_history(
    services: Services, person: Person, identifier: str
) -> gdpr_pb2.ListConsentHistoryResponse | None:
    """The person's consent records, newest first; None for nobody (unknown or erased)."""
    request = gdpr_pb2.ListConsentHistoryRequest(subject=identifier, page_size=1000)
    try:
        return await services.as_person(person, lambda: services.gdpr().ListConsentHistory(request))
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            return None
        raise


async def _newest_event(services: Services, person: Person, identifier: str) -> ingest_pb2.Event | None:
    # The pseudonymous view: resolving the identifier needs no decryption.
    request = ingest_pb2.ListEventsRequest(subject=identifier, page_size=1, view=ingest_pb2.EVENT_VIEW_BASIC)
    listed = await services.list_events(person, request)
    return listed.events[0] if listed.events else None


async def _no_history() -> gdpr_pb2.ListConsentHistoryResponse | None:
    return None


async def _pseudonym_of(services: Services, person: Person, identifier: str) -> str:
    """The pseudonym an identifier leads to now; empty for nobody (unknown or erased)."""
    newest = await _newest_event(services, person, identifier)
    if newest is not None:
        return newest.subject_pseudonym
    if person.can("gdpr:consent"):  # someone with consent records but no event yet
        history = await _consent_history(services, person, identifier)
        if history is not None and history.records:
            return history.records[0].pseudonym
    return ""


async def _look_up(services: Services, person: Person, identifier: str) -> Subject:
    reads_consent = person.can("gdpr:consent")
    newest, history = await asyncio.gather(
        _newest_event(services, person, identifier),
        _consent_history(services, person, identifier) if reads_consent else _no_history(),
    )
    subject = Subject(identifier=identifier)
    if newest is not None:
        subject.pseudonym = newest.subject_pseudonym
    elif history is not None and history.records:
        subject.pseudonym = history.records[0].pseudonym
    if not subject.pseudonym:
        return subject
    if reads_consent:
        records = list(history.records) if history is not None else []
        subject.consents = privacy.consent_states(records)
        subject.history = records[:CONSENT_HISTORY_SHOWN]
    subject.count, _ = await _events_of(services, person, subject.pseudonym)
    return subject


async def _events_of(
    services: Services, person: Person, pseudonym: str, *, event_type: str = ""
) -> tuple[privacy.EventCount, list[ingest_pb2.Event]]:
    """Count a pseudonym's events page by page up to the cap; the count and the events read."""
    events: list[ingest_pb2.Event] = []
    token = ""
    while True:
        request = ingest_pb2.ListEventsRequest(
            subject_pseudonym=pseudonym,
            type=event_type,
            page_size=min(COUNT_PAGE, privacy.COUNT_CAP - len(events)),
            page_token=token,
            view=ingest_pb2.EVENT_VIEW_BASIC,
        )
        listed = await services.list_events(person, request)
        events.extend(listed.events)
        token = listed.next_page_token
        if not token or len(events) >= privacy.COUNT_CAP:
            break
    return privacy.count_events(events, capped=bool(token)), events


def _subject_page(
    request: Request,
    person: Person,
    subject: Subject,
    *,
    errors: Mapping[str, str] | None = None,
    reason: str = "",
    notice: str = "",
    status: int = 200,
) -> Response:
    context = {
        "subject": subject,
        "errors": dict(errors or {}),
        "erase_reason": reason,  # given back with a refused erasure, so only the confirmation is retyped
        "notice": notice,
        "action_word": privacy.consent_action_word,
        # Fresh idempotency keys: a resubmitted form repeats its own, so it acts once.
        "new_request_id": lambda: str(uuid.uuid4()),
    }
    return render(request, "privacy_subject.html", context, person=person, status=status)


# --- pages --------------------------------------------------------------------------------------


@signed_in("/portal/privacy")
async def overview(request: Request, person: Person) -> Response:
    _require_any(person, AREA_PERMISSIONS)
    return render(request, "privacy.html", {"errors": {}, "identifier": ""}, person=person)


@signed_in("/portal/privacy/lookup")
async def lookup(request: Request, person: Person) -> Response:
    """The person page, rendered from the POST: the identifier stays out of every URL."""
    form = _form(request)
    try:
        identifier = privacy.identifier_of(form)
    except InvalidArgumentError as exc:
        errors = {violation.field: violation.description for violation in exc.violations}
        return render(
            request, "privacy.html", {"errors": errors, "identifier": ""}, person=person, status=400
        )
    subject = await _look_up(_services(request), person, identifier)
    return _subject_page(request, person, subject, status=200 if subject.pseudonym else 404)


@signed_in("/portal/privacy/{action}")
async def back_to_overview(request: Request, person: Person) -> Response:
    """A person page's address opened again (history, a copied address): the lookup form, not a 405.
    The page itself cannot come back: its identifier was only ever in the POST."""
    return RedirectResponse(HOME, status_code=303)


@signed_in("/portal/privacy/export")
async def export(request: Request, person: Person) -> Response:
    """The Art. 15/20 export as a JSON attachment, streamed as the service streams it."""
    form = _form(request)
    identifier = privacy.identifier_of(form)
    reason = privacy.reason_of(form, required=False, what="the export is made")
    services = _services(request)
    call_request = gdpr_pb2.ExportSubjectRequest(subject=identifier, reason=reason)

    async def start() -> tuple[bytes, AsyncIterator[bytes], Any]:
        call = services.gdpr().ExportSubject(call_request, timeout=EXPORT_TIMEOUT_SECONDS)
        chunks = call.__aiter__()
        # The first chunk before any header is sent, so a refusal is an error page, not a broken file.
        try:
            head = (await chunks.__anext__()).data
        except StopAsyncIteration:
            head = b""

        async def rest() -> AsyncIterator[bytes]:
            async for chunk in chunks:
                yield chunk.data

        return head, rest(), call

    head, rest, call = await services.as_person(person, start)
    try:
        pseudonym = await _pseudonym_of(services, person, identifier)
    except BaseException:
        call.cancel()
        raise

    async def body() -> AsyncIterator[bytes]:
        try:
            if head:
                yield head
            async for chunk in rest:
                yield chunk
        except grpc.aio.AioRpcError as exc:
            # The status line is sent: the file ends early (and does not parse) and the log says why.
            log.warning("export stream failed after the first chunk", extra={"code": exc.code().name})
        finally:
            call.cancel()

    filename = privacy.export_filename(pseudonym or "subject")
    return StreamingResponse(
        body(),
        media_type="application/json",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


@signed_in("/portal/privacy/erase")
async def erase(request: Request, person: Person) -> Response:
    form = _form(request)
    identifier = privacy.identifier_of(form)
    request_id = privacy.request_id_of(form)
    reason, typed = first(form, "reason"), first(form, "confirmation")
    services = _services(request)
    subject = await _look_up(services, person, identifier)
    if not subject.pseudonym:
        # Already erased, e.g. by this very form submitted twice: its record, found by request id.
        replayed = await _erasure_with_request_id(services, person, request_id)
        if replayed is not None:
            return RedirectResponse(
                f"{HOME}/erasures/{privacy.erasure_id_of(replayed.name)}?done=erased", status_code=303
            )
        return _subject_page(request, person, subject, status=404)
    violations = privacy.erasure_violations(reason=reason, typed=typed, pseudonym=subject.pseudonym)
    if violations:
        errors = {violation.field: violation.description for violation in violations}
        return _subject_page(request, person, subject, errors=errors, reason=reason, status=400)
    call_request = gdpr_pb2.EraseSubjectRequest(subject=identifier, reason=reason, request_id=request_id)
    try:
        record = await services.as_person(person, lambda: services.gdpr().EraseSubject(call_request))
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.INVALID_ARGUMENT:
            raise
        # E.g. a reason that names the person (it outlives the erasure): said beside the field.
        errors = {violation.field: violation.description for violation in _violations_of(exc)}
        return _subject_page(request, person, subject, errors=errors, reason=reason, status=400)
    if not person.can("gdpr:audit"):
        # The record page needs gdpr:audit; the call's own answer is the record.
        return render(request, "privacy_erasure.html", {"record": record, "done": "erased"}, person=person)
    return RedirectResponse(
        f"{HOME}/erasures/{privacy.erasure_id_of(record.name)}?done=erased", status_code=303
    )


async def _erasure_with_request_id(
    services: Services, person: Person, request_id: str
) -> gdpr_pb2.ErasureRecord | None:
    if not person.can("gdpr:audit"):
        return None
    listed = await services.as_person(
        person,
        lambda: services.gdpr().ListErasureRecords(
            gdpr_pb2.ListErasureRecordsRequest(page_size=ERASURE_SCAN)
        ),
    )
    return next((record for record in listed.erasure_records if record.request_id == request_id), None)


@signed_in("/portal/privacy/consent")
async def change_consent(request: Request, person: Person) -> Response:
    form = _form(request)
    identifier = privacy.identifier_of(form)
    change = privacy.consent_change(form)
    services = _services(request)
    if not await _pseudonym_of(services, person, identifier):
        # A page left open across an erasure: a consent change would register the person again.
        return _subject_page(request, person, Subject(identifier=identifier), status=404)
    if change.action == "grant":
        grant = gdpr_pb2.GrantConsentRequest(
            subject=identifier, purpose=change.purpose, reason=change.reason, request_id=change.request_id
        )
        await services.as_person(person, lambda: services.gdpr().GrantConsent(grant))
    else:
        withdraw = gdpr_pb2.WithdrawConsentRequest(
            subject=identifier, purpose=change.purpose, reason=change.reason, request_id=change.request_id
        )
        await services.as_person(person, lambda: services.gdpr().WithdrawConsent(withdraw))
    subject = await _look_up(services, person, identifier)
    notice = f"Consent for {change.purpose.replace('_', ' ')} {CONSENT_DONE[change.action]}."
    return _subject_page(request, person, subject, notice=notice)


@signed_in("/portal/privacy/subjects/{pseudonym}")
async def pseudonym_page(request: Request, person: Person) -> Response:
    """What the log holds under a pseudonym: its events, and its erasure if there was one."""
    pseudonym = request.path_params["pseudonym"]
    if not privacy.is_pseudonym(pseudonym):
        raise NotFoundError("no such pseudonym", reason="PSEUDONYM_NOT_VALID")
    services = _services(request)
    (count, events), (_, erasures) = await asyncio.gather(
        _events_of(services, person, pseudonym),
        _events_of(services, person, pseudonym, event_type=privacy.ERASURE_EVENT_TYPE),
    )
    erasure_names = [name for name in (privacy.erasure_named_by(event) for event in erasures) if name]
    records: list[gdpr_pb2.ErasureRecord] = []
    if erasure_names and person.can("gdpr:audit"):
        records = list(
            await asyncio.gather(*(_erasure_record(services, person, name) for name in erasure_names))
        )
    context = {
        "pseudonym": pseudonym,
        "count": count,
        "events": events[:PAGE_SIZE],
        "erasure_events": erasures,
        "erasure_records": records,
    }
    return render(request, "privacy_pseudonym.html", context, person=person)


async def _erasure_record(services: Services, person: Person, name: str) -> gdpr_pb2.ErasureRecord:
    request = gdpr_pb2.GetErasureRecordRequest(name=name)
    return await services.as_person(person, lambda: services.gdpr().GetErasureRecord(request))


@signed_in("/portal/privacy/erasures")
async def erasures(request: Request, person: Person) -> Response:
    token = request.query_params.get("page_token", "")
    services = _services(request)
    listed = await services.as_person(
        person,
        lambda: services.gdpr().ListErasureRecords(
            gdpr_pb2.ListErasureRecordsRequest(page_size=PAGE_SIZE, page_token=token)
        ),
    )
    context = {
        "records": listed.erasure_records,
        "next_query": urlencode({"page_token": listed.next_page_token}) if listed.next_page_token else "",
        "paged": bool(token),
    }
    return render(request, "privacy_erasures.html", context, person=person)


@signed_in("/portal/privacy/erasures/{erasure_id}")
async def erasure_page(request: Request, person: Person) -> Response:
    erasure_id = request.path_params["erasure_id"]
    if not privacy.is_erasure_id(erasure_id):
        raise NotFoundError("no such erasure record", reason="ERASURE_NOT_FOUND")
    record = await _erasure_record(_services(request), person, f"erasures/{erasure_id}")
    context = {"record": record, "done": request.query_params.get("done", "")}
    return render(request, "privacy_erasure.html", context, person=person)


# --- retention ----------------------------------------------------------------------------------


async def _retention_context(request: Request, person: Person) -> dict[str, Any]:
    services = _services(request)
    listed = await services.as_person(
        person,
        lambda: services.gdpr().ListRetentionRules(gdpr_pb2.ListRetentionRulesRequest(page_size=1000)),
    )
    shredded = request.query_params.get("shredded", "")
    return {
        "rules": listed.rules,
        "more_rules": bool(listed.next_page_token),
        "done": request.query_params.get("done", ""),
        "shredded": int(shredded) if shredded.isdigit() else None,
        "report": None,
        "request_id": str(uuid.uuid4()),
    }


@signed_in("/portal/privacy/retention")
async def retention(request: Request, person: Person) -> Response:
    context = await _retention_context(request, person)
    return render(request, "privacy_retention.html", context, person=person)


@signed_in("/portal/privacy/retention")
async def set_rule(request: Request, person: Person) -> Response:
    change = privacy.rule_change(_form(request))
    services = _services(request)
    call_request = gdpr_pb2.SetRetentionRuleRequest(
        rule=gdpr_pb2.RetentionRule(event_type=change.event_type, retention_days=change.retention_days),
        reason=change.reason,
    )
    await services.as_person(person, lambda: services.gdpr().SetRetentionRule(call_request))
    return RedirectResponse(f"{HOME}/retention?done=rule", status_code=303)


@signed_in("/portal/privacy/retention:dry-run")
async def dry_run(request: Request, person: Person) -> Response:
    """What a retention run would shred, changing nothing; the page then offers the real run."""
    reason = privacy.reason_of(_form(request), required=False, what="retention is checked")
    services = _services(request)
    call_request = gdpr_pb2.ApplyRetentionRequest(dry_run=True, reason=reason or "dry run from the portal")
    report = await services.as_person(
        person, lambda: services.gdpr().ApplyRetention(call_request, timeout=RETENTION_TIMEOUT_SECONDS)
    )
    context = await _retention_context(request, person)
    context["report"] = report
    return render(request, "privacy_retention.html", context, person=person)


@signed_in("/portal/privacy/retention:apply")
async def apply_retention(request: Request, person: Person) -> Response:
    form = _form(request)
    reason = privacy.reason_of(form, required=True, what="retention is applied now")
    services = _services(request)
    call_request = gdpr_pb2.ApplyRetentionRequest(
        dry_run=False, reason=reason, request_id=privacy.request_id_of(form)
    )
    report = await services.as_person(
        person, lambda: services.gdpr().ApplyRetention(call_request, timeout=RETENTION_TIMEOUT_SECONDS)
    )
    return RedirectResponse(
        f"{HOME}/retention?{urlencode({'done': 'applied', 'shredded': report.keys_shredded})}",
        status_code=303,
    )


# --- the audit trail ----------------------------------------------------------------------------


@signed_in("/portal/privacy/audit")
async def audit_trail(request: Request, person: Person) -> Response:
    token = request.query_params.get("page_token", "")
    services = _services(request)
    listed = await services.as_person(
        person,
        lambda: services.gdpr().ListAuditRecords(
            gdpr_pb2.ListAuditRecordsRequest(page_size=AUDIT_PAGE, page_token=token)
        ),
    )
    check = privacy.check_chain(listed.audit_records, from_genesis=not listed.next_page_token)
    context = {
        "check": check,
        "next_query": urlencode({"page_token": listed.next_page_token}) if listed.next_page_token else "",
        "paged": bool(token),
    }
    return render(request, "privacy_audit.html", context, person=person)


routes: list[BaseRoute] = [
    Route("/privacy", overview, methods=["GET"]),
    Route("/privacy/lookup", lookup, methods=["POST"]),
    Route("/privacy/export", export, methods=["POST"]),
    Route("/privacy/erase", erase, methods=["POST"]),
    Route("/privacy/consent", change_consent, methods=["POST"]),
    Route("/privacy/subjects/{pseudonym}", pseudonym_page, methods=["GET"]),
    Route("/privacy/erasures", erasures, methods=["GET"]),
    Route("/privacy/erasures/{erasure_id}", erasure_page, methods=["GET"]),
    Route("/privacy/retention", retention, methods=["GET"]),
    Route("/privacy/retention", set_rule, methods=["POST"]),
    Route("/privacy/retention:dry-run", dry_run, methods=["POST"]),
    Route("/privacy/retention:apply", apply_retention, methods=["POST"]),
    Route("/privacy/audit", audit_trail, methods=["GET"]),
    *(
        Route(f"/privacy/{action}", back_to_overview, methods=["GET"])
        for action in ("lookup", "erase", "consent")
    ),
]
