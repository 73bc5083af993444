"""The time-stamp authority against the real `openssl ts` (query, reply, verify)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from cryptography.x509.oid import NameOID

from services.signing.domain.pki import KeyPurpose, Keyring, PkiPaths, init_pki
from services.signing.domain.tsa import DEFAULT_POLICY_OID, CountingSerialSource, TimeStampAuthority
from tests.signing.openssl_ts import assert_verified_then_refused_once_changed, make_query, openssl, verify


@pytest.fixture(scope="module")
def authority(keyring: Keyring) -> TimeStampAuthority:
    return TimeStampAuthority.from_keyring(keyring, serial_source=CountingSerialSource(start=1000))


def _stamp(authority: TimeStampAuthority, directory: Path, *query_options: str) -> tuple[Path, Path]:
    data = directory / "evidence.bin"
    data.write_bytes(b"checkpoint awareness.example/log 42\n" * 3)
    query = directory / "request.tsq"
    make_query(data, query, *query_options)
    response = directory / "response.tsr"
    response.write_bytes(authority.respond(query.read_bytes()))
    return data, response


def _verify(data: Path, response: Path, paths: PkiPaths, *extra: str) -> subprocess.CompletedProcess[str]:
    return verify(data, response, paths.root_certificate, *extra)


@pytest.mark.parametrize(
    "query_options",
    [
        ("-sha256", "-cert"),
        ("-sha384", "-cert"),
        ("-sha512", "-cert"),
        ("-sha256", "-cert", "-no_nonce"),
    ],
    ids=["sha256", "sha384", "sha512", "sha256-no-nonce"],
)
def test_openssl_verifies_token_and_rejects_changed_data(
    authority: TimeStampAuthority, pki_paths: PkiPaths, tmp_path: Path, query_options: tuple[str, ...]
) -> None:
    data, response = _stamp(authority, tmp_path, *query_options)

    refused = assert_verified_then_refused_once_changed(
        data, response, pki_paths.root_certificate, flipped_byte=5
    )
    assert "message imprint mismatch" in refused.stderr


def test_without_cert_req_the_tsa_certificate_must_be_supplied(
    authority: TimeStampAuthority, pki_paths: PkiPaths, tmp_path: Path
) -> None:
    data, response = _stamp(authority, tmp_path, "-sha256")  # no -cert: the token carries no certificate

    without = _verify(data, response, pki_paths)
    assert without.returncode != 0
    assert "Verification: OK" not in without.stdout

    with_untrusted = _verify(data, response, pki_paths, "-untrusted", str(pki_paths.timestamp_certificate))
    assert with_untrusted.returncode == 0, with_untrusted.stderr
    assert "Verification: OK" in with_untrusted.stdout


def test_token_from_another_root_is_refused(authority: TimeStampAuthority, tmp_path: Path) -> None:
    other = init_pki(tmp_path / "other-pki", common_name_prefix="Other")
    data, response = _stamp(authority, tmp_path, "-sha256", "-cert")
    refused = _verify(data, response, other)
    assert refused.returncode != 0
    assert "Verification: OK" not in refused.stdout


def test_openssl_reply_text_shows_policy_nonce_and_tsa(
    authority: TimeStampAuthority, keyring: Keyring, tmp_path: Path
) -> None:
    _, response = _stamp(authority, tmp_path, "-sha256", "-cert")
    query_text = openssl("ts", "-query", "-in", str(tmp_path / "request.tsq"), "-text")
    assert query_text.returncode == 0, query_text.stderr
    nonce_line = next(line for line in query_text.stdout.splitlines() if line.startswith("Nonce:"))

    reply = openssl("ts", "-reply", "-in", str(response), "-text")
    assert reply.returncode == 0, reply.stderr
    assert "Status: Granted." in reply.stdout
    assert f"Policy OID: {DEFAULT_POLICY_OID}" in reply.stdout
    assert nonce_line in reply.stdout  # the request's nonce, echoed
    assert "Accuracy: 0x01 seconds" in reply.stdout
    tsa_subject = keyring.active(KeyPurpose.TIMESTAMP).certificate.subject
    common_name = str(tsa_subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)
    assert f"TSA: DirName:/O=Awareness/CN={common_name}" in reply.stdout


def test_openssl_reads_rejections(authority: TimeStampAuthority, tmp_path: Path) -> None:
    data = tmp_path / "evidence.bin"
    data.write_bytes(b"x")
    query = tmp_path / "request.tsq"
    assert openssl("ts", "-query", "-data", str(data), "-sha1", "-out", str(query)).returncode == 0
    response = tmp_path / "response.tsr"
    response.write_bytes(authority.respond(query.read_bytes()))
    reply = openssl("ts", "-reply", "-in", str(response), "-text")
    assert reply.returncode == 0, reply.stderr
    assert "Status: Rejected." in reply.stdout
    assert "unrecognized or unsupported algorithm identifier" in reply.stdout
    assert "TST info:\nNot included." in reply.stdout
