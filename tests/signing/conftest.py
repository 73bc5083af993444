from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from awareness.signing.v1 import signing_pb2_grpc
from sqlalchemy import Engine

from services.runtime import auth
from services.runtime.metrics import ServiceMetrics
from services.runtime.server import ServiceApp
from services.signing.app import create_app
from services.signing.domain.pki import Keyring, PkiPaths, init_pki, load_keyring
from services.signing.domain.tsa import SerialSource
from tests.support.servers import Clients, Served, service_env, start_service


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
class SigningHarness(Served):
    """One signing service on a real port, and clients that call it as a given role."""

    data_dir: Path
    pki_dir: Path
    clients: Clients

    @property
    def engine(self) -> Engine:
        assert self.context.engine is not None
        return self.context.engine

    @property
    def metrics(self) -> ServiceMetrics:
        return self.context.metrics

    @property
    def app(self) -> ServiceApp:
        return self.running.app

    @property
    def root_certificate(self) -> Path:
        return self.pki_dir / "root-ca.pem"

    def stub(self, role: str = "service") -> signing_pb2_grpc.SigningServiceStub:
        # The service role calls as ingest: the one service the protos let sign checkpoints.
        principal = (
            auth.Principal.for_service("ingest")
            if role == "service"
            else auth.Principal(subject=f"test-{role}", roles=frozenset({role}))
        )
        return signing_pb2_grpc.SigningServiceStub(self.clients.channel("signing", principal))

    def metric(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


StartSigning = Callable[..., Awaitable[SigningHarness]]


@pytest.fixture
async def start_signing(tmp_path: Path) -> AsyncIterator[StartSigning]:
    """Start signing services (each with its own data dir unless one is given); all stopped after.

    The key watcher (signing's background job) does not run: a test that needs it starts it."""
    started: list[SigningHarness] = []

    async def _start(
        *,
        data_dir: Path | None = None,
        database_url: str | None = None,
        serial_source: SerialSource | None = None,
        **env_extra: str,
    ) -> SigningHarness:
        directory = data_dir or tmp_path / f"signing-{len(started)}"
        env = service_env(directory, **{"AWARENESS_LOG_ORIGIN": TEST_ORIGIN, **env_extra})
        if database_url is not None:
            env["AWARENESS_SIGNING_DATABASE_URL"] = database_url
        running = await start_service(
            "signing",
            env,
            lambda context: create_app(context, serial_source=serial_source),
            background_jobs=False,
        )
        harness = SigningHarness(
            running=running,
            data_dir=directory,
            pki_dir=Path(env.get("AWARENESS_PKI_DIR") or directory / "pki"),
            clients=Clients({"signing": running.address}),
        )
        started.append(harness)
        return harness

    yield _start
    for harness in started:
        await harness.clients.close()
        await harness.running.stop()


@pytest.fixture
async def signing(start_signing: StartSigning) -> SigningHarness:
    return await start_signing()


@pytest.fixture
def store_url(database_url: str) -> str | None:
    """None (the embedded SQLite file) or a fresh PostgreSQL database."""
    return database_url or None


def copy_pki(source: Path, destination: Path) -> Path:
    shutil.copytree(source, destination)
    return destination
