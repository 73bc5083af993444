"""RFC 6962 proofs through the API for every leaf of every tree of size 1 to 64, checked with the
independent reference verifier of these tests (and the roots against pymerkle)."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from awareness.ingest.v1 import ingest_pb2
from awareness.signing.v1 import signing_pb2, signing_pb2_grpc
from pymerkle import InmemoryTree
from sqlalchemy import event

from services.evidence.checkpoint import NoteVerifier, verify_checkpoint
from tests.ingest import rfc6962_reference as reference
from tests.ingest.harness import eventually, make_event, suite

T = TypeVar("T")
TREE = 64


async def gather_limited(calls: Sequence[Callable[[], Awaitable[T]]], *, limit: int = 16) -> list[T]:
    semaphore = asyncio.Semaphore(limit)

    async def run(call: Callable[[], Awaitable[T]]) -> T:
        async with semaphore:
            return await call()

    return await asyncio.gather(*(run(call) for call in calls))


async def fill_tree(running: Any, size: int) -> list[bytes]:
    """Append `size` events in a few batches, wait until all are leaves; return each leaf's data."""
    client = running.client()
    events = [make_event(subject=f"user{i % 7}@example.org") for i in range(size)]
    for start in range(0, size, 20):
        await client.AppendEvents(ingest_pb2.AppendEventsRequest(events=events[start : start + 20]))

    async def integrated() -> bool:
        try:
            await client.GetInclusionProof(
                ingest_pb2.GetInclusionProofRequest(leaf_index=size - 1, tree_size=size)
            )
            return True
        except grpc.aio.AioRpcError:
            return False

    await eventually(integrated, what=f"{size} leaves")
    proofs = await gather_limited(
        [
            functools.partial(
                client.GetInclusionProof, ingest_pb2.GetInclusionProofRequest(leaf_index=i, tree_size=size)
            )
            for i in range(size)
        ]
    )
    return [proof.leaf_data for proof in proofs]


async def test_inclusion_and_consistency_proofs_for_every_leaf_of_trees_1_to_64(
    tmp_path: Path, database_url: str | None
) -> None:
    async with suite(tmp_path, database_url=database_url) as running:
        client = running.client()
        entries = await fill_tree(running, TREE)
        assert len(set(entries)) == TREE
        pymerkle_tree = InmemoryTree(algorithm="sha256")
        for entry in entries:
            pymerkle_tree.append_entry(entry)

        roots = {n: reference.mth(entries[:n]) for n in range(1, TREE + 1)}
        for n, root in roots.items():
            assert pymerkle_tree.get_root(n) == root

        pairs = [(m, n) for n in range(1, TREE + 1) for m in range(n)]
        inclusion = await gather_limited(
            [
                functools.partial(
                    client.GetInclusionProof, ingest_pb2.GetInclusionProofRequest(leaf_index=m, tree_size=n)
                )
                for m, n in pairs
            ]
        )
        for (m, n), proof in zip(pairs, inclusion, strict=True):
            assert (proof.leaf_index, proof.tree_size) == (m, n)
            assert proof.leaf_data == entries[m]
            assert proof.leaf_hash == reference.mth([entries[m]])
            assert list(proof.hashes) == reference.path(m, entries[:n])
            assert reference.verify_path(
                leaf_hash=proof.leaf_hash, m=m, n=n, audit_path=list(proof.hashes), root=roots[n]
            )

        consistency_pairs = [(m, n) for n in range(1, TREE + 1) for m in range(1, n + 1)]
        consistency = await gather_limited(
            [
                functools.partial(
                    client.GetConsistencyProof,
                    ingest_pb2.GetConsistencyProofRequest(first_tree_size=m, second_tree_size=n),
                )
                for m, n in consistency_pairs
            ]
        )
        for (m, n), proof in zip(consistency_pairs, consistency, strict=True):
            assert list(proof.hashes) == (reference.proof(m, entries[:n]) if m < n else [])
            assert reference.verify_proof(
                m=m, n=n, consistency=list(proof.hashes), old_root=roots[m], new_root=roots[n]
            )


async def test_a_proof_by_event_id_comes_with_the_signed_checkpoint_of_its_size(
    tmp_path: Path, database_url: str | None
) -> None:
    async with suite(tmp_path, database_url=database_url) as running:
        client = running.client()
        entries = await fill_tree(running, 5)

        async def checkpoint_of_five() -> Any:
            try:
                return await client.GetCheckpoint(ingest_pb2.GetCheckpointRequest(tree_size=5))
            except grpc.aio.AioRpcError:
                return None

        checkpoint = await eventually(checkpoint_of_five, what="a checkpoint of size 5")
        keys = await signing_pb2_grpc.SigningServiceStub(running.channel("signing")).ListPublicKeys(
            signing_pb2.ListPublicKeysRequest()
        )
        verifiers = [
            NoteVerifier.from_vkey(k.note_verifier_key) for k in keys.public_keys if k.note_verifier_key
        ]
        body = verify_checkpoint(checkpoint.note, verifier_keys=verifiers)
        assert (body.tree_size, body.root_hash) == (5, reference.mth(entries))
        assert checkpoint.root_hash == body.root_hash

        receipt_id = __import__("json").loads(entries[2])["event_id"]
        proof = await client.GetInclusionProof(
            ingest_pb2.GetInclusionProofRequest(event_id=receipt_id, tree_size=5)
        )
        assert proof.leaf_index == 2 and proof.checkpoint.note == checkpoint.note
        assert reference.verify_path(
            leaf_hash=proof.leaf_hash, m=2, n=5, audit_path=list(proof.hashes), root=body.root_hash
        )
        latest = await client.GetCheckpoint(ingest_pb2.GetCheckpointRequest())
        assert latest.tree_size == 5
        listed = await client.ListCheckpoints(ingest_pb2.ListCheckpointsRequest(page_size=1))
        assert [c.tree_size for c in listed.checkpoints] == [5]

        for bad in (
            ingest_pb2.GetInclusionProofRequest(leaf_index=5, tree_size=5),
            ingest_pb2.GetInclusionProofRequest(leaf_index=0, tree_size=6),
            ingest_pb2.GetInclusionProofRequest(tree_size=5),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await client.GetInclusionProof(bad)
            assert caught.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)


async def test_proofs_read_a_logarithmic_number_of_nodes_in_a_bounded_number_of_queries(
    tmp_path: Path,
) -> None:
    async with suite(tmp_path) as running:
        client = running.client()
        await fill_tree(running, 64)
        engine = running.services["ingest"].context.engine
        assert engine is not None
        statements: list[str] = []

        def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
            statements.append(statement)

        event.listen(engine, "before_cursor_execute", count)
        try:
            for m, n in ((0, 64), (37, 64), (62, 63), (5, 9)):
                statements.clear()
                proof = await client.GetInclusionProof(
                    ingest_pb2.GetInclusionProofRequest(leaf_index=m, tree_size=n)
                )
                node_reads = [s for s in statements if "tree_nodes" in s or "FROM leaves" in s]
                # A few point lookups (leaf, tree size, nodes, record, checkpoint): never a scan per leaf.
                assert len(statements) <= 8, statements
                assert len(node_reads) <= 5
                assert len(proof.hashes) <= (n - 1).bit_length()
        finally:
            event.remove(engine, "before_cursor_execute", count)


async def test_a_proof_of_an_event_beyond_the_latest_checkpoint_asks_to_retry_not_to_fix_the_request(
    tmp_path: Path,
) -> None:
    # A checkpoint every 5 leaves, else once a minute: the sixth leaf waits outside any checkpoint.
    slow = {"AWARENESS_INGEST_CHECKPOINT_EVERY": "5", "AWARENESS_INGEST_CHECKPOINT_INTERVAL_MS": "60000"}
    async with suite(tmp_path, ingest_env=slow) as running:
        client = running.client()
        await fill_tree(running, 5)

        async def checkpointed() -> Any:
            latest = await client.GetCheckpoint(ingest_pb2.GetCheckpointRequest())
            return latest if latest.tree_size == 5 else None

        await eventually(checkpointed, what="a checkpoint of size 5")
        sixth = make_event(subject="user9@example.org")
        await client.AppendEvent(ingest_pb2.AppendEventRequest(event=sixth))

        async def integrated() -> Any:
            try:
                request = ingest_pb2.GetInclusionProofRequest(leaf_index=5, tree_size=6)
                return await client.GetInclusionProof(request)
            except grpc.aio.AioRpcError:
                return None

        await eventually(integrated, what="the sixth leaf")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.GetInclusionProof(ingest_pb2.GetInclusionProofRequest(event_id=sixth.event_id))
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "checkpoint" in (caught.value.details() or "")
        # Naming a size the leaf is not in is still the caller's mistake.
        with pytest.raises(grpc.aio.AioRpcError) as named:
            await client.GetInclusionProof(
                ingest_pb2.GetInclusionProofRequest(event_id=sixth.event_id, tree_size=5)
            )
        assert named.value.code() == grpc.StatusCode.INVALID_ARGUMENT
