"""Use cases of the analytics service: fold facts (with consent), forget subjects, and the reads.

The servicer (:mod:`.api`) converts messages and calls one method here per RPC. Consent comes from gdpr
through the runtime's checker (services.runtime.consent): `analytics` decides whether a fact is folded
at all, `profiling` whether its subject gets a risk.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

from sqlalchemy.orm import Session, sessionmaker

from services.analytics import repository
from services.analytics.domain.anonymity import suppressed
from services.analytics.domain.facts import Fact, date_of_day, plan_fold, today_day
from services.analytics.domain.funnel import Funnel, Stage, build_funnel
from services.analytics.domain.risk import (
    Contribution,
    Factor,
    WeekScore,
    daily_sums,
    decayed_sum,
    factors,
    level_of,
    score_of,
    top_contributions,
    trend,
)
from services.analytics.domain.training import TrainingSummary, summarise
from services.analytics.metrics import AnalyticsMetrics
from services.analytics.repository import CampaignSummary
from services.runtime.consent import ConsentChecker
from services.runtime.db import run_db, transaction
from services.runtime.errors import AwarenessError, NotFoundError

log = logging.getLogger("awareness.analytics")
T = TypeVar("T")
# People whose consent one gdpr call re-checks (CheckConsent takes at most 1000).
SWEEP_PAGE: Final = 1000


class CampaignNotFoundError(NotFoundError):
    reason = "CAMPAIGN_NOT_FOUND"


class SubjectRiskNotFoundError(NotFoundError):
    reason = "SUBJECT_RISK_NOT_FOUND"


@dataclass(frozen=True, slots=True)
class FoldResult:
    folded: int
    duplicates: int
    excluded: int


@dataclass(frozen=True, slots=True)
class Settings:
    k: int
    half_life_days: float
    # How often the people held are checked against gdpr's consent records, so that an objection
    # takes effect without waiting for the person's next event.
    consent_sweep_seconds: float = 60.0


@dataclass(frozen=True, slots=True)
class EventCounts:
    """(day, type, events) rows, or none when the department asked for is too small to show."""

    rows: Sequence[tuple[int, str, int]]
    suppressed: bool


@dataclass(frozen=True, slots=True)
class ViolationCounts:
    """(day, policy, severity, events) rows, or none when the department asked for is too small to show."""

    rows: Sequence[tuple[int, str, int, int]]
    suppressed: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class RiskView:
    pseudonym: str
    score: float
    level: str
    event_count: int
    top_events: Sequence[Contribution] = ()
    factors: Sequence[Factor] = ()
    trend: Sequence[WeekScore] = ()


@dataclass(frozen=True, slots=True)
class RankedRisk:
    """A risk in a listing, with what places it there: the day it was computed at and its rank."""

    day: int
    rank: float
    risk: RiskView


class KnownMembers:
    """Department memberships this replica has stored, so that a batch writes only new ones.

    Bounded (cleared when full). A membership forgotten on another replica stays remembered here, so a
    late fact of that person does not store it again: group sizes can only come out smaller, which
    suppresses more, never less.
    """

    LIMIT: Final = 500_000

    def __init__(self) -> None:
        self._known: dict[str, set[str]] = {}
        self._size = 0

    def unknown(self, members: set[tuple[str, str]]) -> set[tuple[str, str]]:
        return {(department, p) for department, p in members if department not in self._known.get(p, ())}

    def remember(self, members: set[tuple[str, str]]) -> None:
        if self._size + len(members) > self.LIMIT:
            self._known.clear()
            self._size = 0
        for department, pseudonym in members:
            departments = self._known.setdefault(pseudonym, set())
            if department not in departments:
                departments.add(department)
                self._size += 1

    def forget(self, pseudonyms: Collection[str]) -> None:
        for pseudonym in pseudonyms:
            self._size -= len(self._known.pop(pseudonym, ()))


class AnalyticsOperations:
    def __init__(
        self,
        *,
        sessions: sessionmaker[Session],
        analytics_consent: ConsentChecker,
        profiling_consent: ConsentChecker,
        settings: Settings,
        metrics: AnalyticsMetrics,
        clock: type[datetime] = datetime,
    ) -> None:
        self._sessions = sessions
        self._analytics = analytics_consent
        self._profiling = profiling_consent
        self.settings = settings
        self._metrics = metrics
        self._clock = clock
        self._members = KnownMembers()

    def _now(self) -> datetime:
        return self._clock.now(UTC)

    async def prepare(self) -> None:
        """At start-up: rebuild the per-person risk sums if they were kept with another half-life."""
        if await run_db(self._rebuild_risks):
            log.info(
                "risk sums rebuilt for a new half-life",
                extra={"half_life_days": self.settings.half_life_days},
            )

    def _rebuild_risks(self) -> bool:
        with transaction(self._sessions) as session:
            return repository.rebuild_risks(session, half_life_days=self.settings.half_life_days)

    # --- feed --------------------------------------------------------------------------------------

    async def record(self, facts: Sequence[Fact]) -> FoldResult:
        """Fold a batch in one transaction; duplicates (seen ids, or repeated in the batch) change nothing."""
        unique = list({fact.event_id: fact for fact in reversed(facts)}.values())[::-1]
        # Events without a subject need no consent: they are counted in the aggregates only.
        # Both purposes at once: a cache miss costs one round trip to gdpr, not two.
        pseudonyms = [fact.pseudonym for fact in unique if fact.pseudonym]
        allowed, profiling = await asyncio.gather(
            self._analytics.granted(pseudonyms), self._profiling.granted(pseudonyms)
        )
        objected = {p for p in pseudonyms if not allowed.get(p, False)}
        kept = [fact for fact in unique if fact.pseudonym not in objected]
        profiled = frozenset(p for p, granted in profiling.items() if granted and p not in objected)
        no_profiling = {fact.pseudonym for fact in kept if fact.pseudonym} - profiled
        started = time.perf_counter()
        folded = await run_db(self._fold, kept, profiled, objected, no_profiling)
        self._metrics.fold_seconds.observe(time.perf_counter() - started)
        excluded = len(unique) - len(kept)
        result = FoldResult(folded=folded, duplicates=len(facts) - folded - excluded, excluded=excluded)
        self._metrics.facts.labels("folded").inc(result.folded)
        self._metrics.facts.labels("duplicate").inc(result.duplicates)
        self._metrics.facts.labels("excluded").inc(result.excluded)
        return result

    def _fold(
        self, facts: Sequence[Fact], profiled: frozenset[str], objected: set[str], no_profiling: set[str]
    ) -> int:
        self._members.forget(objected)
        with transaction(self._sessions) as session:
            # The index keeps an event's risk only for a subject who may be profiled.
            claimed = repository.claim_events(
                session,
                [
                    (f.event_id, f.pseudonym, f.day, f.type, f.risk if f.pseudonym in profiled else 0.0)
                    for f in facts
                ],
            )
            new = [fact for fact in facts if fact.event_id in claimed]
            plan = plan_fold(new, half_life_days=self.settings.half_life_days, profiled=profiled)
            members = plan.department_people
            plan.department_people = self._members.unknown(members)
            repository.apply_fold(session, plan, half_life_days=self.settings.half_life_days)
            # An objection reaches the rows already held: the person leaves every per-person figure now.
            repository.forget(session, objected)
            repository.forget(session, no_profiling, risk_only=True)
        self._members.remember(members)
        return len(new)

    async def forget(self, pseudonyms: Sequence[str]) -> int:
        return await run_db(self._forget, list(dict.fromkeys(pseudonyms)))

    async def sweep_consent(self) -> int:
        """Re-check the consent of every person held, a page at a time; an objection to `analytics`
        removes the person's rows, one to `profiling` their risk. Returns how many people left.

        Folding honours an objection when the person's next event arrives; the sweep covers the
        people who send none. ConsentUnavailableError when gdpr cannot answer (nothing changes)."""
        after, left = "", 0
        while True:
            page = await run_db(self._read, repository.held_pseudonyms, after=after, limit=SWEEP_PAGE)
            if not page:
                return left
            allowed, profiling = await asyncio.gather(
                self._analytics.granted(page), self._profiling.granted(page)
            )
            objected = [p for p in page if not allowed.get(p, False)]
            unprofiled = [p for p in page if allowed.get(p, False) and not profiling.get(p, False)]
            if objected or unprofiled:
                left += await run_db(self._leave, objected, unprofiled)
            after = page[-1]

    def _leave(self, objected: Sequence[str], unprofiled: Sequence[str]) -> int:
        self._members.forget(objected)
        with transaction(self._sessions) as session:
            repository.forget(session, unprofiled, risk_only=True)
            return len(repository.forget(session, objected))

    async def sweep_consent_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.consent_sweep_seconds)
            try:
                left = await self.sweep_consent()
            except asyncio.CancelledError:
                raise
            except AwarenessError as error:
                log.warning("consent sweep skipped", extra={"reason": error.reason})
                continue
            except Exception:
                log.exception("consent sweep failed")
                continue
            if left:
                log.info("people left the analytics after objecting", extra={"people": left})

    def _forget(self, pseudonyms: Sequence[str]) -> int:
        self._members.forget(pseudonyms)
        with transaction(self._sessions) as session:
            return len(repository.forget(session, pseudonyms))

    # --- reads -------------------------------------------------------------------------------------

    async def list_campaigns(self, *, limit: int, before: tuple[int, str] | None) -> list[CampaignSummary]:
        return await run_db(self._read, repository.list_campaigns, limit=limit, before=before)

    def _read(self, query: Callable[..., T], /, **kwargs: Any) -> T:
        with self._sessions() as session:
            return query(session, **kwargs)

    async def funnel(self, campaign_id: str) -> Funnel:
        return await run_db(self._funnel, campaign_id)

    def _funnel(self, campaign_id: str) -> Funnel:
        with self._sessions() as session:
            if not repository.campaign_exists(session, campaign_id):
                raise CampaignNotFoundError(f"no facts name campaign {campaign_id!r}")
            events = repository.stage_events(session, campaign_id)
            people = repository.campaign_people(session, campaign_id)
        return build_funnel(
            campaign_id, people, {Stage(name): count for name, count in events.items()}, k=self.settings.k
        )

    async def event_counts(
        self,
        *,
        days: tuple[int, int],
        types: Sequence[str],
        dimension: tuple[str, str],
        department: str | None,
    ) -> EventCounts:
        return await run_db(self._event_counts, days, types, dimension, department)

    def _event_counts(
        self, days: tuple[int, int], types: Sequence[str], dimension: tuple[str, str], department: str | None
    ) -> EventCounts:
        with self._sessions() as session:
            if department is not None and self._too_small(session, department):
                return EventCounts(rows=[], suppressed=True)
            rows = repository.event_counts(
                session,
                first_day=days[0],
                last_day=days[1],
                types=types,
                dimension=dimension,
                department=department,
            )
            return EventCounts(rows=rows, suppressed=False)

    async def violations(
        self, *, days: tuple[int, int], policy: str, department: str | None
    ) -> ViolationCounts:
        return await run_db(self._violations, days, policy, department)

    def _violations(self, days: tuple[int, int], policy: str, department: str | None) -> ViolationCounts:
        with self._sessions() as session:
            if department is not None and self._too_small(session, department):
                return ViolationCounts(rows=[], suppressed=True)
            rows = repository.violation_counts(
                session, first_day=days[0], last_day=days[1], policy=policy, department=department
            )
            return ViolationCounts(rows=rows, suppressed=False)

    def _too_small(self, session: Session, department: str) -> bool:
        return suppressed(repository.department_size(session, department), k=self.settings.k)

    async def training(self, *, module: str) -> TrainingSummary:
        return await run_db(self._training, module)

    def _training(self, module: str) -> TrainingSummary:
        with self._sessions() as session:
            assignments = repository.training_people(session, module=module)
        return summarise(assignments, k=self.settings.k)

    # --- risk --------------------------------------------------------------------------------------

    async def subject_risk(self, pseudonym: str) -> RiskView:
        granted = await self._profiling.granted([pseudonym])
        if not granted.get(pseudonym, False):
            raise SubjectRiskNotFoundError("no risk is kept for this pseudonym")
        return await run_db(self._subject_risk, pseudonym)

    def _subject_risk(self, pseudonym: str) -> RiskView:
        today = today_day(self._now())
        half_life = self.settings.half_life_days
        with self._sessions() as session:
            events = repository.subject_events(session, pseudonym)
        if not events:
            raise SubjectRiskNotFoundError("no risk is kept for this pseudonym")
        sums = daily_sums(events)
        score = score_of(decayed_sum(sums, at_day=today, half_life_days=half_life))
        return RiskView(
            pseudonym=pseudonym,
            score=score,
            level=level_of(score),
            event_count=len(events),
            top_events=top_contributions(events, at_day=today, half_life_days=half_life),
            factors=factors(events, at_day=today, half_life_days=half_life),
            trend=trend(sums, today=date_of_day(today), today_day=today, half_life_days=half_life),
        )

    async def list_risks(self, *, limit: int, after: tuple[int, float, str] | None) -> list[RankedRisk]:
        """Up to ``limit`` risks riskiest first after ``after`` (a previous row's day, rank and pseudonym),
        leaving out subjects who objected to profiling. A listing keeps the day its first page used."""
        today = after[0] if after is not None else today_day(self._now())
        position = (after[1], after[2]) if after is not None else None
        half_life = self.settings.half_life_days
        found: list[RankedRisk] = []
        while len(found) < limit:
            wanted = limit - len(found)
            rows = await run_db(
                self._read,
                repository.riskiest,
                today=today,
                half_life_days=half_life,
                limit=wanted,
                after=position,
            )
            if not rows:
                break
            granted = await self._profiling.granted([row.pseudonym for row in rows])
            for row in rows:
                if granted.get(row.pseudonym, False):
                    score = score_of(row.decayed)
                    view = RiskView(
                        pseudonym=row.pseudonym,
                        score=score,
                        level=level_of(score),
                        event_count=row.event_count,
                    )
                    found.append(RankedRisk(day=today, rank=row.rank, risk=view))
            if len(rows) < wanted:
                break
            position = (rows[-1].rank, rows[-1].pseudonym)
        return found
