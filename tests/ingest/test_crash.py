"""SIGKILL the ingest process in the middle of a stream: every acknowledged event is there exactly
once after the restart, and the tree still verifies. Real processes: signing, gdpr and ingest."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from awareness.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.runtime import auth
from services.runtime.identity import channel_options
from tests.conftest import IDENTITY_ENV, free_port
from tests.ingest import rfc6962_reference as reference
from tests.ingest.harness import make_event
from tests.support.servers import identity_of, mtls_channel

REPO = Path(__file__).resolve().parents[2]
SERVICE_NAMES = {
    "signing": "awareness.signing.v1.SigningService",
    "gdpr": "awareness.gdpr.v1.GdprService",
    "ingest": "awareness.ingest.v1.IngestService",
}
pytestmark = [pytest.mark.e2e, pytest.mark.slow]


class Processes:
    def __init__(self, data_dir: Path, database_url: str | None) -> None:
        self.data_dir = data_dir
        self.ports = {name: free_port() for name in (*SERVICE_NAMES, "scoring", "policy")}
        self.database_url = database_url
        self.running: dict[str, subprocess.Popen[bytes]] = {}

    def env(self, name: str) -> dict[str, str]:
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "AWARENESS_DATA_DIR": str(self.data_dir),
            **IDENTITY_ENV,
            "AWARENESS_GRPC_PORT": str(self.ports[name]),
            "AWARENESS_METRICS_PORT": "0",
            "AWARENESS_HEALTH_PROBE_SECONDS": "0.2",
            "AWARENESS_INGEST_INTEGRATE_INTERVAL_MS": "50",
            "AWARENESS_INGEST_CHECKPOINT_INTERVAL_MS": "200",
            **{f"AWARENESS_{svc.upper()}_TARGET": f"127.0.0.1:{port}" for svc, port in self.ports.items()},
        }
        env.pop("DATABASE_URL", None)
        if self.database_url:
            env["DATABASE_URL"] = self.database_url
        return env

    def start(self, name: str) -> None:
        log = (self.data_dir / f"{name}.log").open("ab")
        self.running[name] = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "serve", name],
            cwd=REPO,
            env=self.env(name),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.wait_serving(name)

    def wait_serving(self, name: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        address = f"127.0.0.1:{self.ports[name]}"
        while time.monotonic() < deadline:
            process = self.running[name]
            if process.poll() is not None:
                raise AssertionError(f"{name} exited: {(self.data_dir / f'{name}.log').read_text()[-3000:]}")
            try:
                # Probed as the service itself, as the launcher does.
                with grpc.secure_channel(
                    address, identity_of(name).channel_credentials(), options=channel_options(name)
                ) as channel:
                    reply = health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(service=SERVICE_NAMES[name]), timeout=1
                    )
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"{name} did not become healthy")

    def kill(self, name: str) -> None:
        process = self.running.pop(name)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)

    def stop_all(self) -> None:
        for process in self.running.values():
            process.terminate()
        for process in self.running.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        self.running.clear()


@pytest.fixture
def processes(tmp_path: Path, database_url: str | None) -> Iterator[Processes]:
    running = Processes(tmp_path, database_url)
    try:
        for name in ("signing", "gdpr", "ingest"):
            running.start(name)
        yield running
    finally:
        running.stop_all()


def metadata(roles: frozenset[str] = frozenset({"integration"})) -> list[tuple[str, str]]:
    """The principal ``t`` with ``roles``, as the gateway (whose certificate the channel carries)
    names it."""
    return auth.principal_metadata(auth.Principal("t", roles))


async def test_sigkill_mid_stream_loses_no_acknowledged_event(processes: Processes) -> None:
    address = f"127.0.0.1:{processes.ports['ingest']}"
    batches = [
        [make_event(subject=f"user{(b * 7 + i) % 13}@example.org") for i in range(40)] for b in range(400)
    ]
    acknowledged: list[str] = []
    killed = asyncio.Event()

    async def requests() -> AsyncIterator[ingest_pb2.AppendEventsRequest]:
        for batch in batches:
            yield ingest_pb2.AppendEventsRequest(events=batch)
            await asyncio.sleep(0.005)

    async def kill_after_some_acknowledgements() -> None:
        while len(acknowledged) < 15 * 40:
            await asyncio.sleep(0.01)
        await asyncio.to_thread(processes.kill, "ingest")
        killed.set()

    killer = asyncio.create_task(kill_after_some_acknowledgements())
    async with mtls_channel(address, server="ingest") as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        with contextlib.suppress(grpc.aio.AioRpcError):
            async for answer in stub.StreamAppendEvents(requests(), metadata=metadata()):
                for result in answer.results:
                    assert result.WhichOneof("result") == "receipt"
                    acknowledged.append(result.receipt.event_id)
    await asyncio.wait_for(killer, timeout=60)
    assert killed.is_set()
    sent_batches = len(acknowledged) // 40
    assert 15 <= sent_batches < len(batches), "the stream must have been cut in the middle"

    await asyncio.to_thread(processes.start, "ingest")
    async with mtls_channel(address, server="ingest") as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        reader = frozenset({"auditor", "analyst"})
        for event_id in acknowledged:
            receipt = await stub.GetReceipt(
                ingest_pb2.GetReceiptRequest(name=f"events/{event_id}"),
                metadata=metadata(reader),
            )
            assert receipt.event_id == event_id
        # Re-sending everything that was sent (acknowledged or not) stores each event once.
        resend = [event for batch in batches[: sent_batches + 3] for event in batch]
        for start in range(0, len(resend), 200):
            answer = await stub.AppendEvents(
                ingest_pb2.AppendEventsRequest(events=resend[start : start + 200]),
                metadata=metadata(),
            )
            for event, result in zip(resend[start : start + 200], answer.results, strict=True):
                assert result.receipt.event_id == event.event_id
                if event.event_id in acknowledged:
                    assert result.replayed
        expected = len(resend)

        async def latest() -> Any:
            try:
                checkpoint = await stub.GetCheckpoint(
                    ingest_pb2.GetCheckpointRequest(), metadata=metadata(reader)
                )
            except grpc.aio.AioRpcError:
                return None
            return checkpoint if checkpoint.tree_size >= expected else None

        deadline = time.monotonic() + 60
        checkpoint = None
        while checkpoint is None and time.monotonic() < deadline:
            checkpoint = await latest()
            await asyncio.sleep(0.2)
        assert checkpoint is not None, "the restarted ingest must integrate and checkpoint everything"
        assert checkpoint.tree_size == expected  # exactly once: no event is stored or integrated twice

        leaves: dict[int, bytes] = {}
        for leaf_index in range(expected):
            proof = await stub.GetInclusionProof(
                ingest_pb2.GetInclusionProofRequest(leaf_index=leaf_index, tree_size=expected),
                metadata=metadata(reader),
            )
            leaves[leaf_index] = proof.leaf_data
        assert reference.mth([leaves[i] for i in range(expected)]) == checkpoint.root_hash
        sample = await stub.GetInclusionProof(
            ingest_pb2.GetInclusionProofRequest(event_id=acknowledged[-1], tree_size=expected),
            metadata=metadata(reader),
        )
        assert reference.verify_path(
            leaf_hash=sample.leaf_hash,
            m=sample.leaf_index,
            n=expected,
            audit_path=list(sample.hashes),
            root=checkpoint.root_hash,
        )
    event_ids = {__import__("json").loads(data)["event_id"] for data in leaves.values()}
    assert set(acknowledged) <= event_ids and len(event_ids) == expected

    url = processes.database_url or f"sqlite:///{processes.data_dir / 'ingest.db'}"
    verify = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "services.cli", "verify", "--database", url, "--quiet"],
        cwd=REPO,
        env=processes.env("ingest"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert f"{expected} records re-hashed" in verify.stdout
