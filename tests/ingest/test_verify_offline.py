"""`awareness verify` offline: a receipt and inclusion proof as JSON, the public keys from signing,
and `openssl ts -verify` for the checkpoint's RFC 3161 token."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import grpc
from awareness.ingest.v1 import ingest_pb2
from awareness.signing.v1 import signing_pb2, signing_pb2_grpc
from cryptography.hazmat.primitives import serialization
from google.protobuf import json_format

from services.evidence.checkpoint import NoteVerifier
from tests.ingest.harness import awareness_verify as verify
from tests.ingest.harness import eventually, make_event, suite


async def test_receipt_and_proof_verify_offline_down_to_the_timestamp_token(tmp_path: Path) -> None:
    async with suite(tmp_path / "suite") as running:
        client = running.client()
        events = [make_event() for _ in range(6)]
        appended = await client.AppendEvents(ingest_pb2.AppendEventsRequest(events=events))
        receipt = appended.results[4].receipt

        async def proof() -> ingest_pb2.GetInclusionProofResponse | None:
            try:
                answer = await client.GetInclusionProof(
                    ingest_pb2.GetInclusionProofRequest(event_id=receipt.event_id, tree_size=6)
                )
            except grpc.aio.AioRpcError:
                return None
            return answer if answer.HasField("checkpoint") else None

        found = await eventually(proof, what="a checkpointed proof")
        keys = await signing_pb2_grpc.SigningServiceStub(running.channel("signing")).ListPublicKeys(
            signing_pb2.ListPublicKeysRequest()
        )
    files = tmp_path / "auditor"
    files.mkdir()
    (files / "proof.json").write_text(json_format.MessageToJson(found))
    (files / "receipt.json").write_text(json_format.MessageToJson(appended.results[4]))
    (files / "keys.json").write_text(json_format.MessageToJson(keys))

    result = await asyncio.to_thread(
        verify,
        "--proof",
        files / "proof.json",
        "--receipt",
        files / "receipt.json",
        "--keys",
        files / "keys.json",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "audit path" in result.stdout and "checkpoint of tree size 6" in result.stdout
    assert "RFC 3161 token over the checkpoint note verifies" in result.stdout

    # Plain verifier-key lines and a PEM public key work too (no token check without a CA).
    vkeys = [k.note_verifier_key for k in keys.public_keys if k.note_verifier_key]
    (files / "keys.vkey").write_text("\n".join(vkeys) + "\n")
    assert (
        await asyncio.to_thread(verify, "--proof", files / "proof.json", "--keys", files / "keys.vkey")
    ).returncode == 0
    pem = NoteVerifier.from_vkey(vkeys[0]).public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (files / "key.pem").write_bytes(pem)
    assert (
        await asyncio.to_thread(verify, "--proof", files / "proof.json", "--keys", files / "key.pem")
    ).returncode == 0

    # Any change is caught: a wrong sibling hash, a forged leaf, another event's receipt, a forged note.
    document = json.loads((files / "proof.json").read_text())
    cases = {
        "path": ("hashes", lambda d: d["hashes"].__setitem__(0, base64.b64encode(b"\x00" * 32).decode())),
        "leaf": ("leafData", lambda d: d.__setitem__("leafData", base64.b64encode(b"{}").decode())),
        "note": (
            "checkpoint",
            lambda d: d["checkpoint"].__setitem__("note", d["checkpoint"]["note"].replace("\n6\n", "\n7\n")),
        ),
    }
    for name, (_, change) in cases.items():
        forged = json.loads(json.dumps(document))
        change(forged)
        (files / f"forged-{name}.json").write_text(json.dumps(forged))
        outcome = await asyncio.to_thread(
            verify, "--proof", files / f"forged-{name}.json", "--keys", files / "keys.json"
        )
        assert outcome.returncode == 1, name
        assert "FAIL" in outcome.stdout
    (files / "other-receipt.json").write_text(json_format.MessageToJson(appended.results[2]))
    other = await asyncio.to_thread(
        verify,
        "--proof",
        files / "proof.json",
        "--receipt",
        files / "other-receipt.json",
        "--keys",
        files / "keys.json",
    )
    assert other.returncode == 1 and "receipt" in other.stdout
