"""Data access for the model registry and the shadow scores; every function takes the session explicitly."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, and_, func, insert, or_, select, update
from sqlalchemy.orm import InstrumentedAttribute, Session, undefer

from services.scoring.domain.errors import ModelIntegrityError, ModelNotFoundError
from services.scoring.models import ModelRow, ModelStatus, PromotionDecisionRow, ShadowScoreRow


@dataclass(frozen=True, slots=True)
class ActiveModel:
    """What a replica needs to decide whether to reload: which version, and the hash its bytes must have."""

    version: str
    sha256: str


@dataclass(frozen=True, slots=True)
class ActiveModels:
    champion: ActiveModel | None
    challenger: ActiveModel | None


@dataclass(frozen=True, slots=True, kw_only=True)
class ShadowScore:
    event_id: str
    champion_version: str
    challenger_version: str
    champion_score: float
    challenger_score: float
    scored_at_us: int


def _after_in_newest_first(
    time_column: InstrumentedAttribute[int], tie_column: InstrumentedAttribute[Any], before: tuple[int, Any]
) -> ColumnElement[bool]:
    """Rows after ``before`` (the last row of the previous page) in (time, tie) newest-first order."""
    moment, tie = before
    return or_(time_column < moment, and_(time_column == moment, tie_column < tie))


def now_us() -> int:
    return time.time_ns() // 1_000


def register_model(
    session: Session,
    *,
    version: str,
    onnx: bytes,
    sha256: str,
    algorithm: str,
    parameters: dict[str, Any],
    metrics: dict[str, Any],
    data_card_version: str,
    feature_schema_version: str,
    training_example_count: int,
    model_card: dict[str, Any],
    status: ModelStatus = ModelStatus.CHALLENGER,
    request_id: str | None = None,
    created_at_us: int | None = None,
) -> ModelRow:
    """Add a model. Refuses bytes that do not hash to `sha256` (nothing unverified enters the registry)."""
    if hashlib.sha256(onnx).hexdigest() != sha256:
        raise ModelIntegrityError(f"the bytes of model {version} do not hash to {sha256}; not registered")
    created = now_us() if created_at_us is None else created_at_us
    row = ModelRow(
        version=version,
        onnx=onnx,
        onnx_size_bytes=len(onnx),
        sha256=sha256,
        algorithm=algorithm,
        parameters=parameters,
        metrics=metrics,
        data_card_version=data_card_version,
        feature_schema_version=feature_schema_version,
        training_example_count=training_example_count,
        model_card=model_card,
        status=status.value,
        created_at_us=created,
        promoted_at_us=created if status is ModelStatus.CHAMPION else None,
        request_id=request_id or None,
    )
    session.add(row)
    session.flush()
    return row


def get_model(session: Session, *, version: str, with_card: bool = False) -> ModelRow:
    query = select(ModelRow).where(ModelRow.version == version)
    if with_card:
        query = query.options(undefer(ModelRow.model_card))
    row = session.scalars(query).one_or_none()
    if row is None:
        raise ModelNotFoundError(f"model models/{version} not found", metadata={"model": f"models/{version}"})
    return row


def find_model_by_sha256(session: Session, *, sha256: str) -> ModelRow | None:
    return session.scalars(select(ModelRow).where(ModelRow.sha256 == sha256)).one_or_none()


def find_model_by_request_id(session: Session, *, request_id: str) -> ModelRow | None:
    if not request_id:
        return None
    return session.scalars(select(ModelRow).where(ModelRow.request_id == request_id)).one_or_none()


def count_models(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(ModelRow)) or 0)


def list_models(
    session: Session,
    *,
    limit: int,
    status: ModelStatus | None = None,
    before: tuple[int, str] | None = None,
) -> list[ModelRow]:
    """Models newest first; `before` is the (created_at_us, version) of the last row of the previous page."""
    query = select(ModelRow)
    if status is not None:
        query = query.where(ModelRow.status == status.value)
    if before is not None:
        query = query.where(_after_in_newest_first(ModelRow.created_at_us, ModelRow.version, before))
    query = query.order_by(ModelRow.created_at_us.desc(), ModelRow.version.desc()).limit(limit)
    return list(session.scalars(query))


def active_models(session: Session) -> ActiveModels:
    """The champion and the newest challenger, without their bytes (polled every few seconds)."""
    rows = session.execute(
        select(ModelRow.version, ModelRow.sha256, ModelRow.status)
        .where(ModelRow.status.in_((ModelStatus.CHAMPION.value, ModelStatus.CHALLENGER.value)))
        .order_by(ModelRow.created_at_us.desc(), ModelRow.version.desc())
    ).all()
    champion = next((ActiveModel(v, s) for v, s, st in rows if st == ModelStatus.CHAMPION.value), None)
    challenger = next((ActiveModel(v, s) for v, s, st in rows if st == ModelStatus.CHALLENGER.value), None)
    return ActiveModels(champion=champion, challenger=challenger)


def model_bytes(session: Session, *, version: str) -> tuple[bytes, str]:
    """The stored ONNX bytes of a model and the sha256 recorded for them (the caller verifies)."""
    row = session.execute(
        select(ModelRow.onnx, ModelRow.sha256).where(ModelRow.version == version)
    ).one_or_none()
    if row is None:
        raise ModelNotFoundError(f"model models/{version} not found", metadata={"model": f"models/{version}"})
    return bytes(row[0]), str(row[1])


def promote_model(session: Session, *, version: str, at_us: int | None = None) -> tuple[ModelRow, bool]:
    """Make `version` the champion and retire the previous one, in the caller's transaction.

    Returns the row and whether anything changed (promoting the champion again is a no-op). Refuses a
    model whose stored bytes no longer hash to its recorded sha256.
    """
    row = get_model(session, version=version)
    if row.status == ModelStatus.CHAMPION.value:
        return row, False
    onnx, recorded = model_bytes(session, version=version)
    if hashlib.sha256(onnx).hexdigest() != recorded:
        raise ModelIntegrityError(
            f"the stored bytes of model {version} do not match its sha256; not promoted"
        )
    moment = now_us() if at_us is None else at_us
    # Retire first: the partial unique index admits one champion at any moment, even inside the transaction.
    session.execute(
        update(ModelRow)
        .where(ModelRow.status == ModelStatus.CHAMPION.value)
        .values(status=ModelStatus.RETIRED.value)
    )
    session.execute(
        update(ModelRow)
        .where(ModelRow.version == version)
        .values(status=ModelStatus.CHAMPION.value, promoted_at_us=moment)
    )
    session.refresh(row)
    return row, True


def record_shadow_scores(session: Session, *, scores: Sequence[ShadowScore]) -> None:
    """One multi-row INSERT for a whole batch."""
    if not scores:
        return
    session.execute(
        insert(ShadowScoreRow),
        [
            {
                "event_id": s.event_id,
                "champion_version": s.champion_version,
                "challenger_version": s.challenger_version,
                "champion_score": s.champion_score,
                "challenger_score": s.challenger_score,
                "scored_at_us": s.scored_at_us,
            }
            for s in scores
        ],
    )


def list_shadow_scores(
    session: Session, *, challenger_version: str, limit: int, before: tuple[int, int] | None = None
) -> list[ShadowScoreRow]:
    """A challenger's shadow scores, newest first; `before` is the (scored_at_us, id) of the last row seen."""
    query = select(ShadowScoreRow).where(ShadowScoreRow.challenger_version == challenger_version)
    if before is not None:
        query = query.where(_after_in_newest_first(ShadowScoreRow.scored_at_us, ShadowScoreRow.id, before))
    query = query.order_by(ShadowScoreRow.scored_at_us.desc(), ShadowScoreRow.id.desc()).limit(limit)
    return list(session.scalars(query))


@dataclass(frozen=True, slots=True)
class ShadowPair:
    event_id: str
    champion_version: str
    challenger_version: str
    challenger_score: float
    scored_at_us: int


def shadow_pairs(session: Session, *, event_ids: Sequence[str]) -> list[ShadowPair]:
    """Every shadow score of the given events (queried in chunks: an IN list stays bounded)."""
    found: list[ShadowPair] = []
    wanted = sorted(set(event_ids))
    row = ShadowScoreRow
    for start in range(0, len(wanted), 1000):
        query = select(
            row.event_id, row.champion_version, row.challenger_version, row.challenger_score, row.scored_at_us
        ).where(row.event_id.in_(wanted[start : start + 1000]))
        found.extend(ShadowPair(*values) for values in session.execute(query).tuples())
    return found


def record_decision(
    session: Session,
    *,
    challenger_version: str,
    champion_version: str,
    promoted: bool,
    reason: str,
    figures: dict[str, Any],
    decider: str,
) -> PromotionDecisionRow:
    row = PromotionDecisionRow(
        challenger_version=challenger_version,
        champion_version=champion_version,
        promoted=promoted,
        reason=reason,
        figures=figures,
        decided_at_us=now_us(),
        decider=decider,
    )
    session.add(row)
    session.flush()
    return row


def list_decisions(
    session: Session, *, challenger_version: str, limit: int, before: tuple[int, int] | None = None
) -> list[PromotionDecisionRow]:
    """A challenger's promotion decisions, newest first; `before` is the (decided_at_us, id) last seen."""
    row = PromotionDecisionRow
    query = select(row).where(row.challenger_version == challenger_version)
    if before is not None:
        query = query.where(_after_in_newest_first(row.decided_at_us, row.id, before))
    return list(session.scalars(query.order_by(row.decided_at_us.desc(), row.id.desc()).limit(limit)))
