"""ListPublicKeys, GetPublicKey and RotateKey over real gRPC: what a verifier needs, across rotations."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
from pathlib import Path

import grpc
import pytest
from awareness.signing.v1 import signing_pb2
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from grpc_status import rpc_status

from services.runtime.errors import error_info
from services.signing.domain.pki import KeyPurpose, init_pki, rotate_key
from tests.signing.conftest import SigningHarness, StartSigning, copy_pki

ROOT = hashlib.sha256(b"root").digest()


async def _all_keys(
    harness: SigningHarness, *, page_size: int = 0, purpose: int = 0
) -> list[signing_pb2.PublicKey]:
    stub = harness.stub("auditor")
    keys: list[signing_pb2.PublicKey] = []
    token = ""
    while True:
        page = await stub.ListPublicKeys(
            signing_pb2.ListPublicKeysRequest(page_size=page_size, page_token=token, purpose=purpose)  # type: ignore[arg-type]
        )
        keys.extend(page.public_keys)
        token = page.next_page_token
        if not token:
            return keys


async def test_list_public_keys_publishes_everything_a_verifier_needs(signing: SigningHarness) -> None:
    listed = await signing.stub("auditor").ListPublicKeys(signing_pb2.ListPublicKeysRequest())
    root_pem = signing.root_certificate.read_text()
    assert list(listed.certificate_chain_pem) == [root_pem]
    by_purpose = {key.purpose: key for key in listed.public_keys}
    assert set(by_purpose) == {
        signing_pb2.KEY_PURPOSE_CHECKPOINT,
        signing_pb2.KEY_PURPOSE_TIMESTAMP,
        signing_pb2.KEY_PURPOSE_ROOT_CA,
    }
    root = x509.load_pem_x509_certificate(root_pem.encode())
    for key in listed.public_keys:
        certificate = x509.load_pem_x509_certificate(key.certificate_pem.encode())
        certificate.verify_directly_issued_by(root)  # the root CA signs every key (and itself)
        spki = certificate.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        assert key.key_id == hashlib.sha256(spki).hexdigest() and key.name == f"keys/{key.key_id}"
        assert (
            serialization.load_pem_public_key(key.public_key_pem.encode()).public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            == spki
        )
        assert key.state == signing_pb2.PublicKey.STATE_ACTIVE and not key.HasField("retire_time")
        assert key.not_before.ToDatetime() < key.not_after.ToDatetime()
    assert by_purpose[signing_pb2.KEY_PURPOSE_CHECKPOINT].algorithm == "Ed25519"
    assert by_purpose[signing_pb2.KEY_PURPOSE_CHECKPOINT].note_verifier_key
    assert by_purpose[signing_pb2.KEY_PURPOSE_TIMESTAMP].algorithm == "ECDSA-P256-SHA256"
    assert by_purpose[signing_pb2.KEY_PURPOSE_ROOT_CA].algorithm == "ECDSA-P384-SHA384"

    wanted = by_purpose[signing_pb2.KEY_PURPOSE_TIMESTAMP]
    assert (
        await signing.stub("auditor").GetPublicKey(signing_pb2.GetPublicKeyRequest(name=wanted.name))
        == wanted
    )
    for name, code in (
        ("keys/" + "0" * 64, grpc.StatusCode.NOT_FOUND),
        ("keys/x", grpc.StatusCode.INVALID_ARGUMENT),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await signing.stub("auditor").GetPublicKey(signing_pb2.GetPublicKeyRequest(name=name))
        assert refused.value.code() == code


async def test_rotation_keeps_old_keys_published_and_old_checkpoints_verifiable(
    signing: SigningHarness, tmp_path: Path
) -> None:
    service, admin, auditor = signing.stub("service"), signing.stub("admin"), signing.stub("auditor")
    old = (
        await service.SignCheckpoint(signing_pb2.SignCheckpointRequest(tree_size=1, root_hash=ROOT))
    ).checkpoint

    rotated = await admin.RotateKey(
        signing_pb2.RotateKeyRequest(purpose=signing_pb2.KEY_PURPOSE_CHECKPOINT, request_id="rotate-1")
    )
    assert rotated.previous_key.key_id == old.key_id
    assert rotated.previous_key.state == signing_pb2.PublicKey.STATE_RETIRED
    assert rotated.previous_key.HasField("retire_time")
    assert rotated.key.state == signing_pb2.PublicKey.STATE_ACTIVE and rotated.key.key_id != old.key_id
    # A retry with the same request id returns the first result instead of rotating again.
    again = await admin.RotateKey(
        signing_pb2.RotateKeyRequest(purpose=signing_pb2.KEY_PURPOSE_CHECKPOINT, request_id="rotate-1")
    )
    assert again.key.key_id == rotated.key.key_id

    checkpoint_keys = await _all_keys(signing, purpose=signing_pb2.KEY_PURPOSE_CHECKPOINT)
    assert [key.key_id for key in checkpoint_keys] == [rotated.key.key_id, old.key_id]  # newest first

    new = (
        await service.SignCheckpoint(signing_pb2.SignCheckpointRequest(tree_size=2, root_hash=ROOT))
    ).checkpoint
    assert new.key_id == rotated.key.key_id
    for checkpoint in (old, new):
        verified = await auditor.VerifyCheckpoint(signing_pb2.VerifyCheckpointRequest(note=checkpoint.note))
        assert verified.valid and verified.key_id == checkpoint.key_id

    # The time-stamping key rotates too; a token from the old key still verifies with openssl.
    data = tmp_path / "data.bin"
    data.write_bytes(b"evidence")
    old_token = tmp_path / "old.tst"
    old_token.write_bytes(old.timestamp_token)
    timestamp_rotation = await admin.RotateKey(
        signing_pb2.RotateKeyRequest(purpose=signing_pb2.KEY_PURPOSE_TIMESTAMP)
    )
    note = tmp_path / "note.txt"
    note.write_bytes(old.note.encode())
    verified = subprocess.run(
        ["openssl", "ts", "-verify", "-data", str(note), "-in", str(old_token), "-token_in",
         "-CAfile", str(signing.root_certificate)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert "Verification: OK" in verified.stdout, verified.stderr
    still_valid = await auditor.VerifyTimestamp(
        signing_pb2.VerifyTimestampRequest(timestamp_token=old.timestamp_token, data=old.note.encode())
    )
    assert still_valid.valid, still_valid.reason
    newest = (
        await service.SignCheckpoint(signing_pb2.SignCheckpointRequest(tree_size=3, root_hash=ROOT))
    ).checkpoint
    checked = await auditor.VerifyTimestamp(
        signing_pb2.VerifyTimestampRequest(timestamp_token=newest.timestamp_token, data=newest.note.encode())
    )
    assert checked.valid
    everything = await _all_keys(signing, page_size=1)  # paging through one key at a time
    assert len(everything) == 5  # two checkpoint keys, two time-stamping keys, the root CA
    assert timestamp_rotation.previous_key.key_id in {key.key_id for key in everything}


async def test_page_token_is_bound_to_the_request(signing: SigningHarness) -> None:
    stub = signing.stub("auditor")
    first = await stub.ListPublicKeys(signing_pb2.ListPublicKeysRequest(page_size=1))
    assert first.next_page_token
    for request in (
        signing_pb2.ListPublicKeysRequest(
            page_size=1, page_token=first.next_page_token, purpose=signing_pb2.KEY_PURPOSE_TIMESTAMP
        ),
        signing_pb2.ListPublicKeysRequest(page_token="garbage!"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.ListPublicKeys(request)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_rotation_is_refused_where_keys_come_from_a_secret(
    start_signing: StartSigning, tmp_path: Path
) -> None:
    # A production mount: complete keys, but no root private key (and normally read-only).
    secret = copy_pki(init_pki(tmp_path / "source").directory, tmp_path / "secret")
    (secret / "root-ca.key.pem").unlink()
    harness = await start_signing(AWARENESS_PKI_DIR=str(secret))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await harness.stub("admin").RotateKey(
            signing_pb2.RotateKeyRequest(purpose=signing_pb2.KEY_PURPOSE_TIMESTAMP)
        )
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    status = rpc_status.from_call(refused.value)
    assert status is not None
    info = error_info(status)
    assert info is not None and info.reason == "PKI_READ_ONLY"
    assert "awareness pki rotate" in (refused.value.details() or "")
    for purpose, code in (
        (signing_pb2.KEY_PURPOSE_ROOT_CA, grpc.StatusCode.INVALID_ARGUMENT),
        (signing_pb2.KEY_PURPOSE_UNSPECIFIED, grpc.StatusCode.INVALID_ARGUMENT),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as invalid:
            await harness.stub("admin").RotateKey(signing_pb2.RotateKeyRequest(purpose=purpose))
        assert invalid.value.code() == code
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await harness.stub("auditor").RotateKey(
            signing_pb2.RotateKeyRequest(purpose=signing_pb2.KEY_PURPOSE_TIMESTAMP)
        )
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_a_rotation_made_elsewhere_is_picked_up(start_signing: StartSigning) -> None:
    # Another replica (or a new Secret version) rotates the keys in the shared directory.
    harness = await start_signing(AWARENESS_PKI_RELOAD_SECONDS="0.1")
    stub = harness.stub("service")
    before = (
        await stub.SignCheckpoint(signing_pb2.SignCheckpointRequest(tree_size=1, root_hash=ROOT))
    ).checkpoint
    created = await asyncio.to_thread(rotate_key, harness.pki_dir, KeyPurpose.CHECKPOINT)
    # The watcher is the app's background job; run it as the runtime would.
    watcher = asyncio.create_task(harness.app.background[0]())
    try:
        for _ in range(100):
            request = signing_pb2.SignCheckpointRequest(tree_size=2, root_hash=ROOT)
            after = (await stub.SignCheckpoint(request)).checkpoint
            if after.key_id == created.key_id:
                break
            await asyncio.sleep(0.05)
    finally:
        watcher.cancel()
    assert before.key_id != created.key_id
    assert after.key_id == created.key_id
