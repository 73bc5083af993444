"""Data access for issued reports (the ``reports`` table of services/analytics/report_models.py)."""

from __future__ import annotations

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session, defer

from services.analytics.report_models import ReportRow


def add_report(session: Session, row: ReportRow) -> ReportRow:
    session.add(row)
    session.flush()
    session.expunge(row)
    return row


def get_report(session: Session, report_id: str, *, with_content: bool) -> ReportRow | None:
    query = select(ReportRow).where(ReportRow.report_id == report_id)
    if not with_content:
        query = query.options(defer(ReportRow.content))
    row = session.scalars(query).first()
    if row is not None:
        session.expunge(row)
    return row


def report_for_request(session: Session, request_id: str) -> ReportRow | None:
    """The report a CreateReport with this idempotency key issued, without its bytes."""
    row = session.scalars(
        select(ReportRow).options(defer(ReportRow.content)).where(ReportRow.request_id == request_id)
    ).first()
    if row is not None:
        session.expunge(row)
    return row


def list_reports(
    session: Session, *, limit: int, before: tuple[int, str] | None, sha256: str | None
) -> list[ReportRow]:
    """Reports newest first (created time, then id), after ``before`` (the previous page's last row),
    without their bytes; only those of one file when ``sha256`` is given."""
    query = (
        select(ReportRow)
        .options(defer(ReportRow.content))
        .order_by(ReportRow.created_us.desc(), ReportRow.report_id.desc())
    )
    if sha256 is not None:
        query = query.where(ReportRow.sha256 == sha256)
    if before is not None:
        moment, report_id = before
        query = query.where(
            or_(
                ReportRow.created_us < moment,
                and_(ReportRow.created_us == moment, ReportRow.report_id < report_id),
            )
        )
    rows = list(session.scalars(query.limit(limit)).all())
    for row in rows:
        session.expunge(row)
    return rows
