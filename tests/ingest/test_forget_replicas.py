"""ForgetSubject reaches every ingest replica: gdpr tells one, the shared PostgreSQL database tells
the others (a second, real ingest process here) within a poll interval."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from awareness.gdpr.v1 import gdpr_pb2, gdpr_pb2_grpc
from awareness.ingest.v1 import ingest_pb2

from tests.conftest import free_port
from tests.ingest.harness import FAST_INGEST, Suite, eventually, make_event, suite

State = ingest_pb2.Event.PersonalDataState


@contextmanager
def ingest_process(running: Suite, port: int) -> Iterator[subprocess.Popen[bytes]]:
    """`awareness serve ingest` as its own OS process on the suite's database, caching keys for as
    long as gdpr allows (60 s): only the forget can make it drop them sooner."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AWARENESS_") and k != "DATABASE_URL"},
        **running.env(
            **FAST_INGEST,
            AWARENESS_GRPC_PORT=str(port),
            AWARENESS_INGEST_KEY_CACHE_SECONDS="3600",
            AWARENESS_INGEST_ENRICHMENT="false",
            AWARENESS_INGEST_ANALYTICS="false",
        ),
    }
    command = [
        sys.executable,
        "-c",
        "import sys; from services.cli import main; sys.exit(main(['serve', 'ingest']))",
    ]
    log = (running.data_dir / "ingest-b.log").open("wb")
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)
        log.close()


@pytest.mark.postgres
async def test_an_erasure_through_gdpr_reaches_the_replica_it_did_not_call(
    tmp_path: Path, fresh_postgres_db: str
) -> None:
    async with suite(tmp_path, database_url=fresh_postgres_db) as running:
        port = free_port()
        with ingest_process(running, port) as process:
            other = running.client(address=f"127.0.0.1:{port}")
            event = make_event(subject="judy@example.org")

            async def appended() -> bool:
                assert process.poll() is None, (running.data_dir / "ingest-b.log").read_text()
                try:
                    await other.AppendEvent(ingest_pb2.AppendEventRequest(event=event))
                except grpc.aio.AioRpcError:
                    return False
                return True

            await eventually(appended, timeout=60, interval=0.2, what="the second ingest process")
            name = f"events/{event.event_id}"
            before = await other.GetEvent(ingest_pb2.GetEventRequest(name=name))
            assert (
                before.personal_data_state == State.PERSONAL_DATA_STATE_AVAILABLE
            )  # its key is cached there

            gdpr = gdpr_pb2_grpc.GdprServiceStub(running.channel("gdpr", roles=("dpo",)))
            erasure = await gdpr.EraseSubject(
                gdpr_pb2.EraseSubjectRequest(
                    subject="judy@example.org", reason="Art. 17 request", request_id=str(uuid.uuid4())
                )
            )
            assert erasure.events_affected == 1  # gdpr told the in-process replica, not this one

            async def erased_there() -> bool:
                read = await other.GetEvent(ingest_pb2.GetEventRequest(name=name))
                return bool(read.personal_data_state == State.PERSONAL_DATA_STATE_ERASED)

            # Bounded poll: the forget travels by the database; the cache alone would hold the key 60 s.
            await eventually(erased_there, timeout=10, interval=0.1, what="the other replica to forget")

            # Nor does it seal anything more under the shredded key: the person comes back as new.
            again = make_event(subject="judy@example.org")
            await other.AppendEvent(ingest_pb2.AppendEventRequest(event=again))
            read = await other.GetEvent(ingest_pb2.GetEventRequest(name=f"events/{again.event_id}"))
            assert read.personal_data_state == State.PERSONAL_DATA_STATE_AVAILABLE
            assert read.subject_pseudonym != before.subject_pseudonym
