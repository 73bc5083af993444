"""RFC 3161 as a third party checks it: the real `openssl ts`, and the status of a reply read with
asn1crypto (the structure written out here, so no test parses with the code under test)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from asn1crypto import core, tsp

OPENSSL_TIMEOUT = 60


def openssl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=OPENSSL_TIMEOUT)


def make_query(data: Path, query: Path, *options: str) -> None:
    """``openssl ts -query`` for the file ``data``, written to ``query``."""
    created = openssl("ts", "-query", "-data", str(data), *options, "-out", str(query))
    assert created.returncode == 0, created.stderr


def verify(data: Path, response: Path, ca_file: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """``openssl ts -verify`` of the reply ``response`` for ``data`` against the root ``ca_file``."""
    return openssl("ts", "-verify", "-data", str(data), "-in", str(response), "-CAfile", str(ca_file), *extra)


def assert_verified_then_refused_once_changed(
    data: Path, response: Path, ca_file: Path, *, flipped_byte: int
) -> subprocess.CompletedProcess[str]:
    """openssl accepts the reply for ``data``, and refuses it once one bit of ``data`` is flipped;
    the refusal, for more checks."""
    verified = verify(data, response, ca_file)
    assert verified.returncode == 0, verified.stderr
    assert "Verification: OK" in verified.stdout

    changed = bytearray(data.read_bytes())
    changed[flipped_byte] ^= 0x01
    data.write_bytes(bytes(changed))
    refused = verify(data, response, ca_file)
    assert refused.returncode != 0
    assert "Verification: OK" not in refused.stdout
    return refused


class _Response(core.Sequence):  # type: ignore[misc]
    # RFC 3161 TimeStampResp
    _fields = [("status", tsp.PKIStatusInfo), ("time_stamp_token", core.Any, {"optional": True})]


def reply_status(der: bytes) -> tuple[str, set[str], bool]:
    """The reply's status, its failure reasons, and whether it carries a token."""
    response = _Response.load(der, strict=True)
    status = response["status"]
    return (
        status["status"].native,
        set(status["fail_info"].native or ()),
        not isinstance(response["time_stamp_token"], core.Void),
    )
