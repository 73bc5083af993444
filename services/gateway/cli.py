"""``awareness keys``: create, list and revoke the gateway's API keys; ``events`` and ``policies``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy.orm import Session

from services.gateway import remote, repository
from services.gateway.config import KEY_CACHE_SECONDS_DEFAULT, KEY_CACHE_SECONDS_VAR
from services.gateway.domain import keys
from services.runtime import auth, db, migrations
from services.runtime.config import env_float, load_settings

T = TypeVar("T")


def _with_session(work: Callable[[Session], T]) -> T:
    settings = load_settings("gateway")
    engine = db.create_db_engine(settings.database_url, service="gateway")
    try:
        migrations.upgrade("gateway", engine)
        with db.transaction(db.session_factory(engine)) as session:
            return work(session)
    finally:
        engine.dispose()


def _create(args: argparse.Namespace) -> int:
    try:
        roles = auth.parse_roles(args.role)
    except ValueError as exc:
        print(f"awareness keys create: {exc}", file=sys.stderr)
        return 2
    if "service" in roles:
        print("awareness keys create: the 'service' role is for services only", file=sys.stderr)
        return 2
    if args.expires_in_days is not None and args.expires_in_days <= 0:
        print("awareness keys create: --expires-in-days must be positive", file=sys.stderr)
        return 2
    new_key = keys.generate_key()
    now = datetime.now(UTC)
    expires = now + timedelta(days=args.expires_in_days) if args.expires_in_days is not None else None
    record = _with_session(
        lambda session: repository.add_key(
            session,
            key_id=new_key.key_id,
            name=args.name,
            secret_hash=keys.hash_secret(new_key.secret),
            roles=sorted(roles),
            created_at=now,
            expires_at=expires,
        )
    )
    print(new_key.token)
    print(
        f"created key {record.key_id} ({record.name}; roles {', '.join(sorted(record.roles))}"
        f"{'; expires ' + record.expires_at.isoformat() if record.expires_at else ''}). "
        "It is shown only this once: store it now.",
        file=sys.stderr,
    )
    return 0


def _state(record: repository.KeyRecord, now: datetime) -> str:
    if record.revoked_at is not None:
        return "revoked"
    return "active" if record.usable(now=now) else "expired"


def _list(_args: argparse.Namespace) -> int:
    records = _with_session(repository.list_keys)
    now = datetime.now(UTC)
    print(f"{'ID':<16}  {'NAME':<24}  {'ROLES':<28}  {'STATE':<8}  {'CREATED':<25}  EXPIRES")
    for r in records:
        expires = r.expires_at.isoformat(timespec="seconds") if r.expires_at else "never"
        print(
            f"{r.key_id:<16}  {r.name[:24]:<24}  {','.join(sorted(r.roles))[:28]:<28}  {_state(r, now):<8}  "
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
    cache_seconds = env_float(load_settings("gateway").env, KEY_CACHE_SECONDS_VAR, KEY_CACHE_SECONDS_DEFAULT)
    if cache_seconds > 0:
        # Gateways cache verified keys; say when the revocation is certain to be everywhere.
        print(f"gateways that verified it recently accept it for up to {cache_seconds:g} s more (key cache)")
    return 0


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
    # The gateway's HTTP API for analysts and policy authors (an API key, not a service certificate).
    remote.register(subparsers)
