"""The optional upstream TSA, played by a real HTTP server on 127.0.0.1 that this test starts.

It answers with genuine RFC 3161 responses from a TSA of its own PKI, and then misbehaves
(HTTP 500, slowness, tokens over other data, tokens from an untrusted CA): each time the signing
service must fall back to its internal TSA, record which TSA stamped the checkpoint, and open its
circuit breaker after repeated failures so that the upstream is no longer called at all.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from awareness.signing.v1 import signing_pb2
from sqlalchemy import text

from services.signing.domain.pki import init_pki, load_keyring
from services.signing.domain.tsa import TimeStampAuthority, build_timestamp_request
from tests.signing.conftest import StartSigning
from tests.signing.openssl_ts import verify

ROOT = hashlib.sha256(b"root").digest()


@dataclass
class FakeUpstream:
    """A local TSA over HTTP whose behaviour the test switches: ok, fail, slow, wrong, untrusted."""

    authority: TimeStampAuthority
    stranger: TimeStampAuthority  # a TSA whose root the signing service does not trust
    root_certificate: Path
    mode: str = "ok"
    requests: int = 0
    content_types: list[str] = field(default_factory=list)
    url: str = ""

    def settings(self, *, timeout_seconds: float) -> dict[str, str]:
        """What points a signing service at this TSA (and makes it trust its root)."""
        return {
            "AWARENESS_UPSTREAM_TSA_URL": self.url,
            "AWARENESS_UPSTREAM_TSA_CA_FILE": str(self.root_certificate),
            "AWARENESS_UPSTREAM_TSA_TIMEOUT_SECONDS": str(timeout_seconds),
        }

    def answer(self, body: bytes) -> tuple[int, bytes]:
        self.requests += 1
        if self.mode == "fail":
            return 500, b"upstream broken"
        if self.mode == "slow":
            time.sleep(1.0)
            return 200, self.authority.respond(body)
        if self.mode == "wrong":
            return 200, self.authority.respond(build_timestamp_request(data=b"something else"))
        if self.mode == "untrusted":
            return 200, self.stranger.respond(body)
        return 200, self.authority.respond(body)


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[FakeUpstream]:
    paths = init_pki(tmp_path / "upstream-pki", common_name_prefix="Upstream")
    stranger_dir = init_pki(tmp_path / "stranger-pki", common_name_prefix="Stranger").directory
    fake = FakeUpstream(
        authority=TimeStampAuthority.from_keyring(load_keyring(paths.directory)),
        stranger=TimeStampAuthority.from_keyring(load_keyring(stranger_dir)),
        root_certificate=paths.root_certificate,
    )

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            fake.content_types.append(self.headers.get("Content-Type", ""))
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            status, reply = fake.answer(body)
            self.send_response(status)
            self.send_header("Content-Type", "application/timestamp-reply")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *_args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    fake.url = f"http://127.0.0.1:{server.server_address[1]}/tsa"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield fake
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


async def _checkpoint(stub: object, size: int) -> signing_pb2.SignedCheckpoint:
    request = signing_pb2.SignCheckpointRequest(tree_size=size, root_hash=ROOT)
    reply = await stub.SignCheckpoint(request)  # type: ignore[attr-defined]
    checkpoint: signing_pb2.SignedCheckpoint = reply.checkpoint
    return checkpoint


def _openssl_verifies(note: str, token: bytes, *, root: Path, directory: Path) -> bool:
    (directory / "note.txt").write_bytes(note.encode())
    (directory / "token.tst").write_bytes(token)
    result = verify(directory / "note.txt", directory / "token.tst", root, "-token_in")
    return result.returncode == 0 and "Verification: OK" in result.stdout


async def test_upstream_token_then_fallback_and_breaker_opening(
    start_signing: StartSigning, upstream: FakeUpstream, tmp_path: Path
) -> None:
    harness = await start_signing(
        **upstream.settings(timeout_seconds=2),
        AWARENESS_BREAKER_FAIL_MAX="2",
        AWARENESS_BREAKER_RESET_SECONDS="60",
    )
    stub = harness.stub("service")
    breaker_state = ("awareness_signing_circuit_breaker_state", {"target": "upstream_tsa"})

    stamped_upstream = await _checkpoint(stub, 1)
    assert stamped_upstream.tsa == upstream.url
    assert upstream.content_types == ["application/timestamp-query"]
    assert _openssl_verifies(
        stamped_upstream.note,
        stamped_upstream.timestamp_token,
        root=upstream.root_certificate,
        directory=tmp_path,
    )
    assert not _openssl_verifies(
        stamped_upstream.note,
        stamped_upstream.timestamp_token,
        root=harness.root_certificate,
        directory=tmp_path,
    )
    verified = await harness.stub("auditor").VerifyTimestamp(
        signing_pb2.VerifyTimestampRequest(
            timestamp_token=stamped_upstream.timestamp_token, data=stamped_upstream.note.encode()
        )
    )
    assert verified.valid, verified.reason

    upstream.mode = "fail"
    for size in (2, 3):  # two failures reach the threshold
        fallback = await _checkpoint(stub, size)
        assert fallback.tsa == "internal"
        assert _openssl_verifies(
            fallback.note, fallback.timestamp_token, root=harness.root_certificate, directory=tmp_path
        )
    assert upstream.requests == 3
    assert harness.metric(breaker_state[0], **breaker_state[1]) == 2  # open

    upstream.mode = "ok"  # healthy again, but the breaker stays open until its reset timeout
    while_open = await _checkpoint(stub, 4)
    assert while_open.tsa == "internal"
    assert upstream.requests == 3, "an open breaker must not call the upstream TSA"
    assert harness.metric("awareness_signing_upstream_tsa_requests_total", outcome="breaker_open") == 1
    assert harness.metric("awareness_signing_upstream_tsa_requests_total", outcome="ok") == 1
    assert harness.metric("awareness_signing_upstream_tsa_requests_total", outcome="error") == 2
    assert harness.metric("awareness_signing_checkpoints_signed_total", tsa="upstream") == 1
    assert harness.metric("awareness_signing_checkpoints_signed_total", tsa="internal") == 3

    with harness.engine.connect() as connection:
        recorded = connection.execute(
            text("SELECT tree_size, tsa FROM signed_checkpoints ORDER BY tree_size")
        ).all()
        token_sources = (
            connection.execute(text("SELECT tsa FROM timestamp_tokens ORDER BY id")).scalars().all()
        )
    assert [tuple(row) for row in recorded] == [
        (1, upstream.url),
        (2, "internal"),
        (3, "internal"),
        (4, "internal"),
    ]
    assert token_sources == [upstream.url, "internal", "internal", "internal"]


@pytest.mark.parametrize("mode", ["slow", "wrong", "untrusted"])
async def test_unusable_upstream_answers_fall_back_to_the_internal_tsa(
    start_signing: StartSigning, upstream: FakeUpstream, mode: str
) -> None:
    harness = await start_signing(**upstream.settings(timeout_seconds=0.3), AWARENESS_BREAKER_FAIL_MAX="5")
    upstream.mode = mode
    checkpoint = await _checkpoint(harness.stub("service"), 10)
    assert checkpoint.tsa == "internal" and checkpoint.timestamp_token
    assert upstream.requests == 1
    assert harness.metric("awareness_signing_upstream_tsa_requests_total", outcome="error") == 1
