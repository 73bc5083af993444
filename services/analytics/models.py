"""Tables of the analytics service (its own SQLite file, or PostgreSQL schema ``awareness_analytics``).

Rollups, not copies: no table holds an identifier, a summary or a sealed detail.

* ``folded_events``: the idempotency index (event id, pseudonym, day, type, risk); the pseudonym is
  blanked when the subject is forgotten. Also the source of a person's top events and factors.
* ``day_counts``: events by day x type x dimension (``""``/``""`` for all) x department.
* ``campaigns``, ``campaign_stage_events``, ``campaign_people``: the funnel; per person the first time
  at each stage, so unique counts and time-to-click/report are exact.
* ``training_people``: per module and person, the first time assigned, completed, overdue.
* ``violation_days``: violations by day x policy x severity x department.
* ``person_risks``: per pseudonym, the decayed sum of its events' risk as of ``ref_day`` (its latest
  event's day), its event count, and its ``rank`` (see ``RISK_RANK_SQL``): what ListSubjectRisks
  orders by, through an index, one row per person. One person's
  risk in detail (days, top events, factors, trend) comes from its rows of ``folded_events``.
* ``department_people``: who is in which department (the group size k-anonymity checks).

Days are whole days since the Unix epoch (UTC); times are integer microseconds since the epoch.
"""

from __future__ import annotations

from typing import Final

from sqlalchemy import BigInteger, Computed, Float, Index, Integer, String, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class FoldedEventRow(Base):
    __tablename__ = "folded_events"
    __table_args__ = (Index("ix_folded_events_subject", "subject_pseudonym", "day"),)

    event_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    subject_pseudonym: Mapped[str] = mapped_column(String(128))
    day: Mapped[int] = mapped_column(Integer)
    type: Mapped[str] = mapped_column(String(128))
    risk: Mapped[float] = mapped_column(Float)


class DayCountRow(Base):
    __tablename__ = "day_counts"
    __table_args__ = (Index("ix_day_counts_department", "department", "day"),)

    day: Mapped[int] = mapped_column(Integer, primary_key=True)
    type: Mapped[str] = mapped_column(String(128), primary_key=True)
    dimension_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    dimension_value: Mapped[str] = mapped_column(String(256), primary_key=True)
    department: Mapped[str] = mapped_column(String(128), primary_key=True)
    events: Mapped[int] = mapped_column(BigInteger)


class CampaignRow(Base):
    __tablename__ = "campaigns"
    __table_args__ = (Index("ix_campaigns_first", "first_event_us", "campaign_id"),)

    campaign_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    first_event_us: Mapped[int] = mapped_column(BigInteger)
    last_event_us: Mapped[int] = mapped_column(BigInteger)


class CampaignStageEventsRow(Base):
    __tablename__ = "campaign_stage_events"

    campaign_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    stage: Mapped[str] = mapped_column(String(16), primary_key=True)
    events: Mapped[int] = mapped_column(BigInteger)


class CampaignPersonRow(Base):
    __tablename__ = "campaign_people"
    __table_args__ = (Index("ix_campaign_people_subject", "subject_pseudonym"),)

    campaign_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    subject_pseudonym: Mapped[str] = mapped_column(String(128), primary_key=True)
    department: Mapped[str] = mapped_column(String(128))
    sent_us: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    opened_us: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    clicked_us: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    submitted_us: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    reported_us: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class TrainingPersonRow(Base):
    __tablename__ = "training_people"
    __table_args__ = (Index("ix_training_people_subject", "subject_pseudonym"),)

    training_module: Mapped[str] = mapped_column(String(256), primary_key=True)
    subject_pseudonym: Mapped[str] = mapped_column(String(128), primary_key=True)
    department: Mapped[str] = mapped_column(String(128))
    assigned_us: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    completed_us: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    overdue_us: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class ViolationDayRow(Base):
    __tablename__ = "violation_days"
    __table_args__ = (Index("ix_violation_days_department", "department", "day"),)

    day: Mapped[int] = mapped_column(Integer, primary_key=True)
    policy: Mapped[str] = mapped_column(String(128), primary_key=True)
    severity: Mapped[int] = mapped_column(Integer, primary_key=True)
    department: Mapped[str] = mapped_column(String(128), primary_key=True)
    events: Mapped[int] = mapped_column(BigInteger)


# ln S(day) = ln weighted + (ref_day - day) * ln 2 / half_life: ordering by ln weighted + ref_day * ln 2 /
# half_life is ordering by S on every day at once, so the ranking is an index scan, not a sort of
# everyone computed at read time. A person with no risk (weighted 0) ranks last.
RISK_RANK_SQL: Final = (
    "CASE WHEN weighted > 0 THEN ln(weighted) ELSE -1e308 END + ref_day * 0.6931471805599453 / half_life_days"
)


class PersonRiskRow(Base):
    __tablename__ = "person_risks"
    __table_args__ = (Index("ix_person_risks_rank", text("rank DESC"), "subject_pseudonym"),)

    subject_pseudonym: Mapped[str] = mapped_column(String(128), primary_key=True)
    # sum of risk * 2^((day - ref_day) / half_life) over the person's events, kept as of ref_day.
    weighted: Mapped[float] = mapped_column(Float)
    ref_day: Mapped[int] = mapped_column(Integer)
    event_count: Mapped[int] = mapped_column(BigInteger)
    # The half-life the sum was built with; another one at start-up rebuilds the table.
    half_life_days: Mapped[float] = mapped_column(Float)
    rank: Mapped[float] = mapped_column(Float, Computed(RISK_RANK_SQL, persisted=True))


class DepartmentPersonRow(Base):
    __tablename__ = "department_people"
    __table_args__ = (Index("ix_department_people_subject", "subject_pseudonym"),)

    department: Mapped[str] = mapped_column(String(128), primary_key=True)
    subject_pseudonym: Mapped[str] = mapped_column(String(128), primary_key=True)
