"""The access records of signing-key rotation: the new key, the one it replaced, the outcome."""

from __future__ import annotations

import grpc
import pytest
from awareness.signing.v1 import signing_pb2

from tests.signing.conftest import SigningHarness
from tests.support.access_records import RecordSink, assert_nothing_personal, capture


async def test_rotations_record_the_new_and_previous_key(signing: SigningHarness) -> None:
    sink = capture(signing.context)
    admin = signing.stub("admin")
    before = await signing.stub("auditor").ListPublicKeys(
        signing_pb2.ListPublicKeysRequest(purpose=signing_pb2.KEY_PURPOSE_CHECKPOINT)
    )  # a read of public keys: not recorded
    rotated = await admin.RotateKey(
        signing_pb2.RotateKeyRequest(purpose=signing_pb2.KEY_PURPOSE_CHECKPOINT, request_id="rotate-1")
    )
    replayed = await admin.RotateKey(
        signing_pb2.RotateKeyRequest(purpose=signing_pb2.KEY_PURPOSE_CHECKPOINT, request_id="rotate-1")
    )
    with pytest.raises(grpc.aio.AioRpcError) as root:
        await admin.RotateKey(signing_pb2.RotateKeyRequest(purpose=signing_pb2.KEY_PURPOSE_ROOT_CA))
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await signing.stub("auditor").RotateKey(
            signing_pb2.RotateKeyRequest(purpose=signing_pb2.KEY_PURPOSE_TIMESTAMP)
        )
    assert (root.value.code(), denied.value.code()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.PERMISSION_DENIED,
    )

    events = await sink.settled(4)
    assert [RecordSink.row(event) for event in events] == [
        ("test-admin", "signing_key.rotate", rotated.key.name, "OK"),
        ("test-admin", "signing_key.rotate", rotated.key.name, "OK"),  # a replay names the same key
        ("test-admin", "signing_key.rotate", "keys", "INVALID_ARGUMENT"),
        ("test-auditor", "signing_key.rotate", "", "PERMISSION_DENIED"),
    ]
    assert replayed.key.key_id == rotated.key.key_id
    first = events[0].details
    assert (first["purpose"], first["key_id"], first["previous_key_id"]) == (
        "checkpoint",
        rotated.key.key_id,
        before.public_keys[0].key_id,
    )
    assert "purpose" not in events[2].details
    assert_nothing_personal(events, source="signing")
