from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from awareness.signing.v1 import signing_pb2_grpc
from sqlalchemy import Engine

from services.runtime import auth
from services.runtime.clients import ChannelFactory
from services.runtime.config import load_settings
from services.runtime.health import HealthReporter
from services.runtime.metrics import ServiceMetrics
from services.runtime.server import ServiceApp, build_context, create_server
from services.signing.app import create_app
from services.signing.domain.pki import Keyring, PkiPaths, init_pki, load_keyring
from services.signing.domain.tsa import SerialSource
from tests.conftest import INTERNAL_SECRET


@pytest.fixture(scope="module")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("pki")
    init_pki(directory, common_name_prefix="Awareness Test")
    return directory


@pytest.fixture(scope="module")
def pki_paths(pki_dir: Path) -> PkiPaths:
    # init_pki is idempotent: this returns the paths of what the pki_dir fixture created.
    return init_pki(pki_dir, common_name_prefix="Awareness Test")


@pytest.fixture(scope="module")
def keyring(pki_dir: Path) -> Keyring:
    return load_keyring(pki_dir)


# -- the signing service over real gRPC (in-process server) ----------------------------------------

TEST_ORIGIN = "awareness.test/log"


@dataclass
class SigningHarness:
    """One signing service on a real port, and clients that call it as a given role."""

    address: str
    data_dir: Path
    pki_dir: Path
    engine: Engine
    metrics: ServiceMetrics
    app: ServiceApp
    _factories: list[ChannelFactory] = field(default_factory=list)

    @property
    def root_certificate(self) -> Path:
        return self.pki_dir / "root-ca.pem"

    def stub(self, role: str = "service") -> signing_pb2_grpc.SigningServiceStub:
        factory = ChannelFactory(
            targets={"signing": self.address},
            identity=auth.Principal(subject=f"test-{role}", roles=frozenset({role})),
            internal_secret=INTERNAL_SECRET,
            timeout_seconds=20.0,
            attempts=1,
            breaker_fail_max=100,
            breaker_reset_seconds=1.0,
        )
        self._factories.append(factory)
        return signing_pb2_grpc.SigningServiceStub(factory.channel("signing"))

    def metric(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    async def close_clients(self) -> None:
        for factory in self._factories:
            await factory.close()


StartSigning = Callable[..., Awaitable[SigningHarness]]


@pytest.fixture
async def start_signing(tmp_path: Path) -> AsyncIterator[StartSigning]:
    """Start signing services (each with its own data dir unless one is given); all stopped after."""
    running: list[tuple[grpc.aio.Server, HealthReporter, SigningHarness]] = []

    async def _start(
        *,
        data_dir: Path | None = None,
        database_url: str | None = None,
        serial_source: SerialSource | None = None,
        **env_extra: str,
    ) -> SigningHarness:
        directory = data_dir or tmp_path / f"signing-{len(running)}"
        env = {
            "AWARENESS_DATA_DIR": str(directory),
            "AWARENESS_INTERNAL_SECRET": INTERNAL_SECRET.decode(),
            "AWARENESS_HEALTH_PROBE_SECONDS": "0.2",
            "AWARENESS_LOG_ORIGIN": TEST_ORIGIN,
            **env_extra,
        }
        if database_url is not None:
            env["AWARENESS_SIGNING_DATABASE_URL"] = database_url
        settings = load_settings("signing", env)
        context = build_context(settings)
        app = create_app(context, serial_source=serial_source)
        server, health, port = create_server(app, context, port=0)
        await server.start()
        await health.check_once()
        assert context.engine is not None
        harness = SigningHarness(
            address=f"127.0.0.1:{port}",
            data_dir=directory,
            pki_dir=Path(env.get("AWARENESS_PKI_DIR") or directory / "pki"),
            engine=context.engine,
            metrics=context.metrics,
            app=app,
        )
        running.append((server, health, harness))
        return harness

    yield _start
    for server, health, harness in running:
        await harness.close_clients()
        await health.shutdown()
        await server.stop(0)
        if harness.app.on_stop is not None:
            await harness.app.on_stop()
        harness.engine.dispose()


@pytest.fixture
async def signing(start_signing: StartSigning) -> SigningHarness:
    return await start_signing()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str | None:
    """None (the embedded SQLite file) or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return None
    url: str = request.getfixturevalue("fresh_postgres_db")
    return url


def copy_pki(source: Path, destination: Path) -> Path:
    shutil.copytree(source, destination)
    return destination
