"""Tables of the gdpr service (its own SQLite file, or PostgreSQL schema ``awareness_gdpr``).

Two kinds of table:

* deletable on purpose: ``subjects`` (the keyed lookup -> pseudonym link) and ``data_keys`` (with
  ``data_key_event_types``). Deleting their rows IS the erasure (crypto-shredding). The organisation's
  directory, ``directory_entries`` (department and manager by pseudonym), goes with them.
* append-only, guarded by database triggers that refuse UPDATE and DELETE (see the first migration):
  ``consent_records``, ``retention_runs``, ``kek_rotations``, ``audit_records`` and ``erasure_records``
  (whose two outcome columns, ``events_affected`` and ``log_event_id``, are write-once: they may go from
  NULL to a value, never change afterwards).

No table holds a subject identifier: only its HMAC (``subjects.lookup_hash``) until erasure.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.runtime.db import UtcDateTime


class Base(DeclarativeBase):
    pass


class Subject(Base):
    """A data subject: the keyed lookup of its identifier and its random pseudonym."""

    __tablename__ = "subjects"

    pseudonym: Mapped[str] = mapped_column(String(64), primary_key=True)
    lookup_hash: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class DataKey(Base):
    """One subject's AES-256 data key for one period, wrapped under a KEK (AES-256-GCM)."""

    __tablename__ = "data_keys"
    __table_args__ = (UniqueConstraint("pseudonym", "period", name="uq_data_keys_pseudonym_period"),)

    key_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    pseudonym: Mapped[str] = mapped_column(String(64), ForeignKey("subjects.pseudonym"), index=True)
    # No index of its own: see migration 0003.
    period: Mapped[str] = mapped_column(String(16))
    kek_id: Mapped[str] = mapped_column(String(64), index=True)
    nonce: Mapped[bytes] = mapped_column(LargeBinary(12))
    wrapped: Mapped[bytes] = mapped_column(LargeBinary(64))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    rewrapped_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)


class DataKeyEventType(Base):
    """An event type encrypted under a data key: retention keeps the key for the longest of them."""

    __tablename__ = "data_key_event_types"

    key_id: Mapped[str] = mapped_column(String(64), ForeignKey("data_keys.key_id"), primary_key=True)
    event_type: Mapped[str] = mapped_column(String(128), primary_key=True)


class ConsentRecordRow(Base):
    """One grant or withdrawal (append-only history)."""

    __tablename__ = "consent_records"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"), primary_key=True)
    pseudonym: Mapped[str] = mapped_column(String(64), index=True)
    purpose: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(16))
    at: Mapped[datetime] = mapped_column(UtcDateTime())
    actor: Mapped[str] = mapped_column(String(256))
    reason: Mapped[str] = mapped_column(Text, default="")
    request_id: Mapped[str | None] = mapped_column(String(128), unique=True, nullable=True)


class RetentionRuleRow(Base):
    """Retention of one event type in days ('' is the default rule; 0 days keeps until erasure)."""

    __tablename__ = "retention_rules"

    event_type: Mapped[str] = mapped_column(String(128), primary_key=True)
    retention_days: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())
    actor: Mapped[str] = mapped_column(String(256))


class RetentionRunRow(Base):
    """One ApplyRetention run and its report (append-only)."""

    __tablename__ = "retention_runs"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"), primary_key=True)
    request_id: Mapped[str | None] = mapped_column(String(128), unique=True, nullable=True)
    dry_run: Mapped[bool] = mapped_column(Boolean)
    run_time: Mapped[datetime] = mapped_column(UtcDateTime())
    actor: Mapped[str] = mapped_column(String(256))
    keys_shredded: Mapped[int] = mapped_column(BigInteger)
    report: Mapped[str] = mapped_column(Text)


class KekRotationRow(Base):
    """One KEK rotation (append-only)."""

    __tablename__ = "kek_rotations"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"), primary_key=True)
    request_id: Mapped[str | None] = mapped_column(String(128), unique=True, nullable=True)
    kek_id: Mapped[str] = mapped_column(String(64))
    keys_rewrapped: Mapped[int] = mapped_column(BigInteger)
    retired_kek_ids: Mapped[str] = mapped_column(Text, default="")
    actor: Mapped[str] = mapped_column(String(256))
    at: Mapped[datetime] = mapped_column(UtcDateTime())


class ErasureRecordRow(Base):
    """Proof of one erasure; holds no personal data. Core columns immutable, outcomes write-once."""

    __tablename__ = "erasure_records"

    erasure_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    pseudonym: Mapped[str] = mapped_column(String(64), index=True)
    erase_time: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)
    actor: Mapped[str] = mapped_column(String(256))
    reason: Mapped[str] = mapped_column(Text)
    request_id: Mapped[str] = mapped_column(String(128), unique=True)
    keys_shredded: Mapped[int] = mapped_column(BigInteger)
    events_affected: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    log_event_id: Mapped[str | None] = mapped_column(String(64), nullable=True)


class ErasureLogAttempt(Base):
    """Retry bookkeeping of an erasure's log append (mutable; deleted once the append succeeded)."""

    __tablename__ = "erasure_log_attempts"

    erasure_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("erasure_records.erasure_id"), primary_key=True
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str] = mapped_column(Text, default="")
    last_attempt_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)


class AuditRecordRow(Base):
    """One entry of the hash-chained audit trail (append-only; see services.gdpr.domain.audit)."""

    __tablename__ = "audit_records"

    sequence: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"), primary_key=True)
    actor: Mapped[str] = mapped_column(String(256), index=True)
    action: Mapped[str] = mapped_column(String(64), index=True)
    target: Mapped[str] = mapped_column(String(256))
    at: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)
    reason: Mapped[str] = mapped_column(Text)
    request_id: Mapped[str] = mapped_column(String(128))
    prev_hash: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    entry_hash: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)


class DirectoryEntryRow(Base):
    """One person's place in the organisation, from the imported directory: keyed by pseudonym, never by
    identifier. Organisational data, deletable: erasure removes the person's row and blanks them as
    anyone's manager; a full-sync import removes the people it no longer lists."""

    __tablename__ = "directory_entries"

    pseudonym: Mapped[str] = mapped_column(String(64), ForeignKey("subjects.pseudonym"), primary_key=True)
    # A group name (k-anonymised in aggregates downstream); "" when the directory gives none.
    department: Mapped[str] = mapped_column(String(128), default="", index=True)
    manager_pseudonym: Mapped[str | None] = mapped_column(
        String(64), ForeignKey("subjects.pseudonym"), nullable=True, index=True
    )
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())
    # The import (a client-chosen id over several calls) that last listed the person; what a full
    # sync sent in chunks compares to find the people it no longer lists.
    import_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
