"""Typed data access for API keys; every function takes the session explicitly."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.gateway.models import ApiKey


@dataclass(frozen=True, slots=True)
class KeyRecord:
    key_id: str
    name: str
    secret_hash: str
    roles: frozenset[str]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None

    def usable(self, *, now: datetime) -> bool:
        if self.revoked_at is not None:
            return False
        return self.expires_at is None or _aware(self.expires_at) > now


def _aware(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; everything is stored in UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _record(row: ApiKey) -> KeyRecord:
    return KeyRecord(
        key_id=row.key_id,
        name=row.name,
        secret_hash=row.secret_hash,
        roles=frozenset(r for r in row.roles.split(",") if r),
        created_at=_aware(row.created_at),
        expires_at=_aware(row.expires_at) if row.expires_at else None,
        revoked_at=_aware(row.revoked_at) if row.revoked_at else None,
    )


def add_key(
    session: Session,
    *,
    key_id: str,
    name: str,
    secret_hash: str,
    roles: Sequence[str],
    created_at: datetime,
    expires_at: datetime | None,
) -> KeyRecord:
    row = ApiKey(
        key_id=key_id,
        name=name,
        secret_hash=secret_hash,
        roles=",".join(sorted(set(roles))),
        created_at=created_at,
        expires_at=expires_at,
        revoked_at=None,
    )
    session.add(row)
    session.flush()
    return _record(row)


def find_key(session: Session, *, key_id: str) -> KeyRecord | None:
    row = session.get(ApiKey, key_id)
    return _record(row) if row is not None else None


def list_keys(session: Session) -> list[KeyRecord]:
    rows = session.scalars(select(ApiKey).order_by(ApiKey.created_at, ApiKey.key_id))
    return [_record(row) for row in rows]


def revoke_key(session: Session, *, key_id: str, now: datetime) -> KeyRecord | None:
    """Mark the key revoked (idempotent: the first revocation time is kept)."""
    row = session.get(ApiKey, key_id)
    if row is None:
        return None
    if row.revoked_at is None:
        row.revoked_at = now
        session.flush()
    return _record(row)
