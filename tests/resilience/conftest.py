"""One real suite per module, on PostgreSQL behind a TCP proxy and a private Redis."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from sqlalchemy.engine import make_url

from tests.resilience.harness import PrivateRedis, ProcessSuite, TcpProxy
from tests.support.resources import temporary_database

KEEP_LOGS = "AWARENESS_RESILIENCE_LOG_DIR"  # where to copy the services' logs (a CI artifact)


@dataclass
class FaultSuite:
    suite: ProcessSuite
    database_proxy: TcpProxy
    direct_database_url: str
    redis: PrivateRedis | None
    redis_proxy: TcpProxy | None
    api_key: str
    # Every event id the gateway acknowledged, over the whole module.
    acknowledged: dict[str, dict[str, object]] = field(default_factory=dict)

    def redis_down(self) -> None:
        if self.redis is not None:
            self.redis.kill()
        elif self.redis_proxy is not None:
            self.redis_proxy.down()

    def redis_up(self) -> None:
        if self.redis is not None:
            self.redis.start()
        elif self.redis_proxy is not None:
            self.redis_proxy.up()


@pytest.fixture(scope="module")
def module_database(postgres_url: str) -> Iterator[str]:
    """A brand-new PostgreSQL database for the module, dropped afterwards."""
    with temporary_database(postgres_url) as url:
        yield url


def _redis_target(
    request: pytest.FixtureRequest, directory: Path
) -> tuple[str, PrivateRedis | None, TcpProxy | None]:
    """A private redis-server when the binary exists, else a proxy in front of REDIS_URL."""
    if PrivateRedis.available():
        private = PrivateRedis(directory=directory)
        private.start()
        return private.url, private, None
    parts = urlsplit(str(request.getfixturevalue("redis_url")))
    proxy = TcpProxy(upstream_host=parts.hostname or "127.0.0.1", upstream_port=parts.port or 6379).start()
    return f"redis://127.0.0.1:{proxy.port}{parts.path}", None, proxy


@pytest.fixture(scope="module")
def fault_suite(
    request: pytest.FixtureRequest, module_database: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FaultSuite]:
    directory = tmp_path_factory.mktemp("fault-suite")
    url = make_url(module_database)
    proxy = TcpProxy(upstream_host=url.host or "127.0.0.1", upstream_port=url.port or 5432).start()
    proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    redis_url, redis, redis_proxy = _redis_target(request, directory / "redis")
    suite = ProcessSuite(
        data_dir=directory / "data",
        database_url=proxied,
        redis_url=redis_url,
        # Ingest backs a failed enrichment peer off for 5 s between calls: two failures must
        # be enough for its breaker to open within one outage.
        # Cached subject keys expire in 2 s, so a gdpr outage shows within the test's window.
        service_env={
            "ingest": {"AWARENESS_BREAKER_FAIL_MAX": "2", "AWARENESS_INGEST_KEY_CACHE_SECONDS": "2"}
        },
    )
    try:
        suite.start_all(timeout=180)
        # Scoring trains its default model on first start; pending scores need it to back-fill.
        assert suite.wait_for_champion_model(timeout=300), "scoring never served a model\n" + suite.logs(
            ["scoring"]
        )
        key = suite.create_api_key(name="fault-matrix", roles=("admin",))
        yield FaultSuite(
            suite=suite,
            database_proxy=proxy,
            direct_database_url=module_database,
            redis=redis,
            redis_proxy=redis_proxy,
            api_key=key,
        )
    finally:
        suite.stop_all()
        if os.environ.get(KEEP_LOGS):
            suite.keep_logs(Path(os.environ[KEEP_LOGS]) / "fault-matrix")
        if redis is not None:
            redis.kill()
        if redis_proxy is not None:
            redis_proxy.close()
        proxy.close()
