"""``awareness keys``: create, list and revoke the gateway's API keys; ``events``, ``policies``, ``audit``.

Keys are written straight to the gateway's store, not over gRPC, so no service's interceptor records
their creation or revocation: the command appends that access record itself, to ingest, with the
gateway's certificate (it runs beside the gateway: on its machine, or in its pod).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy.orm import Session

from services.gateway import remote, repository
from services.gateway.config import KEY_CACHE_SECONDS_DEFAULT, KEY_CACHE_SECONDS_VAR
from services.gateway.domain import keys
from services.runtime import audit, auth, db, migrations
from services.runtime.config import env_float, load_settings

T = TypeVar("T")

RECORD_TIMEOUT_SECONDS = 10.0
RECORD_ATTEMPTS = 3
RECORD_RETRY_SECONDS = 0.5

AUDIT_DEFAULT_LIMIT = 50
MAX_PAGE_SIZE = 1000
AUDIT_COLUMNS = ("TIME", "PRINCIPAL", "ACTION", "RESOURCE", "SUBJECTS", "OUTCOME", "EVENT")
_AGO = re.compile(r"(\d+)([smhd])")
_AGO_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def _with_session(work: Callable[[Session], T]) -> T:
    settings = load_settings("gateway")
    engine = db.create_db_engine(settings.database_url, service="gateway")
    try:
        migrations.upgrade("gateway", engine)
        with db.transaction(db.session_factory(engine)) as session:
            return work(session)
    finally:
        engine.dispose()


async def _append_record(events: list[Any]) -> None:
    await audit.append_from_cli(
        events,
        service="gateway",
        attempts=RECORD_ATTEMPTS,
        timeout_seconds=RECORD_TIMEOUT_SECONDS,
        retry_seconds=RECORD_RETRY_SECONDS,
    )


MAX_KEY_NAME = 200  # the store's column


class InvalidKeyRequestError(ValueError):
    """A key that may not be created as asked; ``field`` names what is wrong."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def store_new_key(
    session: Session, *, name: str, roles: Sequence[str], expires_in_days: int | None, now: datetime
) -> tuple[keys.NewKey, repository.KeyRecord]:
    """Check and store a new API key; the token (shown once, never stored) and its record.

    Shared by ``awareness keys create`` and the portal's admin page."""
    if not name.strip() or len(name) > MAX_KEY_NAME:
        raise InvalidKeyRequestError("name", f"a name of 1 to {MAX_KEY_NAME} characters is required")
    try:
        granted = auth.parse_roles(roles)
    except ValueError as exc:
        raise InvalidKeyRequestError("roles", str(exc)) from exc
    if not granted:
        raise InvalidKeyRequestError("roles", "at least one role is required")
    if "service" in granted:
        raise InvalidKeyRequestError("roles", "the 'service' role is for services only")
    if expires_in_days is not None and expires_in_days <= 0:
        raise InvalidKeyRequestError("expires_in_days", "the expiry must be a positive number of days")
    new_key = keys.generate_key()
    record = repository.add_key(
        session,
        key_id=new_key.key_id,
        name=name,
        secret_hash=keys.hash_secret(new_key.secret),
        roles=sorted(granted),
        created_at=now,
        expires_at=now + timedelta(days=expires_in_days) if expires_in_days is not None else None,
    )
    return new_key, record


def created_key_details(record: repository.KeyRecord) -> dict[str, str]:
    """The details of a key creation's access record. The key's name stays out: it may name a person."""
    details = {"roles": ",".join(sorted(record.roles))}
    if record.expires_at is not None:
        details["expire_time"] = record.expires_at.isoformat()
    return details


def key_change_record(
    *, principal: str, method: str, action: str, key_id: str, details: Mapping[str, str]
) -> audit.AccessRecord:
    """The access record of a key change (``api_key.create``, ``api_key.revoke``) that has happened."""
    return audit.AccessRecord(
        principal=principal,
        action=action,
        method=method,
        resource=f"apiKeys/{key_id}",
        outcome="OK",
        time=audit.now(),
        details=dict(details),
    )


def _record_key_change(command: str, action: str, key_id: str, details: Mapping[str, str]) -> None:
    """Append the access record of a key change that has happened; warn on stderr if it cannot be.

    The exit status stays 0 either way, on purpose: it reports the key change, which stands. A key
    was created (its token printed once, never shown again) or revoked whether or not the record
    is written, and the gateway's store keeps when. A non-zero status would tell a script the change
    failed: it would create a second key, leaving the first live and unrecorded, or report a
    revocation that took effect as failed. The warning names the missing record instead, so the
    operator can add it to the audit trail by hand.
    """
    record = key_change_record(
        principal=auth.Principal.for_service("gateway").subject,
        method=f"awareness keys {command}",
        action=action,
        key_id=key_id,
        details=details,
    )
    events = audit.audit_events(record, source="gateway")
    try:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            asyncio.run(_append_record(events))
        else:
            # Called in-process from async code (tests): a blocking call would wait on this very loop.
            raise audit.RecordNotWrittenError("the command runs inside an event loop, which it cannot block")
    except Exception as exc:  # any failure: the key change stands and the warning says what is missing
        reason = str(exc) if isinstance(exc, audit.RecordNotWrittenError) else f"{type(exc).__name__}: {exc}"
        print(
            f"awareness keys {command}: WARNING: the access record of this change ({action} "
            f"{record.resource}, event {events[0].event_id}) was not written to the event log: {reason}. "
            "The key change stands; record it in the audit trail by hand.",
            file=sys.stderr,
        )


def _create(args: argparse.Namespace) -> int:
    try:
        new_key, record = _with_session(
            lambda session: store_new_key(
                session,
                name=args.name,
                roles=args.role,
                expires_in_days=args.expires_in_days,
                now=datetime.now(UTC),
            )
        )
    except InvalidKeyRequestError as exc:
        print(f"awareness keys create: {exc}", file=sys.stderr)
        return 2
    print(new_key.token)
    print(
        f"created key {record.key_id} ({record.name}; roles {', '.join(sorted(record.roles))}"
        f"{'; expires ' + record.expires_at.isoformat() if record.expires_at else ''}). "
        "It is shown only this once: store it now.",
        file=sys.stderr,
    )
    # The key itself never goes into a URL (history, logs); the person pastes it on this page.
    gateway = os.environ.get(remote.GATEWAY_URL_VAR, remote.DEFAULT_GATEWAY_URL).rstrip("/")
    print(f"sign in to the portal with it: {gateway}/portal/sign-in", file=sys.stderr)
    _record_key_change("create", "api_key.create", record.key_id, created_key_details(record))
    return 0


def key_state(record: repository.KeyRecord, now: datetime) -> str:
    """``active``, ``expired`` or ``revoked``, as ``awareness keys list`` and the portal show it."""
    if record.revoked_at is not None:
        return "revoked"
    return "active" if record.usable(now=now) else "expired"


def _list(_args: argparse.Namespace) -> int:
    records = _with_session(repository.list_keys)
    now = datetime.now(UTC)
    print(f"{'ID':<16}  {'NAME':<24}  {'ROLES':<28}  {'STATE':<8}  {'CREATED':<25}  EXPIRES")
    for r in records:
        expires = r.expires_at.isoformat(timespec="seconds") if r.expires_at else "never"
        state = key_state(r, now)
        print(
            f"{r.key_id:<16}  {r.name[:24]:<24}  {','.join(sorted(r.roles))[:28]:<28}  {state:<8}  "
            f"{r.created_at.isoformat(timespec='seconds'):<25}  {expires}"
        )
    return 0


def _revoke(args: argparse.Namespace) -> int:
    now = datetime.now(UTC)
    record = _with_session(lambda session: repository.revoke_key(session, key_id=args.key_id, now=now))
    if record is None:
        print(f"awareness keys revoke: no key {args.key_id}", file=sys.stderr)
        return 1
    print(f"revoked key {record.key_id} ({record.name})")
    _record_key_change("revoke", "api_key.revoke", record.key_id, {})
    cache_seconds = env_float(load_settings("gateway").env, KEY_CACHE_SECONDS_VAR, KEY_CACHE_SECONDS_DEFAULT)
    if cache_seconds > 0:
        # Gateways cache verified keys; say when the revocation is certain to be everywhere.
        print(f"gateways that verified it recently accept it for up to {cache_seconds:g} s more (key cache)")
    return 0


# --- awareness audit ---------------------------------------------------------------------------------
# The access records, through the gateway's HTTP API with an API key (gdpr:audit), like the remote
# commands of services.gateway.remote.


def _moment(text: str, option: str, *, now: datetime) -> str:
    """``--since``/``--until`` as the RFC 3339 time the API takes: an ISO 8601 date or time (UTC
    unless it says otherwise), or a span back from now such as ``30m``, ``24h`` or ``7d``."""
    ago = _AGO.fullmatch(text.strip())
    if ago is not None:
        moment = now - timedelta(**{_AGO_UNITS[ago.group(2)]: int(ago.group(1))})
    else:
        try:
            moment = datetime.fromisoformat(text.strip())
        except ValueError:
            raise remote.RemoteError(
                f"{option} must be an ISO 8601 date or time (2026-12-06, 2026-12-06T09:30:00+01:00) "
                f"or a span back from now (30m, 24h, 7d), got {text!r}",
                exit_code=remote.EXIT_USAGE,
            ) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def audit_filters(args: argparse.Namespace, *, now: datetime) -> dict[str, str]:
    """The query parameters of ``GET /v1/accessRecords`` for the command's filters."""
    if args.limit < 1:
        raise remote.RemoteError("--limit must be at least 1", exit_code=remote.EXIT_USAGE)
    params: dict[str, str] = {}
    for field, value in (
        ("principal", args.principal),
        ("action", args.action),
        ("resource", args.resource),
        ("subjectPseudonym", args.pseudonym),
    ):
        if value:
            params[field] = value
    if args.since:
        params["startTime"] = _moment(args.since, "--since", now=now)
    if args.until:
        params["endTime"] = _moment(args.until, "--until", now=now)
    return params


def _access_records(args: argparse.Namespace) -> tuple[list[dict[str, Any]], bool]:
    """Up to ``--limit`` records, newest first, page by page; and whether more match."""
    params = audit_filters(args, now=datetime.now(UTC))
    records: list[dict[str, Any]] = []
    token = ""
    while True:
        page_params = {**params, "pageSize": str(min(args.limit - len(records), MAX_PAGE_SIZE))}
        if token:
            page_params["pageToken"] = token
        page = remote.call(args, "GET", "/v1/accessRecords", params=page_params)
        records += page.get("accessRecords", [])
        token = page.get("nextPageToken", "")
        if not token or len(records) >= args.limit:
            return records[: args.limit], bool(token) or len(records) > args.limit


def _short_time(value: str) -> str:
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _subjects(pseudonyms: Sequence[str]) -> str:
    if len(pseudonyms) <= 1:
        return pseudonyms[0] if pseudonyms else "-"
    return f"{pseudonyms[0]} (+{len(pseudonyms) - 1})"


def audit_table(records: Sequence[dict[str, Any]]) -> list[str]:
    """The lines of the ``awareness audit`` table: a header, then one line per record."""
    rows = [
        (
            _short_time(record.get("time", "")),
            record.get("principal", "") or "-",
            record.get("action", "") or "-",
            record.get("resource", "") or "-",
            _subjects(record.get("subjectPseudonyms", [])),
            record.get("outcome", "") or "-",
            record.get("name", "").removeprefix("events/") or "-",
        )
        for record in records
    ]
    widths = [max(len(cell) for cell in column) for column in zip(AUDIT_COLUMNS, *rows, strict=True)]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in (AUDIT_COLUMNS, *rows)
    ]


def _audit(args: argparse.Namespace) -> int:
    try:
        records, more = _access_records(args)
    except remote.RemoteError as exc:
        print(f"awareness audit: {exc}", file=sys.stderr)
        return exc.exit_code
    if args.json:
        print(json.dumps({"accessRecords": records}, indent=2, ensure_ascii=False))
    else:
        print("\n".join(audit_table(records)))
    if more:
        print(
            f"awareness audit: more records match; these are the newest {len(records)} (--limit)",
            file=sys.stderr,
        )
    return 0


def _register_audit(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "audit",
        help="list access records (who read personal data or changed state) through the gateway",
        description="List access records, newest first. Each is an audit.action event of the log "
        "(its id in the EVENT column), verifiable like any other event. Needs an API key with "
        "gdpr:audit (auditor, dpo, admin).",
    )
    remote.connection_options(parser)
    parser.add_argument("--principal", default="", help="only this principal, e.g. apikey:<id>, service:gdpr")
    parser.add_argument("--action", default="", help="only this action, e.g. subject.erase or event.read")
    parser.add_argument(
        "--resource", default="", help="only this resource, e.g. events/<id> or policies/<id>"
    )
    parser.add_argument("--pseudonym", default="", help="only records about this subject pseudonym")
    parser.add_argument(
        "--since", default="", help="from this time (ISO 8601, or back from now: 30m, 24h, 7d)"
    )
    parser.add_argument("--until", default="", help="before this time (the forms of --since)")
    parser.add_argument(
        "--limit",
        type=int,
        default=AUDIT_DEFAULT_LIMIT,
        help=f"at most this many records ({AUDIT_DEFAULT_LIMIT})",
    )
    parser.add_argument("--json", action="store_true", help="print the records as the gateway's JSON")
    parser.set_defaults(handler=_audit)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("keys", help="manage the gateway's API keys")
    sub = parser.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    create = sub.add_parser("create", help="create a key and print it once")
    create.add_argument("--name", required=True, help="who or what uses the key")
    create.add_argument(
        "--role",
        required=True,
        action="append",
        help=f"a role (repeatable): {', '.join(sorted(auth.ROLES - {'service'}))}",
    )
    create.add_argument("--expires-in-days", type=int, default=None, help="expire the key after D days")
    create.set_defaults(handler=_create)
    listing = sub.add_parser("list", help="list keys (never their secrets)")
    listing.set_defaults(handler=_list)
    revoke = sub.add_parser("revoke", help="revoke a key by id")
    revoke.add_argument("key_id", metavar="ID")
    revoke.set_defaults(handler=_revoke)
    # The gateway's HTTP API for analysts, policy authors, auditors (an API key, not a service certificate).
    remote.register(subparsers)
    _register_audit(subparsers)
