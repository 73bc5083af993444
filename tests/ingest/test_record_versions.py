"""Record encoding versions in the log (REAL services, SQLite and PostgreSQL): system events appended
now are version 2, whose leaf covers their payload (an access record's who, what, which resource,
which outcome); client events with dimensions are version 3, whose leaf covers them, and those
without stay version 1; system events stored as version 1 before still verify, through
GetInclusionProof, ``awareness verify --proof`` and ``verify_database``."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from awareness.ingest.v1 import ingest_pb2
from awareness.signing.v1 import signing_pb2, signing_pb2_grpc
from google.protobuf import json_format
from sqlalchemy import Engine, select, text

from services.evidence.canonical import canonical_json
from services.ingest import repository
from services.ingest.domain.merkle import leaf_hash
from services.ingest.domain.records import (
    SystemPayload,
    decode_canonical_record,
    decode_system_payload,
    format_timestamp_us,
    system_payload_json,
)
from services.ingest.service.append import Accepted, PendingRow
from services.ingest.verify import verify_database
from services.runtime import audit
from tests.ingest.harness import Suite, awareness_verify, eventually, make_event, suite

ACCESS = {
    "principal": "key:auditor-7",
    "action": "subject.export",
    "resource": "exports/e-42",
    "outcome": "OK",
}


def ingest_engine(running: Suite) -> Engine:
    engine: Engine | None = running.services["ingest"].context.engine
    assert engine is not None
    return engine


def legacy_erasure_row(*, pseudonym: str, at_us: int) -> tuple[PendingRow, bytes]:
    """An erasure record as ingest stored system events before version 2: record_version 1, the
    payload spelled by json.dumps, and a leaf over the version-1 document (no payload member)."""
    event_id = str(uuid.uuid4())
    details = {"erasure": "erasures/legacy-1", "keys_shredded": "2"}
    document = {
        "ciphertext": "",
        "event_id": event_id,
        "format": "awareness.ingest.record.v1",
        "key_id": "",
        "key_period": "",
        "nonce": "",
        "occurred_at": format_timestamp_us(at_us),
        "receive_time": format_timestamp_us(at_us),
        "severity": "info",
        "source": "gdpr",
        "subject_pseudonym": pseudonym,
        "type": "gdpr.erasure",
        "v": 1,
    }
    leaf_data = canonical_json(document)
    leaf = leaf_hash(leaf_data)
    record: dict[str, object] = {
        "event_id": event_id,
        "type": "gdpr.erasure",
        "source": "gdpr",
        "occurred_at_us": at_us,
        "severity": 1,
        "subject_pseudonym": pseudonym,
        "key_period": "",
        "key_id": "",
        "nonce": b"",
        "ciphertext": b"",
        "receive_time_us": at_us,
        "content_fingerprint": "0" * 64,
        "leaf_hash": leaf,
        "record_version": 1,
        "system_payload": json.dumps({"summary": "", "details": details}, sort_keys=True),
        "dimensions": None,
    }
    metadata: dict[str, object] = {
        "event_id": event_id,
        "subject_pseudonym": pseudonym,
        "type": "gdpr.erasure",
        "source": "gdpr",
        "occurred_at_us": at_us,
        "receive_time_us": at_us,
        "severity": 1,
        "summary_length": 0,
        "detail_count": len(details),
        "risk_score": None,
        "risk_level": 0,
        "model_version": "",
        "scoring_state": repository.SCORING_SKIPPED,
        "scoring_note": "system event",
        "violations": "[]",
        "violation_count": 0,
        "evaluation_state": repository.EVALUATION_SKIPPED,
        "evaluation_note": "system event",
        "label": 0,
        "label_note": "",
        "triage_state": repository.TRIAGE_NEW,
        "labeled_by": "",
        "label_time_us": None,
        "update_time_us": at_us,
        "department": "",
        "analytics_state": repository.ANALYTICS_SKIPPED,
    }
    row = PendingRow(
        event_id=event_id,
        fingerprint="0" * 64,
        leaf_hash=leaf,
        receive_time_us=at_us,
        record=tuple(record[name] for name in repository.RECORD_COLUMNS),
        metadata=tuple(metadata[name] for name in repository.METADATA_COLUMNS),
        enrichment=None,
    )
    return row, leaf_data


def stored_rows(engine: Engine, event_ids: list[str]) -> dict[str, tuple[int, str | None]]:
    with engine.connect() as connection:
        rows = connection.execute(
            select(
                repository.RECORDS.c.event_id,
                repository.RECORDS.c.record_version,
                repository.RECORDS.c.system_payload,
            ).where(repository.RECORDS.c.event_id.in_(event_ids))
        ).all()
    return {row.event_id: (row.record_version, row.system_payload) for row in rows}


def tamper_payload(engine: Engine, *, event_id: str, payload: str | None) -> None:
    """Rewrite a stored system payload the way a database superuser could."""
    with engine.begin() as connection:
        if engine.dialect.name == "sqlite":
            connection.execute(text("DROP TRIGGER IF EXISTS event_records_refuse_update"))
        else:
            connection.execute(text("SET LOCAL session_replication_role = replica"))
        connection.execute(
            text("UPDATE event_records SET system_payload = :payload WHERE event_id = :id"),
            {"payload": payload, "id": event_id},
        )


async def checkpointed_proof(running: Suite, event_id: str) -> tuple[ingest_pb2.Receipt, Any]:
    client = running.client()

    async def receipt() -> ingest_pb2.Receipt | None:
        answer = await client.GetReceipt(ingest_pb2.GetReceiptRequest(name=f"events/{event_id}"))
        return answer if answer.HasField("checkpoint") else None

    found = await eventually(receipt, what=f"a checkpoint covering {event_id}")
    proof = await client.GetInclusionProof(
        ingest_pb2.GetInclusionProofRequest(event_id=event_id, tree_size=found.checkpoint.tree_size)
    )
    return found, proof


def verify_offline(folder: Path, name: str, proof: Any, receipt: Any, keys: Any) -> Any:
    (folder / f"{name}.proof.json").write_text(json_format.MessageToJson(proof))
    (folder / f"{name}.receipt.json").write_text(json_format.MessageToJson(receipt))
    (folder / "keys.json").write_text(json_format.MessageToJson(keys))
    return awareness_verify(
        "--proof",
        folder / f"{name}.proof.json",
        "--receipt",
        folder / f"{name}.receipt.json",
        "--keys",
        folder / "keys.json",
    )


async def test_system_events_are_version_2_and_their_leaf_covers_the_payload(
    tmp_path: Path, database_url: str | None
) -> None:
    async with suite(tmp_path / "suite", database_url=database_url) as running:
        at = datetime.now(UTC) - timedelta(minutes=1)
        # A system event stored as version 1, before version 2 existed, written directly.
        legacy, legacy_bytes = legacy_erasure_row(pseudonym="psn_legacy", at_us=repository.to_us(at))
        assert await running.ingest.committer.submit([legacy]) == [None]
        # Client events with and without dimensions, then an access record appended through ingest's
        # writer as a system event.
        client_event = make_event()
        plain_event = make_event(details={"url": "https://bonus.example/?u=1"})
        for event in (client_event, plain_event):
            await running.client().AppendEvent(ingest_pb2.AppendEventRequest(event=event))
        [access_event] = audit.audit_events(
            audit.AccessRecord(
                principal=ACCESS["principal"],
                action=ACCESS["action"],
                method="/awareness.gdpr.v1.GdprService/ExportSubject",
                resource=ACCESS["resource"],
                outcome=ACCESS["outcome"],
                time=at,
                pseudonyms=("psn_exported",),
            ),
            source="gdpr",
        )
        [outcome] = await running.ingest.writer.append([access_event], system_writer="ingest")
        assert isinstance(outcome, Accepted) and not outcome.replayed
        access_id = access_event.event_id

        engine = ingest_engine(running)
        stored = stored_rows(
            engine, [legacy.event_id, client_event.event_id, plain_event.event_id, access_id]
        )
        assert stored[client_event.event_id] == (3, None)
        assert stored[plain_event.event_id] == (1, None)
        assert stored[legacy.event_id][0] == 1
        version, payload = stored[access_id]
        assert version == 2 and payload is not None
        assert payload == system_payload_json(summary="", details=dict(access_event.details))
        assert payload.encode() == canonical_json({"details": dict(access_event.details), "summary": ""})

        # The access record's proof: its leaf data is version 2 and holds the payload as stored.
        receipt, proof = await checkpointed_proof(running, access_id)
        assert leaf_hash(proof.leaf_data) == proof.leaf_hash == receipt.leaf_hash == outcome.leaf_hash
        record = decode_canonical_record(proof.leaf_data)
        assert (record.version, record.payload, record.event_id) == (2, payload, access_id)
        assert json.loads(proof.leaf_data)["format"] == "awareness.ingest.record.v2"
        covered = decode_system_payload(payload)
        assert {name: covered.details[name] for name in ACCESS} == ACCESS
        assert covered == SystemPayload(summary="", details=dict(access_event.details))

        # The version-1 record's proof: the very bytes it was stored with, no payload member.
        legacy_receipt, legacy_proof = await checkpointed_proof(running, legacy.event_id)
        assert legacy_proof.leaf_data == legacy_bytes
        assert decode_canonical_record(legacy_proof.leaf_data).version == 1
        client_receipt, client_proof = await checkpointed_proof(running, client_event.event_id)
        client_leaf = json.loads(client_proof.leaf_data)
        assert (client_leaf["v"], client_leaf["dimensions"]) == (3, '{"campaign_id":"q3-bonus"}')
        _, plain_proof = await checkpointed_proof(running, plain_event.event_id)
        assert json.loads(plain_proof.leaf_data)["v"] == 1

        keys = await signing_pb2_grpc.SigningServiceStub(running.channel("signing")).ListPublicKeys(
            signing_pb2.ListPublicKeysRequest()
        )
        folder = tmp_path / "auditor"
        folder.mkdir()
        checked = await asyncio.to_thread(verify_offline, folder, "access", proof, receipt, keys)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert "is an awareness.ingest.record.v2 record: it covers the event's payload" in checked.stdout
        for name, value in ACCESS.items():
            assert f"leaf  details.{name} {json.dumps(value)}" in checked.stdout, checked.stdout
        legacy_checked = await asyncio.to_thread(
            verify_offline, folder, "legacy", legacy_proof, legacy_receipt, keys
        )
        assert legacy_checked.returncode == 0, legacy_checked.stdout + legacy_checked.stderr
        assert "does not cover the event's summary and details" in legacy_checked.stdout
        assert "details." not in legacy_checked.stdout
        client_checked = await asyncio.to_thread(
            verify_offline, folder, "client", client_proof, client_receipt, keys
        )
        assert client_checked.returncode == 0, client_checked.stdout + client_checked.stderr
        assert "payload" not in client_checked.stdout
        assert (
            "is an awareness.ingest.record.v3 record: it covers the event's dimensions"
            in client_checked.stdout
        )
        assert 'leaf  details.campaign_id "q3-bonus"' in client_checked.stdout
        assert "bonus.example" not in client_checked.stdout  # the personal details stay sealed

        # The whole log re-hashes: version 1 (client and legacy system) and version 2 records alike.
        report = await asyncio.to_thread(verify_database, engine, progress=None)
        assert report.ok, report.failure

        # A payload changed behind the log, even to another canonical one, is named.
        forged = system_payload_json(
            summary="", details={**access_event.details, "outcome": "PERMISSION_DENIED"}
        )
        await asyncio.to_thread(tamper_payload, engine, event_id=access_id, payload=forged)
        report = await asyncio.to_thread(verify_database, engine, progress=None)
        assert report.failure is not None
        assert f"record {access_id} (leaf index {receipt.leaf_index})" in report.failure, report.failure
        # And so is a version-2 row whose payload is gone.
        await asyncio.to_thread(tamper_payload, engine, event_id=access_id, payload=None)
        report = await asyncio.to_thread(verify_database, engine, progress=None)
        assert report.failure is not None and f"record {access_id}" in report.failure, report.failure
