"""SignCheckpoint, VerifyCheckpoint and SignDigests over real gRPC.

A checkpoint is checked the way an outside verifier would: with nothing but the public key
published by ListPublicKeys and the `cryptography` package, rebuilding the signed bytes from the
C2SP formats; and its RFC 3161 token with the real `openssl ts -verify`.
"""

from __future__ import annotations

import base64
import hashlib
import subprocess
from pathlib import Path

import grpc
import pytest
from awareness.signing.v1 import signing_pb2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from tests.signing.conftest import TEST_ORIGIN, SigningHarness

ROOT = hashlib.sha256(b"root of 42 leaves").digest()


async def _published_checkpoint_keys(harness: SigningHarness) -> list[signing_pb2.PublicKey]:
    listed = await harness.stub("auditor").ListPublicKeys(
        signing_pb2.ListPublicKeysRequest(purpose=signing_pb2.KEY_PURPOSE_CHECKPOINT)
    )
    return list(listed.public_keys)


def _verify_with_published_key(
    note: str, published: signing_pb2.PublicKey, *, size: int, root: bytes
) -> None:
    """Only the PEM from ListPublicKeys, the C2SP formats and `cryptography`; raises if invalid."""
    public_key = serialization.load_pem_public_key(published.public_key_pem.encode())
    assert isinstance(public_key, ed25519.Ed25519PublicKey)
    body = f"{TEST_ORIGIN}\n{size}\n{base64.b64encode(root).decode()}\n".encode()
    assert note.encode().startswith(body + b"\n")
    signature_line = note.encode()[len(body) + 1 :].decode()
    dash, name, encoded = signature_line.rstrip("\n").split(" ")
    assert (dash, name) == ("\u2014", TEST_ORIGIN)
    blob = base64.b64decode(encoded, validate=True)
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert blob[:4] == hashlib.sha256(TEST_ORIGIN.encode() + b"\n\x01" + raw).digest()[:4]
    public_key.verify(blob[4:], body)
    # The published verifier key string is the same key, in the Go note format.
    vkey_name, vkey_hash, vkey_key = published.note_verifier_key.split("+", 2)
    assert (vkey_name, bytes.fromhex(vkey_hash)) == (TEST_ORIGIN, blob[:4])
    assert base64.b64decode(vkey_key) == b"\x01" + raw


async def test_checkpoint_verifies_with_only_the_published_key_and_its_token_with_openssl(
    signing: SigningHarness, tmp_path: Path
) -> None:
    reply = await signing.stub("service").SignCheckpoint(
        signing_pb2.SignCheckpointRequest(tree_size=42, root_hash=ROOT)
    )
    checkpoint = reply.checkpoint
    assert (checkpoint.origin, checkpoint.tree_size, checkpoint.root_hash) == (TEST_ORIGIN, 42, ROOT)
    assert checkpoint.tsa == "internal" and checkpoint.timestamp_token

    published = await _published_checkpoint_keys(signing)
    assert [key.key_id for key in published] == [checkpoint.key_id]
    _verify_with_published_key(checkpoint.note, published[0], size=42, root=ROOT)
    with pytest.raises(InvalidSignature):
        _verify_with_published_key(
            checkpoint.note.replace("\n42\n", "\n43\n"), published[0], size=43, root=ROOT
        )

    note = tmp_path / "checkpoint.txt"
    note.write_bytes(checkpoint.note.encode())
    token = tmp_path / "checkpoint.tst"
    token.write_bytes(checkpoint.timestamp_token)
    verify = (
        "openssl", "ts", "-verify", "-data", str(note), "-in", str(token), "-token_in",
        "-CAfile", str(signing.root_certificate),
    )  # fmt: skip
    verified = subprocess.run(verify, capture_output=True, text=True, timeout=60)
    assert verified.returncode == 0, verified.stderr
    assert "Verification: OK" in verified.stdout
    note.write_bytes(checkpoint.note.encode().replace(b"\n42\n", b"\n43\n"))
    refused = subprocess.run(verify, capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "Verification: OK" not in refused.stdout
    assert signing.metric("awareness_signing_checkpoints_signed_total", tsa="internal") == 1


async def test_a_retried_checkpoint_gets_the_first_answer(signing: SigningHarness) -> None:
    stub = signing.stub("service")
    request = signing_pb2.SignCheckpointRequest(origin=TEST_ORIGIN, tree_size=7, root_hash=ROOT)
    first = (await stub.SignCheckpoint(request)).checkpoint
    second = (await stub.SignCheckpoint(request)).checkpoint
    assert second == first
    other = (
        await stub.SignCheckpoint(signing_pb2.SignCheckpointRequest(tree_size=8, root_hash=ROOT))
    ).checkpoint
    assert other.note != first.note and other.timestamp_token != first.timestamp_token


async def test_sign_checkpoint_refuses_bad_input(signing: SigningHarness) -> None:
    stub = signing.stub("service")
    bad = [
        signing_pb2.SignCheckpointRequest(origin="another.example/log", tree_size=1, root_hash=ROOT),
        signing_pb2.SignCheckpointRequest(tree_size=-1, root_hash=ROOT),
        signing_pb2.SignCheckpointRequest(tree_size=1, root_hash=ROOT[:31]),
    ]
    for request in bad:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.SignCheckpoint(request)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as not_internal:
        await signing.stub("admin").SignCheckpoint(
            signing_pb2.SignCheckpointRequest(tree_size=1, root_hash=ROOT)
        )
    assert not_internal.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_verify_checkpoint_rpc(signing: SigningHarness) -> None:
    checkpoint = (
        await signing.stub("service").SignCheckpoint(
            signing_pb2.SignCheckpointRequest(tree_size=3, root_hash=ROOT)
        )
    ).checkpoint
    stub = signing.stub("auditor")
    verified = await stub.VerifyCheckpoint(signing_pb2.VerifyCheckpointRequest(note=checkpoint.note))
    assert verified.valid, verified.reason
    assert (verified.key_id, verified.origin, verified.tree_size, verified.root_hash) == (
        checkpoint.key_id,
        TEST_ORIGIN,
        3,
        ROOT,
    )
    tampered = await stub.VerifyCheckpoint(
        signing_pb2.VerifyCheckpointRequest(note=checkpoint.note.replace("\n3\n", "\n4\n"))
    )
    assert not tampered.valid and "does not verify" in tampered.reason
    foreign_key = ed25519.Ed25519PrivateKey.generate()
    body = checkpoint.note.split("\n\n")[0] + "\n"
    foreign_blob = base64.b64encode(b"\0\0\0\0" + foreign_key.sign(body.encode())).decode()
    foreign = await stub.VerifyCheckpoint(
        signing_pb2.VerifyCheckpointRequest(note=f"{body}\n\u2014 someone.else {foreign_blob}\n")
    )
    assert not foreign.valid and "no signature from a published checkpoint key" in foreign.reason
    malformed = await stub.VerifyCheckpoint(signing_pb2.VerifyCheckpointRequest(note="not a note"))
    assert not malformed.valid and malformed.reason


async def test_sign_digests(signing: SigningHarness) -> None:
    digests = [hashlib.sha256(str(index).encode()).digest() for index in range(40)]
    reply = await signing.stub("service").SignDigests(signing_pb2.SignDigestsRequest(digests=digests))
    published = (await _published_checkpoint_keys(signing))[0]
    public_key = serialization.load_pem_public_key(published.public_key_pem.encode())
    assert isinstance(public_key, ed25519.Ed25519PublicKey)
    assert [signature.digest for signature in reply.signatures] == digests
    for signature in reply.signatures:
        assert (signature.key_id, signature.algorithm) == (published.key_id, "Ed25519")
        public_key.verify(signature.signature, signature.digest)
    for bad in ([], [b"\x01" * 65], [b"\x01"] * 1001):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await signing.stub("service").SignDigests(signing_pb2.SignDigestsRequest(digests=bad))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
