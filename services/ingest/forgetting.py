"""ForgetSubject on every replica: the call reaches one, the shared database tells the others.

The replica that is called records the forget (repository.record_forget) and applies it at once;
every replica polls the recent records and applies those it has not applied yet. A record is kept
for as long as a cached key could live (the key cache TTL) plus a margin for clock differences
between replicas; older ones are moot, since every copy has expired by then.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from sqlalchemy.orm import Session, sessionmaker

from services.ingest import repository
from services.runtime.db import run_db, transaction

log = logging.getLogger("awareness.ingest")

CLOCK_MARGIN_SECONDS = 60.0


class ForgetFollower:
    """Records forgets and applies the other replicas' ones within one poll interval."""

    def __init__(
        self,
        *,
        sessions: sessionmaker[Session],
        gate: repository.WriteGate,
        apply: Callable[[str], None],
        key_ttl_seconds: float,
        interval_seconds: float = 0.5,
        on_poll: Callable[[], object] = lambda: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._sessions = sessions
        self._gate = gate
        self._apply = apply
        self._window_us = int((key_ttl_seconds + CLOCK_MARGIN_SECONDS) * 1_000_000)
        self._interval = interval_seconds
        self._on_poll = on_poll
        self._clock = clock
        self._applied: set[int] = set()

    def _now_us(self) -> int:
        return int(self._clock() * 1_000_000)

    def record(self, pseudonym: str) -> None:
        """Store a forget for the other replicas (this one applies it itself)."""
        with self._gate, transaction(self._sessions) as session:
            repository.record_forget(
                session, pseudonym=pseudonym, now_us=self._now_us(), keep_us=2 * self._window_us
            )

    def _recent(self) -> list[tuple[int, str]]:
        with self._sessions() as session:
            return repository.recent_forgets(session, since_us=self._now_us() - self._window_us)

    async def poll_once(self) -> int:
        """Apply the recent forgets not applied yet; returns how many were applied."""
        recent = await run_db(self._recent)
        applied = 0
        for seq, pseudonym in recent:
            if seq not in self._applied:
                self._apply(pseudonym)
                applied += 1
        # Only seqs still inside the window can come back: the set stays as small as the window.
        self._applied = {seq for seq, _ in recent}
        self._on_poll()
        return applied

    async def run(self) -> None:
        while True:
            try:
                await self.poll_once()
            except Exception as error:  # the database is away: try again next interval
                log.warning("forget poll failed", extra={"error": type(error).__name__})
            await asyncio.sleep(self._interval)
