"""RFC 3161 through the whole suite: the real `openssl ts` against the gateway's POST /v1/timestamp.

The suite runs as real processes (`awareness up` on free ports); an API key comes from the
gateway's own CLI; the query is made by `openssl ts -query` and posted as
application/timestamp-query; the reply is checked by `openssl ts -verify` against the root
certificate the gateway publishes on GET /v1/keys.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.signing.openssl_ts import assert_verified_then_refused_once_changed, make_query, openssl
from tests.support.suite import SQLITE, awareness_up

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

EVIDENCE = b"an auditor's evidence file\n" * 10


@dataclass
class Suite:
    gateway: str
    data_dir: Path
    env: dict[str, str]
    api_key: str = ""


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Suite]:
    # RFC 3161 does not touch the stores: SQLite only (tests/test_e2e_gateway.py runs both).
    with awareness_up(tmp_path_factory.mktemp("suite"), SQLITE) as running:
        yield Suite(
            gateway=running.url,
            data_dir=running.data_dir,
            env=running.env,
            api_key=running.create_key("auditor", name="auditor"),
        )


def _post_query(suite: Suite, query: bytes) -> httpx.Response:
    return httpx.post(
        f"{suite.gateway}/v1/timestamp",
        content=query,
        headers={"Content-Type": "application/timestamp-query", "Authorization": f"Bearer {suite.api_key}"},
        timeout=30,
    )


@pytest.fixture(scope="module")
def published_root(suite: Suite, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The root certificate as the gateway publishes it (GET /v1/keys), not read from disk."""
    listed = httpx.get(
        f"{suite.gateway}/v1/keys", headers={"Authorization": f"Bearer {suite.api_key}"}, timeout=30
    )
    assert listed.status_code == 200, listed.text
    body = listed.json()
    chain = body.get("certificateChainPem") or body.get("certificate_chain_pem")
    assert chain, body
    assert chain[-1] == (suite.data_dir / "pki" / "root-ca.pem").read_text()
    path = tmp_path_factory.mktemp("published") / "root.pem"
    path.write_text(chain[-1])
    return path


@pytest.mark.parametrize(
    "query_options",
    [("-sha256", "-cert"), ("-sha512", "-cert"), ("-sha256", "-cert", "-no_nonce")],
    ids=["sha256", "sha512", "sha256-no-nonce"],
)
def test_openssl_timestamp_through_the_gateway(
    suite: Suite, published_root: Path, tmp_path: Path, query_options: tuple[str, ...]
) -> None:
    data = tmp_path / "evidence.bin"
    data.write_bytes(EVIDENCE)
    query = tmp_path / "request.tsq"
    make_query(data, query, *query_options)

    reply = _post_query(suite, query.read_bytes())
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"].startswith("application/timestamp-reply")
    response = tmp_path / "response.tsr"
    response.write_bytes(reply.content)

    assert_verified_then_refused_once_changed(data, response, published_root, flipped_byte=3)


def test_bad_queries_get_rejection_replies_through_the_gateway(suite: Suite, tmp_path: Path) -> None:
    data = tmp_path / "evidence.bin"
    data.write_bytes(EVIDENCE)
    sha1_query = tmp_path / "sha1.tsq"
    assert openssl("ts", "-query", "-data", str(data), "-sha1", "-out", str(sha1_query)).returncode == 0
    good_query = tmp_path / "good.tsq"
    assert openssl("ts", "-query", "-data", str(data), "-sha256", "-out", str(good_query)).returncode == 0
    for name, query in {
        "sha1": sha1_query.read_bytes(),
        "truncated": good_query.read_bytes()[:-6],
        "malformed": b"\x30\x03\x02\x01",
    }.items():
        reply = _post_query(suite, query)
        assert reply.status_code == 200, (name, reply.text)
        assert reply.headers["content-type"].startswith("application/timestamp-reply"), name
        response = tmp_path / f"{name}.tsr"
        response.write_bytes(reply.content)
        shown = openssl("ts", "-reply", "-in", str(response), "-text")
        assert shown.returncode == 0, (name, shown.stderr)
        assert "Status: Rejected." in shown.stdout, name


def test_the_timestamp_route_needs_an_api_key(suite: Suite) -> None:
    reply = httpx.post(
        f"{suite.gateway}/v1/timestamp",
        content=b"\x30\x00",
        headers={"Content-Type": "application/timestamp-query"},
        timeout=30,
    )
    assert reply.status_code == 401
