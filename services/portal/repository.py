"""Typed data access for portal sessions, in the gateway's store; every function takes the session
explicitly."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete
from sqlalchemy.orm import Session

from services.gateway.models import PortalSession


@dataclass(frozen=True, slots=True)
class SessionRecord:
    token_hash: str
    subject: str
    roles: frozenset[str]
    key_id: str | None
    csrf_token: str
    created_at: datetime
    last_seen_at: datetime


def _record(row: PortalSession) -> SessionRecord:
    return SessionRecord(
        token_hash=row.token_hash,
        subject=row.subject,
        roles=frozenset(role for role in row.roles.split(",") if role),
        key_id=row.key_id,
        csrf_token=row.csrf_token,
        created_at=row.created_at,
        last_seen_at=row.last_seen_at,
    )


def add_session(
    session: Session,
    *,
    token_hash: str,
    subject: str,
    roles: Iterable[str],
    key_id: str | None,
    csrf_token: str,
    now: datetime,
) -> SessionRecord:
    row = PortalSession(
        token_hash=token_hash,
        subject=subject,
        roles=",".join(sorted(set(roles))),
        key_id=key_id,
        csrf_token=csrf_token,
        created_at=now,
        last_seen_at=now,
    )
    session.add(row)
    session.flush()
    return _record(row)


def find_session(session: Session, *, token_hash: str) -> SessionRecord | None:
    row = session.get(PortalSession, token_hash)
    return _record(row) if row is not None else None


def touch_session(session: Session, *, token_hash: str, now: datetime) -> None:
    row = session.get(PortalSession, token_hash)
    if row is not None:
        row.last_seen_at = now
        session.flush()


def delete_session(session: Session, *, token_hash: str) -> None:
    session.execute(delete(PortalSession).where(PortalSession.token_hash == token_hash))


def delete_sessions_before(session: Session, *, created_before: datetime, idle_before: datetime) -> int:
    """Drop every session past its absolute or idle timeout; how many went."""
    result = session.execute(
        delete(PortalSession).where(
            (PortalSession.created_at < created_before) | (PortalSession.last_seen_at < idle_before)
        )
    )
    return int(getattr(result, "rowcount", 0) or 0)
