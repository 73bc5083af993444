"""Tables of the signing service: an append-only audit trail of what it signed.

No private key is ever stored here (keys live in the PKI directory); these rows record every
RFC 3161 token issued, every checkpoint signed and every key rotation, so an auditor can list
them and so a time-stamp serial number can never be issued twice (the unique constraint).
Database triggers (see the first migration) refuse UPDATE and DELETE on every table.
"""

from __future__ import annotations

import datetime

from sqlalchemy import BigInteger, Index, Integer, LargeBinary, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.runtime.db import UtcDateTime

# SQLite has no 64-bit autoincrement type of its own; INTEGER PRIMARY KEY is its rowid (already 64 bits).
BigIntegerKey = BigInteger().with_variant(Integer(), "sqlite")

APPEND_ONLY_TABLES = ("timestamp_tokens", "signed_checkpoints", "key_rotations")


class Base(DeclarativeBase):
    """Declarative base of the signing service's own metadata."""


class TimestampTokenRow(Base):
    """One RFC 3161 token, issued by the internal TSA or obtained from the upstream one.

    ``(tsa, serial_hex)`` is unique: the internal TSA (``tsa = 'internal'``) can never reuse a
    serial, and an upstream TSA's serials are only compared with its own.
    """

    __tablename__ = "timestamp_tokens"
    __table_args__ = (Index("uq_timestamp_tokens_tsa_serial", "tsa", "serial_hex", unique=True),)

    id: Mapped[int] = mapped_column(BigIntegerKey, primary_key=True, autoincrement=True)
    serial_hex: Mapped[str] = mapped_column(String(64))  # at most 160 bits in RFC 3161, hex, lowercase
    gen_time: Mapped[datetime.datetime] = mapped_column(UtcDateTime)
    hash_algorithm: Mapped[str] = mapped_column(String(16))
    message_imprint: Mapped[bytes] = mapped_column(LargeBinary)
    policy_oid: Mapped[str] = mapped_column(String(255))
    tsa: Mapped[str] = mapped_column(String(512))  # "internal" or the upstream TSA's URL
    key_id: Mapped[str] = mapped_column(String(64))  # signer key id; empty when the upstream sent no cert
    purpose: Mapped[str] = mapped_column(String(16))  # "request" (Timestamp RPC) or "checkpoint"
    recorded_at: Mapped[datetime.datetime] = mapped_column(UtcDateTime)


class SignedCheckpointRow(Base):
    """One signed checkpoint, with the RFC 3161 token over its note when one was obtained."""

    __tablename__ = "signed_checkpoints"
    __table_args__ = (Index("ix_signed_checkpoints_origin_size", "origin", "tree_size"),)

    id: Mapped[int] = mapped_column(BigIntegerKey, primary_key=True, autoincrement=True)
    origin: Mapped[str] = mapped_column(String(255))
    tree_size: Mapped[int] = mapped_column(BigInteger)
    root_hash: Mapped[bytes] = mapped_column(LargeBinary)
    key_id: Mapped[str] = mapped_column(String(64))
    signed_at: Mapped[datetime.datetime] = mapped_column(UtcDateTime)
    note: Mapped[str] = mapped_column(Text)
    tsa: Mapped[str] = mapped_column(String(512))  # empty when no TSA answered
    timestamp_serial_hex: Mapped[str] = mapped_column(String(64))
    timestamp_token: Mapped[bytes] = mapped_column(LargeBinary)


class KeyRotationRow(Base):
    """One key rotation; ``request_id`` makes a retried RotateKey return the first result."""

    __tablename__ = "key_rotations"

    id: Mapped[int] = mapped_column(BigIntegerKey, primary_key=True, autoincrement=True)
    request_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    purpose: Mapped[str] = mapped_column(String(16))
    new_key_id: Mapped[str] = mapped_column(String(64))
    previous_key_id: Mapped[str] = mapped_column(String(64))  # empty when there was none
    rotated_by: Mapped[str] = mapped_column(String(255))
    rotated_at: Mapped[datetime.datetime] = mapped_column(UtcDateTime)
