"""Issue 4 end to end, against the real signing, gdpr, policy, scoring and ingest services.

In order: 1 ingest events for a subject; 2 export them and find the plaintext; 3 erase the subject;
4 export again: NOT_FOUND; 5 read the events: personal fields marked erased; 6 verify the whole log and
every earlier receipt (inclusion proofs against signed checkpoints, consistency of the old checkpoint with
the new); 7 a raw dump of every database holds no trace of the identifier, summary text or detail values,
and on PostgreSQL neither does any file of the server (data files and WAL, after a CHECKPOINT).
Also: withdrawing consent stops scoring for that subject (scoring asks gdpr before it scores).
"""

from __future__ import annotations

import asyncio
import functools
import json
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from awareness.gdpr.v1 import gdpr_pb2, gdpr_pb2_grpc
from awareness.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from awareness.signing.v1 import signing_pb2, signing_pb2_grpc
from google.protobuf import timestamp_pb2

from services.evidence.checkpoint import CheckpointBody, NoteVerifier, verify_checkpoint
from services.ingest.domain.merkle import leaf_hash, verify_consistency, verify_inclusion
from services.ingest.verify import TrustedKeys, verify_database
from services.runtime.auth import Principal
from services.runtime.db import transaction
from services.scoring.domain.generator import GeneratorConfig, generate
from services.scoring.domain.training import TrainingResult, train
from services.scoring.models import ModelStatus
from services.scoring.training_job import register_result
from tests.gdpr.dumps import pg_dump, postgres_files_holding
from tests.gdpr.suite import Suite, in_process_suite

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

T = TypeVar("T")
INTEGRATION = Principal(subject="integration:mail-gateway", roles=frozenset({"integration"}))
ANALYST = Principal(subject="analyst:alan", roles=frozenset({"analyst"}))
AUDITOR = Principal(subject="auditor:audrey", roles=frozenset({"auditor"}))
DPO = Principal(subject="dpo:dana", roles=frozenset({"dpo"}))
SERVICES = ("signing", "gdpr", "policy", "scoring", "ingest")
EVENTS_OF_SUBJECT = 4
FAST_LOG = {
    "AWARENESS_INGEST_INTEGRATE_INTERVAL_MS": "50",
    "AWARENESS_INGEST_CHECKPOINT_EVERY": "1",
    "AWARENESS_INGEST_CHECKPOINT_INTERVAL_MS": "100",
    "AWARENESS_INGEST_RECONCILE_INTERVAL_SECONDS": "0.5",
    "AWARENESS_INGEST_RECONCILE_SETTLE_SECONDS": "0",
    "AWARENESS_GDPR_ERASURE_RETRY_SECONDS": "0.5",
    # A small seeded model is registered below instead of the default one trained at first start.
    "AWARENESS_SCORING_BOOTSTRAP_MODEL": "0",
    "AWARENESS_SCORING_RELOAD_SECONDS": "0.5",
}


def small_model() -> TrainingResult:
    dataset = generate(GeneratorConfig(people=60, days=21, seed=5))
    return train(
        events=dataset.inputs, labels=dataset.labels, seed=5, folds=2, algorithms=("gradient_boosting",)
    )


def register_champion(suite: Suite, model: TrainingResult) -> None:
    sessions = suite.services["scoring"].context.sessions
    assert sessions is not None
    with transaction(sessions) as session:
        register_result(session, result=model, status=ModelStatus.CHAMPION)


async def eventually(probe: Callable[[], Awaitable[T | None]], *, what: str, seconds: float = 60.0) -> T:
    """Poll until ``probe`` returns a value (bounded; the test never waits forever)."""
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        value = await probe()
        if value is not None:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


def timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


class Clients:
    def __init__(self, suite: Suite) -> None:
        self.ingest = ingest_pb2_grpc.IngestServiceStub(suite.channel("ingest", INTEGRATION))
        self.events = ingest_pb2_grpc.IngestServiceStub(suite.channel("ingest", ANALYST))
        self.audit = ingest_pb2_grpc.IngestServiceStub(suite.channel("ingest", AUDITOR))
        self.gdpr = gdpr_pb2_grpc.GdprServiceStub(suite.channel("gdpr", DPO))
        self.signing = signing_pb2_grpc.SigningServiceStub(suite.channel("signing", AUDITOR))

    async def export(self, subject: str) -> dict[str, Any]:
        request = gdpr_pb2.ExportSubjectRequest(subject=subject, reason="Art. 20 request, ticket DPO-100")
        chunks = [reply.data async for reply in self.gdpr.ExportSubject(request)]
        document: dict[str, Any] = json.loads(b"".join(chunks))
        return document

    async def checkpointed(self, event_id: str) -> ingest_pb2.Receipt | None:
        receipt = await self.audit.GetReceipt(ingest_pb2.GetReceiptRequest(name=f"events/{event_id}"))
        return receipt if receipt.state == ingest_pb2.Receipt.STATE_CHECKPOINTED else None

    async def note_verifiers(self) -> list[NoteVerifier]:
        keys = await self.signing.ListPublicKeys(signing_pb2.ListPublicKeysRequest())
        return [
            NoteVerifier.from_vkey(key.note_verifier_key) for key in keys.public_keys if key.note_verifier_key
        ]


def event(subject: str, *, summary: str, details: dict[str, str], minutes_ago: int) -> ingest_pb2.Event:
    return ingest_pb2.Event(
        event_id=str(uuid.uuid4()),
        type="phishing.clicked",
        source="mail-gateway",
        subject=subject,
        occurred_at=timestamp(datetime.now(UTC) - timedelta(minutes=minutes_ago)),
        severity=ingest_pb2.SEVERITY_HIGH,
        summary=summary,
        details=details,
    )


def verified_checkpoint(checkpoint: Any, verifiers: list[NoteVerifier]) -> CheckpointBody:
    body = verify_checkpoint(checkpoint.note, verifier_keys=verifiers)
    assert (body.tree_size, body.root_hash) == (checkpoint.tree_size, checkpoint.root_hash)
    return body


async def test_erasure_end_to_end_keeps_the_log_verifiable_and_leaves_no_trace(
    tmp_path: Path, database_url: str
) -> None:
    marker = uuid.uuid4().hex
    identifier = f"erin.{marker[:12]}@corp.example"
    summary_text = f"summary-{marker}"
    detail_value = f"detail-{marker}"
    note_text = f"note-{marker}"
    bystander = f"bob.{uuid.uuid4().hex[:12]}@corp.example"
    objector = f"olga.{uuid.uuid4().hex[:12]}@corp.example"
    data_dir = tmp_path / "var"
    model = await asyncio.to_thread(small_model)

    async with in_process_suite(data_dir, services=SERVICES, database_url=database_url, **FAST_LOG) as suite:
        clients = Clients(suite)
        register_champion(suite, model)

        # --- 1. ingest events for the subject (and a bystander, and a subject who objected) ---
        await clients.gdpr.WithdrawConsent(
            gdpr_pb2.WithdrawConsentRequest(subject=objector, purpose="profiling", reason="objection DPO-99")
        )
        batch = [
            event(
                identifier,
                summary=f"{summary_text} #{i}",
                details={"url": f"https://x.example/{detail_value}"},
                minutes_ago=10 + i,
            )
            for i in range(EVENTS_OF_SUBJECT)
        ]
        batch.append(
            event(bystander, summary="bystander clicked", details={"url": "https://y.example"}, minutes_ago=3)
        )
        batch.append(event(objector, summary="objector clicked", details={}, minutes_ago=2))
        appended = await clients.ingest.AppendEvents(ingest_pb2.AppendEventsRequest(events=batch))
        assert [r.WhichOneof("result") for r in appended.results] == ["receipt"] * len(batch), appended
        subject_ids = [e.event_id for e in batch[:EVENTS_OF_SUBJECT]]
        bystander_id, objector_id = batch[-2].event_id, batch[-1].event_id
        receipts = {
            e.event_id: await eventually(
                functools.partial(clients.checkpointed, e.event_id), what="checkpointed receipts"
            )
            for e in batch
        }
        await clients.events.LabelEvent(
            ingest_pb2.LabelEventRequest(
                name=f"events/{subject_ids[0]}", label=ingest_pb2.LABEL_TRUE_POSITIVE, note=note_text
            )
        )
        labelled = await clients.events.GetEvent(ingest_pb2.GetEventRequest(name=f"events/{subject_ids[0]}"))
        assert labelled.metadata.label_note == note_text  # kept, so step 7 looks for something real
        checkpoint_before = await clients.audit.GetCheckpoint(ingest_pb2.GetCheckpointRequest())

        # Withdrawing consent stops scoring for that subject; the others are scored.
        async def scoring_decided(event_id: str) -> ingest_pb2.Event | None:
            read = await clients.events.GetEvent(ingest_pb2.GetEventRequest(name=f"events/{event_id}"))
            pending = ingest_pb2.EventMetadata.SCORING_STATE_PENDING
            return read if read.metadata.scoring_state != pending else None

        decided = {
            event_id: await eventually(
                functools.partial(scoring_decided, event_id), what="scoring", seconds=120
            )
            for event_id in [*subject_ids, bystander_id, objector_id]
        }
        objector_event = decided[objector_id]
        assert objector_event.metadata.scoring_state == ingest_pb2.EventMetadata.SCORING_STATE_SKIPPED
        assert "consent" in objector_event.metadata.scoring_note
        scored = ingest_pb2.EventMetadata.SCORING_STATE_SCORED
        assert {decided[e].metadata.scoring_state for e in [*subject_ids, bystander_id]} == {scored}

        # --- 2. export and find the plaintext ---
        exported = await clients.export(identifier)
        events = {item["event_id"]: item for item in exported["events"]}
        assert sorted(events) == sorted(subject_ids)
        assert {item["personal_data"] for item in events.values()} == {"available"}
        assert {item["subject"] for item in events.values()} == {identifier}
        assert sorted(item["summary"] for item in events.values()) == [
            f"{summary_text} #{i}" for i in range(4)
        ]
        assert {item["details"]["url"] for item in events.values()} == {f"https://x.example/{detail_value}"}
        assert events[subject_ids[0]]["metadata"]["label"] == "LABEL_TRUE_POSITIVE"
        assert all(item["metadata"]["scoring_state"] == "SCORING_STATE_SCORED" for item in events.values())
        assert all(0.0 <= item["metadata"].get("risk_score", 0.0) <= 1.0 for item in events.values())
        assert all("evaluation_state" in item["metadata"] for item in events.values())
        assert exported["subject"]["identifier"] == identifier

        # --- 3. erase ---
        record = await clients.gdpr.EraseSubject(
            gdpr_pb2.EraseSubjectRequest(
                subject=identifier, reason="Art. 17 request, ticket DPO-101", request_id=str(uuid.uuid4())
            )
        )
        assert record.events_affected == EVENTS_OF_SUBJECT
        assert record.keys_shredded >= 1 and record.actor == DPO.subject
        assert record.log_event_id, "the erasure record was appended to the log"

        # --- 4. export again: NOT_FOUND ---
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await clients.export(identifier)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND

        # --- 5. read the events: personal fields marked erased, the rest intact ---
        for event_id in subject_ids:
            read = await clients.events.GetEvent(ingest_pb2.GetEventRequest(name=f"events/{event_id}"))
            assert read.personal_data_state == ingest_pb2.Event.PERSONAL_DATA_STATE_ERASED
            assert (read.subject, read.summary, dict(read.details)) == ("", "", {})
            assert (read.type, read.source, read.subject_pseudonym) == (
                "phishing.clicked",
                "mail-gateway",
                record.pseudonym,
            )
        other = await clients.events.GetEvent(ingest_pb2.GetEventRequest(name=f"events/{bystander_id}"))
        assert other.personal_data_state == ingest_pb2.Event.PERSONAL_DATA_STATE_AVAILABLE
        assert other.subject == bystander
        erasure_event = await clients.events.GetEvent(
            ingest_pb2.GetEventRequest(name=f"events/{record.log_event_id}")
        )
        assert (erasure_event.type, erasure_event.subject_pseudonym) == ("gdpr.erasure", record.pseudonym)
        assert erasure_event.details["erasure"] == record.name

        # --- 6. the whole log and every earlier receipt still verify ---
        await eventually(
            lambda: clients.checkpointed(record.log_event_id), what="the erasure event checkpointed"
        )
        verifiers = await clients.note_verifiers()
        latest = await clients.audit.GetCheckpoint(ingest_pb2.GetCheckpointRequest())
        latest_body = verified_checkpoint(latest, verifiers)
        before_body = verified_checkpoint(checkpoint_before, verifiers)
        assert latest_body.tree_size > before_body.tree_size
        consistency = await clients.audit.GetConsistencyProof(
            ingest_pb2.GetConsistencyProofRequest(
                first_tree_size=before_body.tree_size, second_tree_size=latest_body.tree_size
            )
        )
        assert verify_consistency(
            old_size=before_body.tree_size,
            new_size=latest_body.tree_size,
            old_root=before_body.root_hash,
            new_root=latest_body.root_hash,
            proof=list(consistency.hashes),
        )
        for event_id, receipt in receipts.items():
            # Against the latest checkpoint, and against the checkpoint the receipt was issued with.
            for checkpoint in (latest, receipt.checkpoint):
                body = verified_checkpoint(checkpoint, verifiers)
                proof = await clients.audit.GetInclusionProof(
                    ingest_pb2.GetInclusionProofRequest(event_id=event_id, tree_size=body.tree_size)
                )
                assert leaf_hash(proof.leaf_data) == proof.leaf_hash == receipt.leaf_hash
                assert proof.leaf_index == receipt.leaf_index
                assert verify_inclusion(
                    leaf_hash=receipt.leaf_hash,
                    leaf_index=receipt.leaf_index,
                    tree_size=body.tree_size,
                    proof=list(proof.hashes),
                    root=body.root_hash,
                ), event_id
        ingest_engine = suite.services["ingest"].context.engine
        assert ingest_engine is not None
        report = verify_database(ingest_engine, keys=TrustedKeys(verifiers=verifiers), progress=None)
        assert report.ok, report.failure

        # --- 7. no trace of the identifier, summary or detail values in any database ---
        secrets = [
            identifier.encode(),
            summary_text.encode(),
            detail_value.encode(),
            note_text.encode(),
            marker.encode(),
        ]
        files = [path for path in data_dir.rglob("*") if path.is_file()]
        assert any(path.name == "gdpr.db" for path in files) or database_url
        for path in files:
            raw = path.read_bytes()
            leaked = [value.decode() for value in secrets if value in raw]
            assert not leaked, f"{path.relative_to(data_dir)} holds {leaked}"
        if database_url:
            dump = pg_dump(database_url)
            assert b"awareness_gdpr" in dump and b"awareness_ingest" in dump  # the dump covers both
            assert not [value for value in secrets if value in dump]
            # The server's own files too: dead tuples, free space and WAL outlive a dump's view.
            files_holding = postgres_files_holding(database_url, [value.decode() for value in secrets])
            assert not files_holding, files_holding
