"""Tables of the scoring service (its own SQLite file, or PostgreSQL schema ``awareness_scoring``).

* ``models``: the registry. Each row keeps the ONNX bytes themselves (so every replica sees the same
  champion without a shared volume), their sha256 (checked on every load), what produced them and how
  good they were. A partial unique index allows at most one CHAMPION.
* ``shadow_scores``: the challenger's score of an event next to the champion's, for comparison before a
  promotion.
* ``promotion_decisions``: each decision on evidence to promote a challenger or keep the champion, with
  its figures and reason (the model's history).

Times are integer microseconds since the Unix epoch (UTC): exact on both backends and easy to page on.
"""

from __future__ import annotations

import enum
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Float, Index, Integer, LargeBinary, String, Text, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

_ID = BigInteger().with_variant(Integer(), "sqlite")  # SQLite autoincrements INTEGER PRIMARY KEY only


class ModelStatus(enum.StrEnum):
    CHALLENGER = "CHALLENGER"
    CHAMPION = "CHAMPION"
    RETIRED = "RETIRED"


class Base(DeclarativeBase):
    pass


class ModelRow(Base):
    __tablename__ = "models"
    __table_args__ = (
        Index("ix_models_created", "created_at_us", "version"),
        Index("ix_models_status", "status"),
        Index(
            "uq_models_one_champion",
            "status",
            unique=True,
            sqlite_where=text("status = 'CHAMPION'"),
            postgresql_where=text("status = 'CHAMPION'"),
        ),
    )

    # The model version (e.g. `2026.01.06-rf-1a2b3c4d5e6f`) is also its resource id: `models/{version}`.
    version: Mapped[str] = mapped_column(String(64), primary_key=True)
    # Deferred: listing models never drags megabytes of ONNX along.
    onnx: Mapped[bytes] = mapped_column(LargeBinary, deferred=True)
    onnx_size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    algorithm: Mapped[str] = mapped_column(String(64))
    parameters: Mapped[dict[str, Any]] = mapped_column(JSON)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    data_card_version: Mapped[str] = mapped_column(String(64))
    feature_schema_version: Mapped[str] = mapped_column(String(64))
    training_example_count: Mapped[int] = mapped_column(BigInteger)
    model_card: Mapped[dict[str, Any]] = mapped_column(JSON, deferred=True)
    status: Mapped[str] = mapped_column(String(16))
    created_at_us: Mapped[int] = mapped_column(BigInteger)
    promoted_at_us: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # Idempotency key of the TrainModel call that registered it.
    request_id: Mapped[str | None] = mapped_column(String(128), unique=True, nullable=True)


class ShadowScoreRow(Base):
    __tablename__ = "shadow_scores"
    __table_args__ = (
        Index("ix_shadow_scores_challenger", "challenger_version", "scored_at_us", "id"),
        # Model health joins analysts' labels to the shadow scores of the same events.
        Index("ix_shadow_scores_event", "event_id"),
    )

    id: Mapped[int] = mapped_column(_ID, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(128))
    champion_version: Mapped[str] = mapped_column(String(64))
    challenger_version: Mapped[str] = mapped_column(String(64))
    champion_score: Mapped[float] = mapped_column(Float)
    challenger_score: Mapped[float] = mapped_column(Float)
    scored_at_us: Mapped[int] = mapped_column(BigInteger)


class PromotionDecisionRow(Base):
    __tablename__ = "promotion_decisions"
    __table_args__ = (
        Index("ix_promotion_decisions_challenger", "challenger_version", "decided_at_us", "id"),
    )

    id: Mapped[int] = mapped_column(_ID, primary_key=True, autoincrement=True)
    challenger_version: Mapped[str] = mapped_column(String(64))
    champion_version: Mapped[str] = mapped_column(String(64))
    promoted: Mapped[bool] = mapped_column(Boolean)
    reason: Mapped[str] = mapped_column(Text)
    # labelled_events, champion_f1, challenger_f1, f1_difference_lower/upper, champion_psi(_on).
    figures: Mapped[dict[str, Any]] = mapped_column(JSON)
    decided_at_us: Mapped[int] = mapped_column(BigInteger)
    decider: Mapped[str] = mapped_column(String(256))
