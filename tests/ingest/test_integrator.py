"""The integrator: checkpoints wait for signing and catch up; one leader among replicas (PostgreSQL
advisory lock); replicas racing on one event id answer idempotently."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import grpc
import pytest
from awareness.ingest.v1 import ingest_pb2
from sqlalchemy import text

from tests.conftest import free_port
from tests.ingest import rfc6962_reference as reference
from tests.ingest.harness import FAST_INGEST, eventually, make_event, start_service, suite

Receipt = ingest_pb2.Receipt


async def test_signing_down_events_are_accepted_and_integrated_and_checkpoints_catch_up(
    tmp_path: Path,
) -> None:
    async with suite(tmp_path, services=("gdpr", "ingest")) as running:
        client = running.client()
        events = [make_event() for _ in range(5)]
        await client.AppendEvents(ingest_pb2.AppendEventsRequest(events=events))
        name = f"events/{events[-1].event_id}"

        async def integrated() -> Receipt | None:
            receipt = await client.GetReceipt(ingest_pb2.GetReceiptRequest(name=name))
            return receipt if receipt.state == Receipt.STATE_INTEGRATED else None

        receipt = await eventually(integrated, what="integration without signing")
        assert receipt.HasField("leaf_index") and not receipt.HasField("checkpoint")
        await asyncio.sleep(0.3)  # several checkpoint attempts fail meanwhile
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.GetCheckpoint(ingest_pb2.GetCheckpointRequest())
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND

        await running.start("signing")

        async def checkpointed() -> Receipt | None:
            receipt = await client.GetReceipt(ingest_pb2.GetReceiptRequest(name=name))
            return receipt if receipt.state == Receipt.STATE_CHECKPOINTED else None

        final = await eventually(checkpointed, timeout=30, what="the checkpoint catching up")
        assert final.checkpoint.tree_size == 5


@pytest.mark.postgres
async def test_one_leader_integrates_for_all_replicas_and_another_takes_over(
    tmp_path: Path, fresh_postgres_db: str
) -> None:
    async with suite(tmp_path, database_url=fresh_postgres_db) as running:
        second = await start_service("ingest", running.env(**FAST_INGEST), port=free_port())
        try:
            first_runtime, second_runtime = running.ingest, second.runtime
            assert second_runtime is not None
            await eventually(
                lambda: first_runtime.integrator.is_leader or second_runtime.integrator.is_leader,
                what="a leader",
            )
            await asyncio.sleep(0.3)
            assert first_runtime.integrator.is_leader != second_runtime.integrator.is_leader
            # AwarenessIntegratorLeaderMissing sums this gauge over the replicas: exactly one reports 1.
            registries = {
                first_runtime: running.services["ingest"].context.metrics.registry,
                second_runtime: second.context.metrics.registry,
            }
            leader = "awareness_ingest_integrator_leader"
            assert {
                runtime.integrator.is_leader: registry.get_sample_value(leader)
                for runtime, registry in registries.items()
            } == {True: 1.0, False: 0.0}

            clients = [running.client(), running.client(address=second.address)]
            events = [make_event(subject=f"u{i}@example.org") for i in range(40)]
            await asyncio.gather(
                *(
                    clients[i % 2].AppendEvents(
                        ingest_pb2.AppendEventsRequest(events=events[i * 5 : i * 5 + 5])
                    )
                    for i in range(8)
                )
            )

            async def all_integrated() -> Any:
                try:
                    return await clients[1].GetInclusionProof(
                        ingest_pb2.GetInclusionProofRequest(leaf_index=39, tree_size=40)
                    )
                except grpc.aio.AioRpcError:
                    return None

            await eventually(all_integrated, what="40 leaves")
            # Stop the leader: the other replica takes the lock and integrates what comes next.
            if first_runtime.integrator.is_leader:
                await running.stop("ingest")
                survivor_runtime, survivor_client = second_runtime, clients[1]
            else:
                await second.stop()
                survivor_runtime, survivor_client = first_runtime, clients[0]
            await eventually(lambda: survivor_runtime.integrator.is_leader, what="a new leader")
            assert registries[survivor_runtime].get_sample_value(leader) == 1.0
            more = [make_event() for _ in range(3)]
            await survivor_client.AppendEvents(ingest_pb2.AppendEventsRequest(events=more))

            async def forty_three() -> list[bytes] | None:
                try:
                    return [
                        (
                            await survivor_client.GetInclusionProof(
                                ingest_pb2.GetInclusionProofRequest(leaf_index=i, tree_size=43)
                            )
                        ).leaf_data
                        for i in range(43)
                    ]
                except grpc.aio.AioRpcError:
                    return None

            entries = await eventually(forty_three, what="43 leaves")
            event_ids = {json.loads(entry)["event_id"] for entry in entries}
            assert event_ids == {e.event_id for e in [*events, *more]}
            engine = survivor_runtime.integrator._engine
            with engine.connect() as connection:
                indices = [
                    row[0] for row in connection.execute(text("SELECT leaf_index FROM leaves ORDER BY 1"))
                ]
            assert indices == list(range(43))
            root = reference.mth(entries)
            consistency = await survivor_client.GetConsistencyProof(
                ingest_pb2.GetConsistencyProofRequest(first_tree_size=40, second_tree_size=43)
            )
            assert reference.verify_proof(
                m=40,
                n=43,
                consistency=list(consistency.hashes),
                old_root=reference.mth(entries[:40]),
                new_root=root,
            )
        finally:
            await second.stop()


@pytest.mark.postgres
async def test_replicas_racing_on_one_event_id_store_it_once(tmp_path: Path, fresh_postgres_db: str) -> None:
    async with suite(tmp_path, database_url=fresh_postgres_db) as running:
        second = await start_service("ingest", running.env(**FAST_INGEST), port=free_port())
        try:
            stubs = [running.client(), running.client(address=second.address)]
            for _ in range(10):
                event = make_event()
                answers = await asyncio.gather(
                    *(stub.AppendEvent(ingest_pb2.AppendEventRequest(event=event)) for stub in stubs)
                )
                assert sorted(answer.replayed for answer in answers) == [False, True]
                assert answers[0].receipt.leaf_hash == answers[1].receipt.leaf_hash
            engine = running.ingest.integrator._engine
            with engine.connect() as connection:
                assert connection.execute(text("SELECT count(*) FROM event_records")).scalar_one() == 10
        finally:
            await second.stop()
