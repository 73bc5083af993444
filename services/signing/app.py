"""Wiring of the signing service: keys, use cases, servicer, store, upstream TSA, metrics and health."""

from __future__ import annotations

from awareness.signing.v1 import signing_pb2, signing_pb2_grpc

from services.runtime import db
from services.runtime.clients import new_breaker
from services.runtime.config import MissingSecretError, refuse_generated_secret
from services.runtime.paging import PageTokens
from services.runtime.server import ServiceApp, ServiceContext
from services.signing.api import SigningServicer
from services.signing.bootstrap import PKI_DIR_ENVIRONMENT_VARIABLE, bootstrap_dev
from services.signing.config import SigningConfig, load_signing_config
from services.signing.domain.pki import MANIFEST_FILE
from services.signing.domain.tsa import SerialSource
from services.signing.keys import load_active_keys
from services.signing.service import SigningMetrics, SigningService
from services.signing.upstream import UpstreamTsa

SERVICE_NAME = signing_pb2.DESCRIPTOR.services_by_name["SigningService"].full_name
UPSTREAM_BREAKER_TARGET = "upstream_tsa"


def create_app(
    context: ServiceContext,
    *,
    config: SigningConfig | None = None,
    serial_source: SerialSource | None = None,
) -> ServiceApp:
    settings = context.settings
    engine, sessions = context.engine, context.sessions
    if engine is None or sessions is None:
        raise RuntimeError("the signing service needs its store (its audit trail of tokens and checkpoints)")
    config = config or load_signing_config(settings.env, data_dir=settings.data_dir)
    if not config.pki_dir_from_environment:
        # In Kubernetes each replica would otherwise sign with a PKI of its own.
        refuse_generated_secret(settings.env, f"{PKI_DIR_ENVIRONMENT_VARIABLE} (the signing PKI Secret)")
    elif not (config.pki_dir / MANIFEST_FILE).is_file():
        raise MissingSecretError(
            f"{PKI_DIR_ENVIRONMENT_VARIABLE}={config.pki_dir} holds no {MANIFEST_FILE}: "
            "mount the PKI Secret there"
        )
    if not config.pki_dir_from_environment and not (config.pki_dir / MANIFEST_FILE).exists():
        # `awareness serve signing` without `awareness up`: the same development PKI, made here.
        bootstrap_dev(settings.data_dir)
    keys = load_active_keys(config, serial_source=serial_source)
    metrics = SigningMetrics.create(context.metrics)
    upstream = None
    if config.upstream_tsa_url is not None:
        upstream = UpstreamTsa(
            url=config.upstream_tsa_url,
            timeout_seconds=config.upstream_timeout_seconds,
            breaker=new_breaker(
                target=UPSTREAM_BREAKER_TARGET,
                fail_max=settings.breaker_fail_max,
                reset_seconds=settings.breaker_reset_seconds,
                metrics=context.metrics,
            ),
            trusted_roots=config.upstream_trusted_roots,
            requests=metrics.upstream_requests,
        )
    signing = SigningService(
        config=config,
        keys=keys,
        sessions=sessions,
        metrics=metrics,
        upstream=upstream,
        serial_source=serial_source,
    )
    servicer = SigningServicer(signing=signing, page_tokens=PageTokens.from_secret(settings.service_secret))

    async def stop() -> None:
        if upstream is not None:
            await upstream.close()

    return ServiceApp(
        name="signing",
        service_names=[SERVICE_NAME],
        register=lambda server: signing_pb2_grpc.add_SigningServiceServicer_to_server(servicer, server),
        ready=lambda: db.ping(engine),
        on_stop=stop,
        background=[signing.watch_keys],
    )
