"""The Timestamp and VerifyTimestamp RPCs over real gRPC, checked with the real `openssl ts`."""

from __future__ import annotations

import hashlib
from pathlib import Path

import grpc
import pytest
import rfc3161_client
from asn1crypto import tsp
from awareness.signing.v1 import signing_pb2
from cryptography import x509

from tests.signing.conftest import SigningHarness
from tests.signing.openssl_ts import (
    assert_verified_then_refused_once_changed,
    make_query,
    openssl,
    reply_status,
)

EVIDENCE = b"checkpoint awareness.test/log 42\n" * 3


async def _timestamp(harness: SigningHarness, query: bytes, *, role: str = "auditor") -> bytes:
    reply = await harness.stub(role).Timestamp(signing_pb2.TimestampRequest(request=query))
    response: bytes = reply.response
    return response


@pytest.mark.parametrize(
    "query_options",
    [("-sha256", "-cert"), ("-sha512", "-cert"), ("-sha256", "-cert", "-no_nonce")],
    ids=["sha256", "sha512", "sha256-no-nonce"],
)
async def test_openssl_verifies_rpc_token_and_rejects_changed_data(
    signing: SigningHarness, tmp_path: Path, query_options: tuple[str, ...]
) -> None:
    data = tmp_path / "evidence.bin"
    data.write_bytes(EVIDENCE)
    query = tmp_path / "request.tsq"
    make_query(data, query, *query_options)
    response = tmp_path / "response.tsr"
    response.write_bytes(await _timestamp(signing, query.read_bytes()))

    assert_verified_then_refused_once_changed(data, response, signing.root_certificate, flipped_byte=7)
    assert signing.metric("awareness_signing_timestamps_issued_total", status="granted") == 1


def _sha1_query(tmp_path: Path) -> bytes:
    data = tmp_path / "sha1.bin"
    data.write_bytes(b"x")
    query = tmp_path / "sha1.tsq"
    assert openssl("ts", "-query", "-data", str(data), "-sha1", "-out", str(query)).returncode == 0
    return query.read_bytes()


def _wrong_length_query() -> bytes:
    request = tsp.TimeStampReq(
        {
            "version": "v1",
            "message_imprint": {"hash_algorithm": {"algorithm": "sha256"}, "hashed_message": b"\x01" * 20},
        }
    )
    return bytes(request.dump())


async def test_bad_requests_get_rejection_responses_not_transport_errors(
    signing: SigningHarness, tmp_path: Path
) -> None:
    data = tmp_path / "evidence.bin"
    data.write_bytes(EVIDENCE)
    valid = tmp_path / "valid.tsq"
    assert openssl("ts", "-query", "-data", str(data), "-sha256", "-out", str(valid)).returncode == 0
    cases = {
        "malformed": (b"this is not a TimeStampReq", "bad_data_format"),
        "truncated": (valid.read_bytes()[:-7], "bad_data_format"),
        "empty": (b"", "bad_data_format"),
        "sha1": (_sha1_query(tmp_path), "bad_alg"),
        "wrong digest length": (_wrong_length_query(), "bad_data_format"),
    }
    for name, (query, failure) in cases.items():
        response = await _timestamp(signing, query)  # an RPC error would raise here
        status, failures, has_token = reply_status(response)
        assert (status, failures, has_token) == ("rejection", {failure}, False), name
    assert signing.metric("awareness_signing_timestamps_issued_total", status="bad_alg") == 1
    assert signing.metric("awareness_signing_timestamps_issued_total", status="bad_data_format") == 4

    reply = tmp_path / "sha1.tsr"
    reply.write_bytes(await _timestamp(signing, _sha1_query(tmp_path)))
    shown = openssl("ts", "-reply", "-in", str(reply), "-text")
    assert shown.returncode == 0, shown.stderr
    assert "Status: Rejected." in shown.stdout


async def test_rfc3161_client_verifies_a_token_from_the_rpc(signing: SigningHarness) -> None:
    request = (
        rfc3161_client.TimestampRequestBuilder()
        .data(EVIDENCE)
        .hash_algorithm(rfc3161_client.HashAlgorithm.SHA512)
        .nonce(nonce=True)
        .cert_request(cert_request=True)
        .build()
    )
    response = rfc3161_client.decode_timestamp_response(await _timestamp(signing, request.as_bytes()))
    root = x509.load_pem_x509_certificate(signing.root_certificate.read_bytes())
    verifier = rfc3161_client.VerifierBuilder.from_request(request).add_root_certificate(root).build()
    assert verifier.verify_message(response, EVIDENCE)
    with pytest.raises(rfc3161_client.VerificationError):
        verifier.verify_message(response, EVIDENCE + b"!")


async def test_verify_timestamp_rpc(signing: SigningHarness, tmp_path: Path) -> None:
    data = tmp_path / "evidence.bin"
    data.write_bytes(EVIDENCE)
    query = tmp_path / "request.tsq"
    # Without -cert the token carries no certificate: the service supplies its published ones.
    assert openssl("ts", "-query", "-data", str(data), "-sha384", "-out", str(query)).returncode == 0
    response = await _timestamp(signing, query.read_bytes())
    stub = signing.stub("auditor")

    by_data = await stub.VerifyTimestamp(
        signing_pb2.VerifyTimestampRequest(timestamp_response=response, data=EVIDENCE)
    )
    assert by_data.valid, by_data.reason
    assert by_data.hash_algorithm == "sha384"
    assert int(by_data.serial) > 0 and by_data.policy and "Time-Stamping Authority" in by_data.tsa

    by_digest = await stub.VerifyTimestamp(
        signing_pb2.VerifyTimestampRequest(
            timestamp_response=response, digest=hashlib.sha384(EVIDENCE).digest()
        )
    )
    assert by_digest.valid and by_digest.serial == by_data.serial

    wrong = await stub.VerifyTimestamp(
        signing_pb2.VerifyTimestampRequest(timestamp_response=response, data=EVIDENCE + b"!")
    )
    assert not wrong.valid and "does not cover" in wrong.reason

    garbage = await stub.VerifyTimestamp(signing_pb2.VerifyTimestampRequest(timestamp_token=b"\x30\x03junk"))
    assert not garbage.valid and garbage.reason

    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stub.VerifyTimestamp(signing_pb2.VerifyTimestampRequest(data=EVIDENCE))
    assert missing.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_timestamp_needs_the_permission(signing: SigningHarness) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _timestamp(signing, b"", role="policy_author")
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
