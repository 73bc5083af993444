"""Wiring of the ingest service: servicer, group committer, integrator, enrichment and reconciler.

Settings (besides the shared ones), read once from the environment when the app is created:

- AWARENESS_INGEST_FINGERPRINT_SECRET / _FILE: HMAC secret of the idempotency fingerprints (every
  replica must share it; its own secret, never derived from another). Unset: ./var's dev file, created
  on first run; in Kubernetes the pod refuses to start.
- AWARENESS_INGEST_KEY_CACHE_SECONDS (900) / AWARENESS_INGEST_KEY_CACHE_ENTRIES (200000): how long
  and how many gdpr data keys stay cached in memory (an erasure does not wait for either: see keys.py).
- AWARENESS_INGEST_CLOCK_SKEW_SECONDS (300): how far in the future occurred_at may be.
- AWARENESS_INGEST_INTEGRATE_INTERVAL_MS (200) / AWARENESS_INGEST_INTEGRATE_AFTER_LEAVES (1000):
  the integrator runs every T ms, or sooner once N new records wait.
- AWARENESS_INGEST_CHECKPOINT_EVERY (1000) / AWARENESS_INGEST_CHECKPOINT_INTERVAL_MS (1000): a
  checkpoint is signed every N leaves or T ms, whichever comes first.
- AWARENESS_LOG_ORIGIN ("awareness.local/log"): the checkpoint origin line, shared with signing.
- AWARENESS_INGEST_ENRICHMENT (true) and AWARENESS_INGEST_RECONCILE_INTERVAL_SECONDS (30).
- AWARENESS_INGEST_ENRICHMENT_LINGER_MS (100): how long new events gather into one enrichment batch.
- AWARENESS_INGEST_FORGET_POLL_MS (500): how often a replica applies the ForgetSubject calls that
  reached another replica (recorded in the shared database).
- AWARENESS_INGEST_UNDECLARED_DETAILS (refuse): what happens to a detail key an event's type does
  not declare (services/ingest/domain/minimisation.py): `refuse` (INVALID_ARGUMENT naming each key)
  or `drop` (stored without it).
- AWARENESS_INGEST_REDACTION (every kind for every source): the free-text redaction per source,
  e.g. `*=all;edr=email,ipv4;legacy=none` (services/ingest/domain/redaction.py).
- AWARENESS_INGEST_ANALYTICS (true) and AWARENESS_INGEST_ANALYTICS_INTERVAL_MS (500): whether and
  how often the facts of enriched events are sent to analytics (services/ingest/analytics_feed.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from awareness.ingest.v1 import ingest_pb2, ingest_pb2_grpc

from services.ingest.analytics_feed import AnalyticsFeed, AnalyticsFeedSettings
from services.ingest.api import IngestServicer
from services.ingest.bootstrap import DEV_FINGERPRINT_FILE
from services.ingest.domain.minimisation import UndeclaredDetails
from services.ingest.domain.redaction import RedactionSettings, parse_redaction_settings
from services.ingest.enrichment import Enricher, EnrichmentSettings
from services.ingest.forgetting import ForgetFollower
from services.ingest.integrator import Integrator, IntegratorSettings
from services.ingest.keys import DEFAULT_KEY_CACHE_SECONDS, DEFAULT_MAX_ENTRIES, SubjectKeys
from services.ingest.repository import WriteGate
from services.ingest.service import (
    Accepted,
    AccessRecordReader,
    Committer,
    EnrichmentItem,
    EventReader,
    LogWriter,
)
from services.ingest.verification_records import VerificationCollector
from services.runtime import audit, db
from services.runtime.config import (
    ConfigError,
    Settings,
    archive_dir,
    env_bool,
    env_float,
    env_int,
    env_str,
    load_secret,
)
from services.runtime.paging import PageTokens
from services.runtime.server import ServiceApp, ServiceContext

SERVICE_NAME = ingest_pb2.DESCRIPTOR.services_by_name["IngestService"].full_name
# Appended events are checked one by one (LogWriter), so that one bad event refuses only itself.
EVENT_FIELDS = frozenset(
    {
        ingest_pb2.AppendEventRequest.DESCRIPTOR.fields_by_name["event"].full_name,
        ingest_pb2.AppendEventsRequest.DESCRIPTOR.fields_by_name["events"].full_name,
    }
)
FINGERPRINT_SECRET = "AWARENESS_INGEST_FINGERPRINT_SECRET"  # noqa: S105 - a variable name

log = logging.getLogger("awareness.ingest")


@dataclass(frozen=True)
class IngestSettings:
    fingerprint_secret: bytes
    key_cache_seconds: float = DEFAULT_KEY_CACHE_SECONDS
    key_cache_entries: int = DEFAULT_MAX_ENTRIES
    clock_skew: timedelta = timedelta(minutes=5)
    integrator: IntegratorSettings = field(default_factory=IntegratorSettings)
    enrichment: EnrichmentSettings = field(default_factory=EnrichmentSettings)
    enrichment_enabled: bool = True
    forget_poll_seconds: float = 0.5
    undeclared_details: UndeclaredDetails = UndeclaredDetails.REFUSE
    redaction: RedactionSettings = field(default_factory=lambda: parse_redaction_settings(""))
    analytics: AnalyticsFeedSettings = field(default_factory=AnalyticsFeedSettings)


def load_ingest_settings(settings: Settings) -> IngestSettings:
    env = settings.env
    secret = load_secret(env, FINGERPRINT_SECRET, dev_file=settings.data_dir / DEV_FINGERPRINT_FILE)
    every = env_int(env, "AWARENESS_INGEST_CHECKPOINT_EVERY", 1000, minimum=1)
    origin = env_str(env, "AWARENESS_LOG_ORIGIN", "awareness.local/log")
    if any(character.isspace() or character == "+" for character in origin):
        raise ConfigError("AWARENESS_LOG_ORIGIN must not contain spaces or '+'")
    undeclared = env_str(env, "AWARENESS_INGEST_UNDECLARED_DETAILS", UndeclaredDetails.REFUSE.value)
    if undeclared not in {member.value for member in UndeclaredDetails}:
        raise ConfigError("AWARENESS_INGEST_UNDECLARED_DETAILS must be refuse or drop")
    try:
        redaction = parse_redaction_settings(env_str(env, "AWARENESS_INGEST_REDACTION", ""))
    except ValueError as error:
        raise ConfigError(f"AWARENESS_INGEST_REDACTION: {error}") from error
    return IngestSettings(
        fingerprint_secret=secret,
        key_cache_seconds=env_float(env, "AWARENESS_INGEST_KEY_CACHE_SECONDS", DEFAULT_KEY_CACHE_SECONDS),
        key_cache_entries=env_int(env, "AWARENESS_INGEST_KEY_CACHE_ENTRIES", DEFAULT_MAX_ENTRIES, minimum=1),
        clock_skew=timedelta(seconds=env_float(env, "AWARENESS_INGEST_CLOCK_SKEW_SECONDS", 300.0)),
        integrator=IntegratorSettings(
            interval_seconds=env_int(env, "AWARENESS_INGEST_INTEGRATE_INTERVAL_MS", 200, minimum=1) / 1000,
            wake_after_leaves=env_int(env, "AWARENESS_INGEST_INTEGRATE_AFTER_LEAVES", 1000, minimum=1),
            checkpoint_every=every,
            checkpoint_interval_seconds=env_int(
                env, "AWARENESS_INGEST_CHECKPOINT_INTERVAL_MS", 1000, minimum=1
            )
            / 1000,
            origin=origin,
            archive_dir=archive_dir(env),
        ),
        enrichment=EnrichmentSettings(
            reconcile_interval_seconds=env_float(
                env, "AWARENESS_INGEST_RECONCILE_INTERVAL_SECONDS", 30.0, minimum=0.05
            ),
            reconcile_settle_seconds=env_float(env, "AWARENESS_INGEST_RECONCILE_SETTLE_SECONDS", 10.0),
            batch_linger_seconds=env_int(env, "AWARENESS_INGEST_ENRICHMENT_LINGER_MS", 100, minimum=0) / 1000,
        ),
        enrichment_enabled=env_bool(env, "AWARENESS_INGEST_ENRICHMENT", True),
        forget_poll_seconds=env_int(env, "AWARENESS_INGEST_FORGET_POLL_MS", 500, minimum=10) / 1000,
        undeclared_details=UndeclaredDetails(undeclared),
        redaction=redaction,
        analytics=AnalyticsFeedSettings(
            enabled=env_bool(env, "AWARENESS_INGEST_ANALYTICS", True),
            interval_seconds=env_int(env, "AWARENESS_INGEST_ANALYTICS_INTERVAL_MS", 500, minimum=10) / 1000,
        ),
    )


class IngestRuntime:
    """The long-lived parts of one ingest process and their background tasks."""

    def __init__(self, context: ServiceContext, settings: IngestSettings) -> None:
        engine, sessions = context.engine, context.sessions
        if engine is None or sessions is None:
            raise ConfigError("the ingest service needs its database")
        channels = context.channels
        self.settings = settings
        gate = WriteGate(engine)
        self.keys = SubjectKeys(
            channel=lambda: channels.channel("gdpr"),
            ttl_seconds=settings.key_cache_seconds,
            max_entries=settings.key_cache_entries,
        )
        self.integrator = Integrator(
            engine=engine,
            sessions=sessions,
            signing=lambda: channels.channel("signing"),
            settings=settings.integrator,
            gate=gate,
            metrics=context.metrics,
        )
        self.enricher = Enricher(
            sessions=sessions,
            keys=self.keys,
            scoring=lambda: channels.channel("scoring"),
            policy=lambda: channels.channel("policy"),
            settings=settings.enrichment,
            gate=gate,
            metrics=context.metrics,
        )
        self.committer = Committer(
            sessions=sessions,
            gate=gate,
            on_commit=self.integrator.committed,
            on_storing=self.integrator.storing,
            metrics=context.metrics,
        )
        self.writer = LogWriter(
            sessions=sessions,
            keys=self.keys,
            committer=self.committer,
            fingerprint_secret=settings.fingerprint_secret,
            clock_skew=settings.clock_skew,
            on_accepted=self._accepted,
            metrics=context.metrics,
            undeclared_details=settings.undeclared_details,
            redaction=settings.redaction,
        )
        self.analytics = AnalyticsFeed(
            sessions=sessions,
            analytics=lambda: channels.channel("analytics"),
            settings=settings.analytics,
            gate=gate,
            metrics=context.metrics,
            wait_for_enrichment=settings.enrichment_enabled,
        )
        self.forgets = ForgetFollower(
            sessions=sessions,
            gate=gate,
            apply=self._forget,
            key_ttl_seconds=settings.key_cache_seconds,
            interval_seconds=settings.forget_poll_seconds,
            on_poll=self.keys.evict_expired,
        )
        page_tokens = PageTokens.from_secret(context.settings.service_secret)
        self.reader = EventReader(
            sessions=sessions,
            keys=self.keys,
            gate=gate,
            page_tokens=page_tokens,
            on_forget=self.enricher.forget,
            record_forget=self.forgets.record,
            forget_downstream=self.analytics.forget,
        )
        self.access = AccessRecordReader(sessions=sessions, page_tokens=page_tokens)
        # The scheduled verification's results, read from the access records (verification_records.py).
        context.metrics.registry.register(VerificationCollector(sessions))
        self.servicer = IngestServicer(writer=self.writer, reader=self.reader, access=self.access)
        self._tasks: list[asyncio.Task[None]] = []

    def _forget(self, pseudonym: str) -> None:
        """A ForgetSubject that reached another replica: drop the keys and plaintext held here."""
        self.keys.forget(pseudonym)
        self.enricher.forget(pseudonym)

    async def append_access_records(self, events: Sequence[ingest_pb2.Event]) -> None:
        """The audit sink of ingest's own access records: its writer, not a call to itself.

        Runs until the recorder is drained at shutdown, which is before on_stop stops the committer.
        A failure to store raises (the recorder keeps the records and retries with the same ids);
        a refusal is for good.
        """
        outcomes = await self.writer.append(events, system_writer="ingest")
        refused = [outcome for outcome in outcomes if not isinstance(outcome, Accepted)]
        if refused:
            raise audit.RejectedRecordsError(len(refused), str(refused[0]))

    def _accepted(self, items: list[EnrichmentItem]) -> None:
        if self.settings.enrichment_enabled:
            self.enricher.submit(items)

    def jobs(self) -> list[Coroutine[Any, Any, None]]:
        jobs: list[Coroutine[Any, Any, None]] = [
            self.committer.run(),
            self.integrator.run(),
            self.forgets.run(),
        ]
        if self.settings.enrichment_enabled:
            jobs += [self.enricher.run(), self.enricher.reconcile_forever()]
        if self.settings.analytics.enabled:
            jobs.append(self.analytics.run())
        return jobs

    async def start(self) -> None:
        if not self._tasks:
            self._tasks = [asyncio.create_task(job) for job in self.jobs()]

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def app_for(runtime: IngestRuntime, context: ServiceContext) -> ServiceApp:
    """The ServiceApp of an already built runtime (tests keep the runtime to reach its parts)."""
    engine = context.engine
    assert engine is not None
    return ServiceApp(
        name="ingest",
        service_names=[SERVICE_NAME],
        register=lambda server: ingest_pb2_grpc.add_IngestServiceServicer_to_server(runtime.servicer, server),
        ready=lambda: db.ping(engine),
        on_start=runtime.start,
        on_stop=runtime.stop,
        validated_fields=EVENT_FIELDS,
        audit_sink=runtime.append_access_records,
    )


def create_app(context: ServiceContext) -> ServiceApp:
    return app_for(IngestRuntime(context, load_ingest_settings(context.settings)), context)
