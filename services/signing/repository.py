"""Data access for the signing audit trail: keyword-only functions taking the session explicitly.

Every table is append-only (the database refuses UPDATE and DELETE), so there are only inserts
and reads. An insert that collides with a unique constraint raises ``IntegrityError``; callers
retry with a new serial (time-stamp tokens) or return the first result (key rotations).
"""

from __future__ import annotations

import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from services.signing.domain.tsa import IssuedToken
from services.signing.models import KeyRotationRow, SignedCheckpointRow, TimestampTokenRow

INTERNAL_TSA = "internal"


def record_timestamp_token(
    session: Session, *, token: IssuedToken, tsa: str, purpose: str, recorded_at: datetime.datetime
) -> TimestampTokenRow:
    row = TimestampTokenRow(
        serial_hex=token.serial_hex,
        gen_time=token.gen_time,
        hash_algorithm=token.hash_algorithm,
        message_imprint=token.hashed_message,
        policy_oid=token.policy_oid,
        tsa=tsa,
        key_id=token.signer_key_id,
        purpose=purpose,
        recorded_at=recorded_at,
    )
    session.add(row)
    session.flush()  # the unique (tsa, serial) check happens here, inside the caller's transaction
    return row


def record_checkpoint(
    session: Session,
    *,
    origin: str,
    tree_size: int,
    root_hash: bytes,
    key_id: str,
    signed_at: datetime.datetime,
    note: str,
    tsa: str,
    token: IssuedToken | None,
) -> SignedCheckpointRow:
    """The checkpoint and, when there is one, its token row, in the caller's transaction."""
    if token is not None:
        record_timestamp_token(session, token=token, tsa=tsa, purpose="checkpoint", recorded_at=signed_at)
    row = SignedCheckpointRow(
        origin=origin,
        tree_size=tree_size,
        root_hash=root_hash,
        key_id=key_id,
        signed_at=signed_at,
        note=note,
        tsa=tsa if token is not None else "",
        timestamp_serial_hex=token.serial_hex if token is not None else "",
        timestamp_token=token.token if token is not None else b"",
    )
    session.add(row)
    session.flush()
    return row


def find_checkpoint(
    session: Session, *, origin: str, tree_size: int, root_hash: bytes, key_id: str
) -> SignedCheckpointRow | None:
    """The latest checkpoint with exactly these values signed by ``key_id`` (a retried request)."""
    statement = (
        select(SignedCheckpointRow)
        .where(
            SignedCheckpointRow.origin == origin,
            SignedCheckpointRow.tree_size == tree_size,
            SignedCheckpointRow.root_hash == root_hash,
            SignedCheckpointRow.key_id == key_id,
        )
        .order_by(SignedCheckpointRow.id.desc())
        .limit(1)
    )
    return session.scalars(statement).first()


def list_checkpoints(session: Session, *, origin: str, limit: int = 100) -> list[SignedCheckpointRow]:
    """The most recent checkpoints of a log, newest first."""
    statement = (
        select(SignedCheckpointRow)
        .where(SignedCheckpointRow.origin == origin)
        .order_by(SignedCheckpointRow.id.desc())
        .limit(limit)
    )
    return list(session.scalars(statement))


def list_timestamp_tokens(
    session: Session, *, tsa: str | None = None, limit: int = 100
) -> list[TimestampTokenRow]:
    """The most recent token records, newest first; only one TSA's when ``tsa`` is given."""
    statement = select(TimestampTokenRow).order_by(TimestampTokenRow.id.desc()).limit(limit)
    if tsa is not None:
        statement = statement.where(TimestampTokenRow.tsa == tsa)
    return list(session.scalars(statement))


def count_timestamp_tokens(session: Session, *, tsa: str | None = None) -> int:
    statement = select(func.count()).select_from(TimestampTokenRow)
    if tsa is not None:
        statement = statement.where(TimestampTokenRow.tsa == tsa)
    return int(session.scalar(statement) or 0)


def find_rotation(session: Session, *, request_id: str) -> KeyRotationRow | None:
    return session.scalars(select(KeyRotationRow).where(KeyRotationRow.request_id == request_id)).first()


def record_rotation(
    session: Session,
    *,
    request_id: str | None,
    purpose: str,
    new_key_id: str,
    previous_key_id: str,
    rotated_by: str,
    rotated_at: datetime.datetime,
) -> KeyRotationRow:
    row = KeyRotationRow(
        request_id=request_id or None,
        purpose=purpose,
        new_key_id=new_key_id,
        previous_key_id=previous_key_id,
        rotated_by=rotated_by,
        rotated_at=rotated_at,
    )
    session.add(row)
    session.flush()
    return row
