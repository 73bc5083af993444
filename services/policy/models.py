"""Tables of the policy service: one row per policy version, an append-only history, and the active-set
generation counter that lets every replica notice approvals and retirements made elsewhere."""

from __future__ import annotations

import datetime

from sqlalchemy import JSON, BigInteger, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.runtime.db import UtcDateTime

# SQLite has no 64-bit autoincrement type of its own; INTEGER PRIMARY KEY is its rowid (already 64 bits).
BigIntegerKey = BigInteger().with_variant(Integer(), "sqlite")
# Policy ids sort bytewise on every backend (SQLite's default), so pages and evaluation order do not depend
# on the PostgreSQL server's locale.
PolicyId = String(63).with_variant(String(63, collation="C"), "postgresql")


class Base(DeclarativeBase):
    """Declarative base of the policy service's own metadata."""


class PolicyVersionRow(Base):
    """One version of one policy. The composite key is what makes a concurrent second revision fail."""

    __tablename__ = "policy_versions"

    policy_id: Mapped[str] = mapped_column(PolicyId, primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    state: Mapped[str] = mapped_column(String(16))
    title: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text)
    rule: Mapped[str] = mapped_column(Text)
    severity: Mapped[str] = mapped_column(String(16))
    author: Mapped[str] = mapped_column(String(255))
    contributors: Mapped[list[str]] = mapped_column(JSON)
    submitter: Mapped[str | None] = mapped_column(String(255))
    approver: Mapped[str | None] = mapped_column(String(255))
    reject_reason: Mapped[str | None] = mapped_column(Text)
    retire_reason: Mapped[str | None] = mapped_column(Text)
    # Idempotency key of the CreatePolicy / CreatePolicyRevision call that inserted this version.
    request_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    # Increases with every change; the etag derives from it and every UPDATE is conditional on it.
    revision: Mapped[int] = mapped_column(Integer)
    create_time: Mapped[datetime.datetime] = mapped_column(UtcDateTime)
    update_time: Mapped[datetime.datetime] = mapped_column(UtcDateTime)

    __table_args__ = (
        Index("ix_policy_versions_state", "state", "policy_id"),
        Index("ix_policy_versions_severity", "severity", "policy_id"),
    )


class PolicyHistoryRow(Base):
    """One create, edit or transition. Database triggers refuse UPDATE and DELETE on this table."""

    __tablename__ = "policy_history"

    id: Mapped[int] = mapped_column(BigIntegerKey, primary_key=True, autoincrement=True)
    policy_id: Mapped[str] = mapped_column(PolicyId)
    version: Mapped[int] = mapped_column(Integer)
    actor: Mapped[str] = mapped_column(String(255))
    time: Mapped[datetime.datetime] = mapped_column(UtcDateTime)
    action: Mapped[str] = mapped_column(String(16))
    from_state: Mapped[str | None] = mapped_column(String(16))
    to_state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    changed_fields: Mapped[list[str]] = mapped_column(JSON)

    __table_args__ = (Index("ix_policy_history_policy", "policy_id", "id"),)


class ActiveSetGenerationRow(Base):
    """A single row whose counter moves with every commit that changes the set of ACTIVE versions.

    A counter updated under the row lock is seen in commit order, unlike ``max(id)`` or ``max(update_time)``,
    so a replica that read generation N and then the active set can never miss a change for good.
    """

    __tablename__ = "policy_active_set"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    generation: Mapped[int] = mapped_column(BigInteger)
