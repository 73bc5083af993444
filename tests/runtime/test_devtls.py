"""The development CA and the server certificates `awareness up` issues with it."""

from __future__ import annotations

import ipaddress
import shutil
import stat
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509

from services.runtime.devtls import CERTIFICATE_LIFETIME, ensure_server_certificate

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")


def _leaf(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificates(path.read_bytes())[0]


@needs_openssl
def test_openssl_verifies_the_server_certificate_for_localhost_against_the_ca(tmp_path: Path) -> None:
    issued = ensure_server_certificate(tmp_path, "door")
    leaf = tmp_path / "leaf.pem"
    leaf.write_bytes(
        issued.chain_file.read_bytes().split(b"-----END CERTIFICATE-----", 1)[0]
        + b"-----END CERTIFICATE-----\n"
    )
    for host in ("-verify_hostname", "localhost"), ("-verify_ip", "127.0.0.1"), ("-verify_ip", "::1"):
        ran = subprocess.run(
            ["openssl", "verify", "-CAfile", str(issued.ca_file), *host, str(leaf)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert ran.returncode == 0, ran.stdout + ran.stderr
    names = _leaf(issued.chain_file).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.0.1") in names.get_values_for_type(x509.IPAddress)


def test_keys_are_private_and_a_valid_certificate_is_kept(tmp_path: Path) -> None:
    first = ensure_server_certificate(tmp_path, "door")
    for key in (first.key_file, tmp_path / "ca.key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    serial = _leaf(first.chain_file).serial_number
    assert _leaf(ensure_server_certificate(tmp_path, "door").chain_file).serial_number == serial


def test_a_certificate_near_expiry_or_from_another_ca_is_issued_again(tmp_path: Path) -> None:
    first = ensure_server_certificate(tmp_path, "door")
    serial = _leaf(first.chain_file).serial_number
    later = datetime.now(UTC) + CERTIFICATE_LIFETIME - timedelta(days=1)
    renewed = ensure_server_certificate(tmp_path, "door", now=later)
    assert _leaf(renewed.chain_file).serial_number != serial
    (tmp_path / "ca.crt").unlink()  # a new CA: what the old one issued no longer chains to it
    again = ensure_server_certificate(tmp_path, "door", now=later)
    ca = x509.load_pem_x509_certificate(again.ca_file.read_bytes())
    _leaf(again.chain_file).verify_directly_issued_by(ca)
