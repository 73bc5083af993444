"""The ``reports`` table of the analytics service: each issued weekly report and its evidence.

On the rollups' declarative ``Base`` (services/analytics/models.py), so that the service keeps one
metadata; ``migrations/env.py`` imports this module beside it. A row holds the exact bytes issued
(a report is well under 1 MB), their SHA-256, the RFC 3161 token over that digest (DER) and the id of
the ``report.issued`` event that put both in the log. A report holds aggregates and pseudonyms only;
``created_by`` is the principal's subject (a person's subject id or a service), as access records hold it.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Index, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from services.analytics.models import Base


class ReportRow(Base):
    __tablename__ = "reports"
    __table_args__ = (
        Index("ix_reports_created", "created_us", "report_id"),
        Index("ix_reports_sha256", "sha256"),
        Index("ix_reports_request", "request_id", unique=True),
    )

    report_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    period: Mapped[str] = mapped_column(String(8))
    format: Mapped[str] = mapped_column(String(8))
    media_type: Mapped[str] = mapped_column(String(64))
    sha256: Mapped[str] = mapped_column(String(64))
    content: Mapped[bytes] = mapped_column(LargeBinary)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    timestamp_token: Mapped[bytes] = mapped_column(LargeBinary)
    tsa_time_us: Mapped[int] = mapped_column(BigInteger)
    log_event_id: Mapped[str] = mapped_column(String(64))
    created_us: Mapped[int] = mapped_column(BigInteger)
    created_by: Mapped[str] = mapped_column(String(256))
    # CreateReport's idempotency key: a retry with the same key returns this report.
    request_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
