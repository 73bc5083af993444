"""Tables of the ingest service: the append-only log and the mutable metadata beside it.

Append-only (database triggers, created by the migrations, refuse UPDATE and DELETE):
``event_records`` (what was received, personal fields sealed), ``leaves`` (gap-free leaf indices,
written only by the integrator), ``tree_nodes`` (the Merkle node store), ``checkpoints`` and
``access_records`` (the index of the ``audit.action`` events, written with them).
``event_metadata`` is what was concluded about an event (scores, violations, labels) and may change.

Times are stored as integer microseconds since the Unix epoch (UTC): exact, portable between SQLite
and PostgreSQL, and exactly what the canonical record encoding needs to be recomputed.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Index, Integer, LargeBinary, SmallInteger, String, Text, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a BIGINT identity.
BigIntegerKey = BigInteger().with_variant(Integer(), "sqlite")

APPEND_ONLY_TABLES = ("event_records", "leaves", "tree_nodes", "checkpoints", "access_records")


class Base(DeclarativeBase):
    pass


class EventRecord(Base):
    """One received event as stored in the log: the Merkle leaf covers exactly these values."""

    __tablename__ = "event_records"

    # Insert order; the integrator assigns leaf indices in this order.
    seq: Mapped[int] = mapped_column(BigIntegerKey, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(36), unique=True, nullable=False)
    type: Mapped[str] = mapped_column(String(64), nullable=False)
    source: Mapped[str] = mapped_column(String(256), nullable=False)
    occurred_at_us: Mapped[int] = mapped_column(BigInteger, nullable=False)
    severity: Mapped[int] = mapped_column(SmallInteger, nullable=False)
    subject_pseudonym: Mapped[str] = mapped_column(String(128), nullable=False)
    # Empty for system events, which carry no personal data and are not encrypted.
    key_period: Mapped[str] = mapped_column(String(32), nullable=False)
    key_id: Mapped[str] = mapped_column(String(128), nullable=False)
    nonce: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    receive_time_us: Mapped[int] = mapped_column(BigInteger, nullable=False)
    # HMAC of the submitted content (idempotency), keyed with the subject's data key and the server
    # secret: it confirms no guess of personal data, and none at all once the key is shredded.
    content_fingerprint: Mapped[str] = mapped_column(String(64), nullable=False)
    leaf_hash: Mapped[bytes] = mapped_column(LargeBinary(32), nullable=False)
    record_version: Mapped[int] = mapped_column(SmallInteger, nullable=False, default=1)
    # Non-personal summary/details of system events (JSON); NULL for every client event.
    system_payload: Mapped[str | None] = mapped_column(Text, nullable=True)
    # A client event's dimensions, non-personal detail values in clear (canonical JSON; record
    # version 3); NULL when it has none and for system events.
    dimensions: Mapped[str | None] = mapped_column(Text, nullable=True)


class Leaf(Base):
    """The leaf index the integrator gave an event; indices are gap-free from 0."""

    __tablename__ = "leaves"

    leaf_index: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    event_id: Mapped[str] = mapped_column(String(36), nullable=False)
    seq: Mapped[int] = mapped_column(BigInteger, nullable=False)
    leaf_hash: Mapped[bytes] = mapped_column(LargeBinary(32), nullable=False)
    integrate_time_us: Mapped[int] = mapped_column(BigInteger, nullable=False)

    # One leaf per record. Unique on seq, not event_id (migration 0003): seqs arrive in order, so
    # the index grows at its right edge, where random event ids would touch a random page per leaf.
    __table_args__ = (Index("uq_leaves_seq", "seq", unique=True),)


class TreeNode(Base):
    """A perfect-subtree hash above repository.COMPUTED_LEVELS (level-0 nodes are the leaf hashes in
    ``leaves``; the levels between are computed from them when read)."""

    __tablename__ = "tree_nodes"

    level: Mapped[int] = mapped_column(SmallInteger, primary_key=True, autoincrement=False)
    index: Mapped[int] = mapped_column("idx", BigInteger, primary_key=True, autoincrement=False)
    hash: Mapped[bytes] = mapped_column(LargeBinary(32), nullable=False)


class Checkpoint(Base):
    """A checkpoint signed by the signing service (C2SP signed note) with its RFC 3161 token."""

    __tablename__ = "checkpoints"

    tree_size: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    origin: Mapped[str] = mapped_column(String(256), nullable=False)
    root_hash: Mapped[bytes] = mapped_column(LargeBinary(32), nullable=False)
    note: Mapped[str] = mapped_column(Text, nullable=False)
    key_id: Mapped[str] = mapped_column(String(256), nullable=False)
    signed_time_us: Mapped[int] = mapped_column(BigInteger, nullable=False)
    timestamp_token: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    tsa: Mapped[str] = mapped_column(String(512), nullable=False)
    store_time_us: Mapped[int] = mapped_column(BigInteger, nullable=False)


class EventMetadata(Base):
    """Mutable judgement of an event, with the non-personal fields the history aggregates need."""

    __tablename__ = "event_metadata"

    event_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    subject_pseudonym: Mapped[str] = mapped_column(String(128), nullable=False)
    type: Mapped[str] = mapped_column(String(64), nullable=False)
    source: Mapped[str] = mapped_column(String(256), nullable=False)
    occurred_at_us: Mapped[int] = mapped_column(BigInteger, nullable=False)
    receive_time_us: Mapped[int] = mapped_column(BigInteger, nullable=False)
    severity: Mapped[int] = mapped_column(SmallInteger, nullable=False)
    summary_length: Mapped[int] = mapped_column(Integer, nullable=False)
    detail_count: Mapped[int] = mapped_column(Integer, nullable=False)
    risk_score: Mapped[float | None] = mapped_column(nullable=True)
    risk_level: Mapped[int] = mapped_column(SmallInteger, nullable=False, default=0)
    model_version: Mapped[str] = mapped_column(String(128), nullable=False, default="")
    scoring_state: Mapped[int] = mapped_column(SmallInteger, nullable=False)
    scoring_note: Mapped[str] = mapped_column(Text, nullable=False, default="")
    # JSON of the feature values the model scored (no personal data); set with the score.
    features: Mapped[str] = mapped_column(Text, nullable=False, default="{}", server_default="{}")
    violations: Mapped[str] = mapped_column(Text, nullable=False, default="[]")
    violation_count: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    evaluation_state: Mapped[int] = mapped_column(SmallInteger, nullable=False)
    evaluation_note: Mapped[str] = mapped_column(Text, nullable=False, default="")
    label: Mapped[int] = mapped_column(SmallInteger, nullable=False, default=0)
    label_note: Mapped[str] = mapped_column(Text, nullable=False, default="")
    triage_state: Mapped[int] = mapped_column(SmallInteger, nullable=False)
    labeled_by: Mapped[str] = mapped_column(String(256), nullable=False, default="")
    label_time_us: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    update_time_us: Mapped[int] = mapped_column(BigInteger, nullable=False)
    # The subject's department from gdpr's directory when the event was appended ('' when unknown):
    # the group analytics counts the event in.
    department: Mapped[str] = mapped_column(String(128), nullable=False, default="", server_default="")
    # Whether the event's facts reached analytics (services/ingest/analytics_feed.py).
    analytics_state: Mapped[int] = mapped_column(
        SmallInteger, nullable=False, default=1, server_default=text("1")
    )

    __table_args__ = (
        Index("ix_event_metadata_subject_time", "subject_pseudonym", "occurred_at_us"),
        Index("ix_event_metadata_received", "receive_time_us", "event_id"),
        # The riskiest-first list (ListEvents order_by "risk_score desc"), read backwards.
        Index("ix_event_metadata_risk", "risk_score", "receive_time_us", "event_id"),
        # Only labelled events (label <> 0): unlabelled ones are never looked up by label.
        Index(
            "ix_event_metadata_label",
            "label",
            postgresql_where=text("label <> 0"),
            sqlite_where=text("label <> 0"),
        ),
        Index("ix_event_metadata_pending", "scoring_state", "evaluation_state"),
        # Only events still to be sent to analytics, oldest first.
        Index(
            "ix_event_metadata_analytics_pending",
            "receive_time_us",
            postgresql_where=text("analytics_state = 1"),
            sqlite_where=text("analytics_state = 1"),
        ),
    )


class ForgottenSubject(Base):
    """A ForgetSubject call, recorded so that every replica drops its cached keys of the pseudonym
    (the call itself reaches one). Kept only as long as a cached key could live."""

    __tablename__ = "forgotten_subjects"

    seq: Mapped[int] = mapped_column(BigIntegerKey, primary_key=True, autoincrement=True)
    pseudonym: Mapped[str] = mapped_column(String(128), nullable=False)
    recorded_us: Mapped[int] = mapped_column(BigInteger, nullable=False)

    __table_args__ = (Index("ix_forgotten_subjects_recorded", "recorded_us"),)


class AccessRecordIndex(Base):
    """The index of the access records (``audit.action`` system events), written in the transaction
    that stores the event: one row per (event, pseudonym), pseudonym '' when none is concerned.

    ``ordinal`` is the pseudonym's position in the record: a list without a pseudonym filter reads
    the rows of ordinal 0 only, one per record. Every index ends in (time_us, event_id), the order
    ListAccessRecords pages in (newest first).
    """

    __tablename__ = "access_records"

    event_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    pseudonym: Mapped[str] = mapped_column(String(128), primary_key=True)
    ordinal: Mapped[int] = mapped_column(Integer, nullable=False)
    principal: Mapped[str] = mapped_column(String(256), nullable=False)
    action: Mapped[str] = mapped_column(String(64), nullable=False)
    resource: Mapped[str] = mapped_column(String(256), nullable=False)
    outcome: Mapped[str] = mapped_column(String(64), nullable=False)
    # The service that recorded it (the event's source).
    service: Mapped[str] = mapped_column(String(256), nullable=False)
    # When the call finished (the event's occurred_at).
    time_us: Mapped[int] = mapped_column(BigInteger, nullable=False)

    __table_args__ = (
        Index("ix_access_records_time", "ordinal", "time_us", "event_id"),
        Index("ix_access_records_principal", "principal", "ordinal", "time_us", "event_id"),
        Index("ix_access_records_action", "action", "ordinal", "time_us", "event_id"),
        Index("ix_access_records_resource", "resource", "ordinal", "time_us", "event_id"),
        Index("ix_access_records_pseudonym", "pseudonym", "time_us", "event_id"),
    )
