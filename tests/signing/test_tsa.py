from __future__ import annotations

import hashlib
import tempfile
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import rfc3161_client
from asn1crypto import core, tsp
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.signing.domain.errors import PkiError, TimestampVerificationError
from services.signing.domain.pki import KeyPurpose, Keyring, init_pki
from services.signing.domain.tsa import (
    DEFAULT_POLICY_OID,
    CountingSerialSource,
    RandomSerialSource,
    TimeStampAuthority,
    build_timestamp_request,
    parse_timestamp_response,
    verify_timestamp_token,
)
from tests.signing.openssl_ts import reply_status

DATA = b"checkpoint awareness.example/log 42\n"
EXTRA_POLICY = "1.3.6.1.4.1.4146.1.2.3"


def _tst_info(der: bytes) -> tsp.TSTInfo:
    token = tsp.TimeStampResp.load(der)["time_stamp_token"]
    return token["content"]["encap_content_info"]["content"].parsed


def _request(
    *,
    algorithm: str = "sha256",
    digest: bytes | None = None,
    policy: str | None = None,
    nonce: int | None = 7,
    **extra: object,
) -> bytes:
    fields: dict[str, object] = {
        "version": "v1",
        "message_imprint": {
            "hash_algorithm": {"algorithm": algorithm},
            "hashed_message": digest if digest is not None else hashlib.new(algorithm, DATA).digest(),
        },
        "cert_req": True,
    }
    if nonce is not None:
        fields["nonce"] = nonce
    if policy is not None:
        fields["req_policy"] = policy
    fields.update(extra)
    return bytes(tsp.TimeStampReq(fields).dump())


@pytest.fixture(scope="module")
def authority(keyring: Keyring) -> TimeStampAuthority:
    return TimeStampAuthority.from_keyring(
        keyring, accepted_policies=[EXTRA_POLICY], serial_source=CountingSerialSource()
    )


def test_granted_token_contents(authority: TimeStampAuthority, keyring: Keyring) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    response = authority.respond(_request(nonce=123456789))
    assert reply_status(response) == ("granted", set(), True)
    tst_info = _tst_info(response)
    assert tst_info["policy"].dotted == DEFAULT_POLICY_OID
    assert tst_info["nonce"].native == 123456789
    assert tst_info["message_imprint"]["hashed_message"].native == hashlib.sha256(DATA).digest()
    assert tst_info["accuracy"]["seconds"].native == 1
    assert before <= tst_info["gen_time"].native <= datetime.now(UTC)
    tsa_subject = keyring.active(KeyPurpose.TIMESTAMP).certificate.subject
    assert tst_info["tsa"].chosen == asn1_x509.Name.load(tsa_subject.public_bytes())


def test_requested_policy_is_used_when_accepted(authority: TimeStampAuthority) -> None:
    response = authority.respond(_request(policy=EXTRA_POLICY))
    assert reply_status(response)[0] == "granted"
    assert _tst_info(response)["policy"].dotted == EXTRA_POLICY


def test_certificate_only_when_requested(authority: TimeStampAuthority) -> None:
    with_certificate = tsp.TimeStampResp.load(authority.respond(_request(cert_req=True)))
    without = tsp.TimeStampResp.load(authority.respond(_request(cert_req=False)))
    assert len(with_certificate["time_stamp_token"]["content"]["certificates"]) == 1
    assert isinstance(without["time_stamp_token"]["content"]["certificates"], core.Void)


@pytest.mark.parametrize(
    ("request_der", "expected_failure"),
    [
        (b"", "bad_data_format"),
        (b"\x30\x03\x02\x01", "bad_data_format"),  # truncated
        (b"not DER at all", "bad_data_format"),
        (_request()[:-3], "bad_data_format"),  # truncated valid request
        (_request() + b"\x00", "bad_data_format"),  # trailing garbage
        (b"\x30\x00", "bad_data_format"),  # empty SEQUENCE
        (_request(algorithm="sha1"), "bad_alg"),
        (_request(algorithm="md5"), "bad_alg"),
        (_request(algorithm="sha3_256"), "bad_alg"),
        (_request(digest=b"\x00" * 20), "bad_data_format"),  # SHA-256 imprint of the wrong length
        (_request(policy="1.2.3.4.5"), "unaccepted_policy"),
        (_request(version=2), "bad_request"),
        (
            _request(extensions=[{"extn_id": "1.2.3.4", "critical": False, "extn_value": b"\x05\x00"}]),
            "unaccepted_extensions",
        ),
    ],
    ids=[
        "empty",
        "truncated-header",
        "garbage",
        "truncated-request",
        "trailing-bytes",
        "empty-sequence",
        "sha1",
        "md5",
        "sha3",
        "wrong-digest-length",
        "unaccepted-policy",
        "bad-version",
        "unknown-extension",
    ],
)
def test_bad_requests_get_rejection_responses(
    authority: TimeStampAuthority, request_der: bytes, expected_failure: str
) -> None:
    status, failures, has_token = reply_status(authority.respond(request_der))
    assert status == "rejection"
    assert failures == {expected_failure}
    assert not has_token


def test_unknown_hash_oid_is_bad_alg(authority: TimeStampAuthority) -> None:
    request = _request(digest=b"\x01" * 32)
    unknown = request.replace(
        bytes.fromhex("0609608648016503040201"), bytes.fromhex("06092a0304050607080901")
    )
    assert unknown != request
    assert reply_status(authority.respond(unknown))[:2] == ("rejection", {"bad_alg"})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.one_of(
        st.binary(max_size=300), st.builds(lambda i, b: (i, b), st.integers(0, 200), st.integers(0, 255))
    )
)
def test_respond_never_raises(authority: TimeStampAuthority, sample: bytes | tuple[int, int]) -> None:
    if isinstance(sample, tuple):  # flip one byte of a valid request
        position, value = sample
        request = bytearray(_request())
        request[position % len(request)] = value
        sample = bytes(request)
    status, _, has_token = reply_status(authority.respond(sample))
    assert status in {"granted", "rejection"}
    assert has_token == (status == "granted")


def test_serial_numbers_are_unique(keyring: Keyring) -> None:
    for source in (CountingSerialSource(), RandomSerialSource()):
        tsa = TimeStampAuthority.from_keyring(keyring, serial_source=source)
        serials = [_tst_info(tsa.respond(_request()))["serial_number"].native for _ in range(150)]
        assert len(set(serials)) == len(serials)
        assert all(0 < serial < 2**160 for serial in serials)  # RFC 3161: at most 160 bits


def test_counting_serial_source_is_unique_across_threads() -> None:
    source = CountingSerialSource()
    results: list[list[int]] = [[] for _ in range(4)]

    def draw(bucket: list[int]) -> None:
        bucket.extend(source() for _ in range(2000))

    threads = [threading.Thread(target=draw, args=(bucket,)) for bucket in results]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    drawn = [serial for bucket in results for serial in bucket]
    assert len(drawn) == 8000 and len(set(drawn)) == 8000


def test_random_serials_are_128_bit() -> None:
    source = RandomSerialSource()
    serials = {source() for _ in range(1000)}
    assert len(serials) == 1000
    assert all(serial.bit_length() == 128 for serial in serials)


@pytest.mark.parametrize("algorithm", ["SHA256", "SHA512"])
def test_rfc3161_client_verifies_the_token(
    authority: TimeStampAuthority, keyring: Keyring, algorithm: str
) -> None:
    request = (
        rfc3161_client.TimestampRequestBuilder()
        .data(DATA)
        .hash_algorithm(rfc3161_client.HashAlgorithm[algorithm])
        .nonce(nonce=True)
        .cert_request(cert_request=True)
        .build()
    )
    response = rfc3161_client.decode_timestamp_response(authority.respond(request.as_bytes()))
    verifier = (
        rfc3161_client.VerifierBuilder.from_request(request)
        .add_root_certificate(keyring.root_certificate)
        .build()
    )
    assert verifier.verify_message(response, DATA)
    with pytest.raises(rfc3161_client.VerificationError):
        verifier.verify_message(response, DATA + b"!")


def test_rfc3161_client_verifies_a_sha384_token(authority: TimeStampAuthority, keyring: Keyring) -> None:
    # rfc3161-client builds only SHA-256/512 requests, but verifies SHA-384 tokens.
    response = authority.respond(build_timestamp_request(data=DATA, hash_algorithm="sha384", nonce=4242))
    decoded = rfc3161_client.decode_timestamp_response(response)
    verifier = (
        rfc3161_client.VerifierBuilder().nonce(4242).add_root_certificate(keyring.root_certificate).build()
    )
    assert verifier.verify_message(decoded, DATA)
    wrong_nonce = (
        rfc3161_client.VerifierBuilder().nonce(4243).add_root_certificate(keyring.root_certificate).build()
    )
    with pytest.raises(rfc3161_client.VerificationError):
        wrong_nonce.verify_message(decoded, DATA)


def test_verify_timestamp_token(authority: TimeStampAuthority, keyring: Keyring) -> None:
    response = authority.respond(build_timestamp_request(data=DATA, hash_algorithm="sha384", nonce=99))
    info = verify_timestamp_token(response, data=DATA, trusted_roots=[keyring.root_certificate])
    assert info.imprint_verified
    assert info.hash_algorithm == "sha384"
    assert info.hashed_message == hashlib.sha384(DATA).digest()
    assert info.nonce == 99
    assert info.policy_oid == DEFAULT_POLICY_OID
    assert info.accuracy == timedelta(seconds=1)
    assert info.signer_key_id == keyring.active(KeyPurpose.TIMESTAMP).key_id
    assert info.tsa_name == keyring.active(KeyPurpose.TIMESTAMP).certificate.subject.rfc4514_string()

    # The bare token verifies the same way, and by digest instead of data.
    token = parse_timestamp_response(response).token
    assert token is not None and token == info.token
    by_digest = verify_timestamp_token(
        token, digest=hashlib.sha384(DATA).digest(), trusted_roots=[keyring.root_certificate]
    )
    assert by_digest.serial_number == info.serial_number


def test_verify_timestamp_token_refusals(authority: TimeStampAuthority, keyring: Keyring) -> None:
    roots = [keyring.root_certificate]
    with_certificate = authority.respond(build_timestamp_request(data=DATA))
    without_certificate = authority.respond(build_timestamp_request(data=DATA, certificate_requested=False))

    with pytest.raises(TimestampVerificationError, match="does not cover"):
        verify_timestamp_token(with_certificate, data=DATA + b"!", trusted_roots=roots)
    with pytest.raises(TimestampVerificationError, match="neither in the token"):
        verify_timestamp_token(without_certificate, data=DATA, trusted_roots=roots)
    tsa_certificate = keyring.active(KeyPurpose.TIMESTAMP).certificate
    assert verify_timestamp_token(
        without_certificate, data=DATA, trusted_roots=roots, certificates=[tsa_certificate]
    ).imprint_verified
    with pytest.raises(TimestampVerificationError, match="trusted root"):
        verify_timestamp_token(with_certificate, data=DATA, trusted_roots=[_self_signed_root()])
    with pytest.raises(TimestampVerificationError, match="no token"):
        verify_timestamp_token(authority.respond(b"junk"), trusted_roots=roots)
    with pytest.raises(TimestampVerificationError):
        verify_timestamp_token(b"\x30\x03\x02\x01\x00", trusted_roots=roots)

    # One flipped bit in the signed TSTInfo breaks the message-digest attribute.
    token = bytearray(parse_timestamp_response(with_certificate).token or b"")
    imprint_at = bytes(token).find(hashlib.sha256(DATA).digest())
    assert imprint_at > 0
    token[imprint_at] ^= 0x01
    with pytest.raises(TimestampVerificationError):
        verify_timestamp_token(bytes(token), trusted_roots=roots)


def test_authority_refuses_a_certificate_without_timestamping_eku(keyring: Keyring) -> None:
    checkpoint_certificate = keyring.active(KeyPurpose.CHECKPOINT).certificate
    key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(PkiError):
        TimeStampAuthority(key=key, certificate=checkpoint_certificate)
    with pytest.raises(PkiError):  # right certificate, wrong key
        TimeStampAuthority(key=key, certificate=keyring.active(KeyPurpose.TIMESTAMP).certificate)


def _self_signed_root() -> x509.Certificate:
    with tempfile.TemporaryDirectory() as directory:
        paths = init_pki(Path(directory), common_name_prefix="Stranger")
        return x509.load_pem_x509_certificate(paths.root_certificate.read_bytes())
