"""Wiring of the gdpr service: secrets, store, use cases, servicer, background jobs and health probe."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from awareness.gdpr.v1 import gdpr_pb2, gdpr_pb2_grpc
from awareness.ingest.v1 import ingest_pb2_grpc

from services.gdpr.api import GdprServicer
from services.gdpr.domain.keys import PeriodGranularity
from services.gdpr.domain.retention import DEFAULT_RETENTION_DAYS
from services.gdpr.keysource import describe_keyring, load_key_material
from services.gdpr.service.transactions import GdprStore, enable_secure_delete
from services.gdpr.service.usecases import GdprMetrics, GdprUseCases
from services.gdpr.tombstones import TombstoneJournal
from services.runtime import db
from services.runtime.config import ConfigError, archive_dir, env_float, env_int, env_str
from services.runtime.db import run_db
from services.runtime.paging import PageTokens
from services.runtime.server import ServiceApp, ServiceContext

SERVICE_NAME = gdpr_pb2.DESCRIPTOR.services_by_name["GdprService"].full_name
log = logging.getLogger("awareness.gdpr")


@dataclass(frozen=True)
class GdprService:
    """The assembled service: what the runtime runs, plus its parts for in-process tests and tools."""

    app: ServiceApp
    servicer: GdprServicer
    use_cases: GdprUseCases
    store: GdprStore


def create_app(context: ServiceContext) -> ServiceApp:
    return build_service(context).app


def build_service(context: ServiceContext) -> GdprService:
    settings = context.settings
    engine, sessions = context.engine, context.sessions
    assert engine is not None and sessions is not None, "the gdpr service needs its database"
    granularity = env_str(settings.env, "AWARENESS_GDPR_KEY_PERIOD", "month")
    if granularity not in ("month", "year"):
        raise ConfigError(f"AWARENESS_GDPR_KEY_PERIOD must be month or year, got {granularity!r}")
    key_cache_seconds = env_int(settings.env, "AWARENESS_GDPR_KEY_CACHE_SECONDS", 900)
    retry_seconds = env_float(settings.env, "AWARENESS_GDPR_ERASURE_RETRY_SECONDS", 10.0, minimum=0.05)
    material = load_key_material(env=settings.env, data_dir=settings.data_dir)
    log.info("gdpr keyring loaded", extra={"keyring": describe_keyring(material.keyring)})
    enable_secure_delete(engine)
    store = GdprStore(
        engine=engine,
        sessions=sessions,
        material=material,
        granularity=_granularity(granularity),
        default_retention_days=env_int(settings.env, "AWARENESS_GDPR_RETENTION_DAYS", DEFAULT_RETENTION_DAYS),
        tombstones=None if (archive := archive_dir(settings.env)) is None else TombstoneJournal(archive),
    )
    use_cases = GdprUseCases(
        store=store,
        ingest=lambda: ingest_pb2_grpc.IngestServiceStub(context.channels.channel("ingest")),
        metrics=GdprMetrics.create(context.metrics),
    )
    servicer = GdprServicer(
        gdpr=use_cases,
        key_cache_seconds=key_cache_seconds,
        page_tokens=PageTokens.from_secret(settings.service_secret),
    )

    async def rewrap_at_start() -> None:
        # After a restart with a rotated Secret (new active KEK, old one kept), move every key over.
        count = await run_db(store.rewrap_pending, actor=f"service:{settings.service}")
        if count:
            log.info("data keys re-wrapped under the active KEK", extra={"keys_rewrapped": count})

    async def retry_erasure_log() -> None:
        while True:
            try:
                await use_cases.retry_pending_erasures()
            except Exception:  # a bad pass must not end the retrier; the next one tries again
                log.exception("erasure log retry pass failed")
            await asyncio.sleep(retry_seconds)

    app = ServiceApp(
        name="gdpr",
        service_names=[SERVICE_NAME],
        register=lambda server: gdpr_pb2_grpc.add_GdprServiceServicer_to_server(servicer, server),
        ready=lambda: db.ping(engine),
        background=[rewrap_at_start, retry_erasure_log],
        on_stop=use_cases.close,
    )
    return GdprService(app=app, servicer=servicer, use_cases=use_cases, store=store)


def _granularity(value: str) -> PeriodGranularity:
    return "year" if value == "year" else "month"
