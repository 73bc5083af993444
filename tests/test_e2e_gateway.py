"""The gateway end to end: `awareness up` on free ports, real sockets, real curl and openssl.

Keys are created with the real CLI (`python -m services.cli keys create`) against the
suite's data directory, exactly as the README tells a new user to.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from awareness.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from grpc_status import rpc_status

from services.gateway.domain import gophish
from services.runtime import auth
from services.runtime.config import load_settings
from services.runtime.errors import error_info
from services.runtime.identity import channel_options
from tests.gdpr.dumps import holding, needles, pg_dump, postgres_files_holding, redis_holding, scan_file
from tests.support.idp import IdentityProvider
from tests.support.servers import identity_of
from tests.support.suite import REPO, Backend, UpSuite, awareness_up

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def suite(
    tmp_path_factory: pytest.TempPathFactory, suite_backend: Backend, idp: IdentityProvider
) -> Iterator[UpSuite]:
    data_dir = tmp_path_factory.mktemp(f"gateway-e2e-{suite_backend.name}")
    extra = {
        # Schemathesis sends thousands of requests; the limits themselves are tested elsewhere.
        "AWARENESS_GATEWAY_RATE_PRINCIPAL_PER_MIN": "1000000",
        "AWARENESS_GATEWAY_RATE_IP_PER_MIN": "1000000",
        "AWARENESS_GATEWAY_RATE_GLOBAL_PER_MIN": "1000000",
        **idp.gateway_env(data_dir),
    }
    with awareness_up(data_dir, suite_backend, extra_env=extra) as running:
        yield running


def _curl(*args: str) -> tuple[int, dict[str, str], bytes]:
    """Real curl: status, lower-cased headers, body."""
    result = subprocess.run(
        ["curl", "-sS", "--max-time", "30", "-D", "-", *args], capture_output=True, timeout=60, check=True
    )
    head, _, body = result.stdout.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, body


needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")


def _reason(body: dict[str, Any]) -> str:
    return next(
        (d.get("reason", "") for d in body.get("details", []) if "ErrorInfo" in d.get("@type", "")), ""
    )


# --- the new user's first five minutes, with only the README -------------------------------


@needs_curl
def test_new_user_posts_an_event_with_curl_and_reads_it_back_with_its_receipt(suite: UpSuite) -> None:
    key = suite.create_key("admin")
    event_id = str(uuid.uuid4())
    event = {
        "eventId": event_id,
        "type": "phishing.clicked",
        "source": "curl",
        "subject": "new.user@example.org",
        "occurredAt": "2024-05-01T12:00:00Z",
        "severity": "SEVERITY_MEDIUM",
        "summary": "clicked the test link",
    }
    status, _, body = _curl(
        "-X", "POST", f"{suite.url}/v1/events",
        "-H", f"Authorization: Bearer {key}", "-H", "Content-Type: application/json",
        "--data", json.dumps(event),
    )  # fmt: skip
    assert status == 200, body
    appended = json.loads(body)
    assert appended["receipt"]["eventId"] == event_id
    status, _, body = _curl(f"{suite.url}/v1/events/{event_id}", "-H", f"Authorization: Bearer {key}")
    assert status == 200, body
    stored = json.loads(body)
    assert stored["subject"] == "new.user@example.org"
    assert stored["type"] == "phishing.clicked"
    status, _, body = _curl(f"{suite.url}/v1/events/{event_id}/receipt", "-H", f"Authorization: Bearer {key}")
    assert status == 200, body
    assert json.loads(body)["eventId"] == event_id


def test_a_new_policy_author_walks_the_lifecycle_through_the_gateway(suite: UpSuite) -> None:
    # Issue 6's walk-through over HTTP: create, submit, fail to approve as the author (who
    # also holds the approver role), approve as someone else, send a violating event, see it.
    author = suite.create_key("policy_author", "policy_approver")
    approver = suite.create_key("policy_approver")
    integration = suite.create_key("admin")
    campaign = f"walkthrough-{uuid.uuid4().hex[:8]}"
    rule = f'event.type == "phishing.clicked" && event.details["campaign"] == "{campaign}"'
    with httpx.Client(base_url=suite.url, timeout=30) as http:

        def as_(key: str) -> dict[str, str]:
            return {"Authorization": f"Bearer {key}"}

        created = http.post(
            "/v1/policies",
            params={"policyId": campaign},
            json={"title": "Walk-through click", "rule": rule, "severity": "SEVERITY_HIGH"},
            headers=as_(author),
        )
        assert created.status_code == 200, created.text
        name = created.json()["name"]
        assert created.json()["state"].endswith("DRAFT")
        submitted = http.post(f"/v1/{name}:submit", json={}, headers=as_(author))
        assert submitted.status_code == 200, submitted.text
        refused = http.post(f"/v1/{name}:approve", json={}, headers=as_(author))
        assert refused.status_code == 403, refused.text
        assert any(d.get("reason") == "SEPARATION_OF_DUTIES" for d in refused.json()["details"])
        approved = http.post(f"/v1/{name}:approve", json={}, headers=as_(approver))
        assert approved.status_code == 200, approved.text
        assert approved.json()["state"].endswith("ACTIVE")

        event_id = str(uuid.uuid4())
        posted = http.post(
            "/v1/events",
            json={
                "eventId": event_id,
                "type": "phishing.clicked",
                "source": "walkthrough",
                "subject": "walk.through@example.org",
                "occurredAt": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
                "severity": "SEVERITY_MEDIUM",
                "details": {"campaign": campaign},
            },
            headers=as_(integration),
        )
        assert posted.status_code == 200, posted.text
        deadline = time.monotonic() + 60
        violations: list[dict[str, Any]] = []
        while time.monotonic() < deadline and not violations:
            event = http.get(f"/v1/events/{event_id}", headers=as_(integration)).json()
            violations = event.get("metadata", {}).get("violations", [])
            if not violations:
                time.sleep(0.5)
        assert [v["policy"] for v in violations] == [name], event


# --- authentication and authorization over real sockets -----------------------------------


@needs_curl
def test_missing_bad_revoked_and_expired_keys_get_401(suite: UpSuite) -> None:
    url = f"{suite.url}/v1/events"
    status, headers, body = _curl(url)
    assert status == 401 and headers["www-authenticate"].startswith("Bearer")
    assert json.loads(body)["code"] == 16

    status, headers, _ = _curl(url, "-H", "Authorization: Bearer awk_0000000000000000_nope")
    assert status == 401 and 'error="invalid_token"' in headers["www-authenticate"]

    revoked = suite.create_key("analyst")
    assert suite.cli("keys", "revoke", revoked.split("_")[1]).returncode == 0
    status, _, body = _curl(url, "-H", f"Authorization: Bearer {revoked}")
    assert (status, _reason(json.loads(body))) == (401, "KEY_REVOKED")

    expired = _insert_expired_key(suite)
    status, _, body = _curl(url, "-H", f"Authorization: Bearer {expired}")
    assert (status, _reason(json.loads(body))) == (401, "KEY_EXPIRED")


def _insert_expired_key(suite: UpSuite) -> str:
    """A key that expired yesterday, written to the gateway's store as the CLI would."""
    from services.gateway import repository
    from services.gateway.domain import keys
    from services.runtime import db

    new = keys.generate_key()
    engine = db.create_db_engine(suite.database_url("gateway"), service="gateway")
    try:
        with db.transaction(db.session_factory(engine)) as session:
            now = datetime.now(UTC)
            repository.add_key(
                session,
                key_id=new.key_id,
                name="expired",
                secret_hash=keys.hash_secret(new.secret),
                roles=["analyst"],
                created_at=now - timedelta(days=2),
                expires_at=now - timedelta(days=1),
            )
    finally:
        engine.dispose()
    return new.token


def test_jwt_with_wrong_audience_gets_401_and_a_good_one_passes_auth(
    suite: UpSuite, idp: IdentityProvider
) -> None:
    with httpx.Client(base_url=suite.url, timeout=30) as client:
        wrong = client.get("/v1/keys", headers={"Authorization": f"Bearer {idp.token(aud='other')}"})
        assert wrong.status_code == 401
        assert _reason(wrong.json()) == "BAD_AUDIENCE"
        assert "invalid_token" in wrong.headers["www-authenticate"]
        good = client.get("/v1/keys", headers={"Authorization": f"Bearer {idp.token(roles=['auditor'])}"})
        assert good.status_code not in (401, 403), good.text


def test_missing_permission_gets_403(suite: UpSuite) -> None:
    key = suite.create_key("auditor")
    with httpx.Client(base_url=suite.url, timeout=30) as client:
        response = client.post(
            "/v1/events", json={"type": "x", "source": "y"}, headers={"Authorization": f"Bearer {key}"}
        )
    assert response.status_code == 403
    assert response.json()["details"][0]["metadata"] == {"permission": "ingest:write"}


def _ingest_refusal(
    suite: UpSuite, credentials: grpc.ChannelCredentials, metadata: list[tuple[str, str]] | None = None
) -> tuple[grpc.StatusCode, str]:
    """ListEvents on the suite's ingest over ``credentials``: the code and ErrorInfo reason of its refusal."""
    request = ingest_pb2.ListEventsRequest(page_size=1)
    with (
        grpc.secure_channel(
            suite.addresses["ingest"], credentials, options=channel_options("ingest")
        ) as channel,
        pytest.raises(grpc.RpcError) as refused,
    ):
        ingest_pb2_grpc.IngestServiceStub(channel).ListEvents(request, metadata=metadata, timeout=10)
    status = rpc_status.from_call(refused.value)
    info = error_info(status) if status is not None else None
    return refused.value.code(), info.reason if info is not None else ""


def test_a_service_refuses_calls_that_did_not_come_through_the_gateway(suite: UpSuite) -> None:
    mallory = auth.principal_metadata(auth.Principal(subject="mallory", roles=frozenset({"admin"})))
    request = ingest_pb2.ListEventsRequest(page_size=1)
    # Plaintext never gets past the handshake: every hop is mTLS.
    with grpc.insecure_channel(suite.addresses["ingest"]) as channel:
        with pytest.raises(grpc.RpcError) as bare:
            ingest_pb2_grpc.IngestServiceStub(channel).ListEvents(request, timeout=10)
        assert bare.value.code() == grpc.StatusCode.UNAVAILABLE
    suite_ca = load_settings("gateway", suite.env).identity.ca_file.read_bytes()
    # TLS that trusts ingest but shows no certificate of its own: refused by the handshake.
    anonymous = grpc.ssl_channel_credentials(root_certificates=suite_ca)
    assert _ingest_refusal(suite, anonymous, mallory)[0] == grpc.StatusCode.UNAVAILABLE
    # A "gateway" certificate from a CA this suite does not trust (the test run's own): refused too.
    stranger = identity_of("gateway")
    foreign = grpc.ssl_channel_credentials(
        root_certificates=suite_ca,
        private_key=stranger.key_file.read_bytes(),
        certificate_chain=stranger.cert_file.read_bytes(),
    )
    assert _ingest_refusal(suite, foreign, mallory)[0] == grpc.StatusCode.UNAVAILABLE
    # The suite's own scoring certificate may act only as scoring, not for an admin it names.
    scoring = load_settings("scoring", suite.env).identity.channel_credentials()
    assert _ingest_refusal(suite, scoring, mallory) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "PRINCIPAL_NOT_DELEGABLE",
    )
    # The same call from the suite's gateway certificate is an admin's: the refusals were about the caller.
    gateway = load_settings("gateway", suite.env).identity.channel_credentials()
    with grpc.secure_channel(
        suite.addresses["ingest"], gateway, options=channel_options("ingest")
    ) as channel:
        ingest_pb2_grpc.IngestServiceStub(channel).ListEvents(request, metadata=mallory, timeout=10)


# --- single events from many producers at once --------------------------------------------


def _crowd_event(index: int, **changes: str) -> dict[str, str]:
    event = {
        "eventId": str(uuid.uuid4()),
        "type": "phishing.clicked",
        "source": "crowd",
        "subject": f"crowd-{index}@example.org",
        "occurredAt": "2024-05-01T12:00:00Z",
        "severity": "SEVERITY_LOW",
    }
    event.update(changes)
    return event


def _events_per_call(suite: UpSuite) -> tuple[float, float]:
    """awareness_gateway_append_events_per_call: (calls, events) so far."""
    port = suite.env["AWARENESS_GATEWAY_ADMIN_PORT"]
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    values = {
        line.split()[0]: float(line.split()[1])
        for line in text.splitlines()
        if line.startswith("awareness_gateway_append_events_per_call_")
    }
    return values.get("awareness_gateway_append_events_per_call_count", 0.0), values.get(
        "awareness_gateway_append_events_per_call_sum", 0.0
    )


def test_concurrent_single_events_share_calls_and_each_gets_its_own_answer(suite: UpSuite) -> None:
    key = suite.create_key("integration")
    headers = {"Authorization": f"Bearer {key}"}
    bad = _crowd_event(0, type="no.such.type", occurredAt="2999-01-01T00:00:00Z")
    with httpx.Client(base_url=suite.url, timeout=30) as client:
        alone = client.post("/v1/events", json=bad, headers=headers)  # idle: sent as AppendEvent
    assert alone.status_code == 400, alone.text
    calls_before, events_before = _events_per_call(suite)
    events = [_crowd_event(i) for i in range(1, 120)]
    events[60]["eventId"] = events[59]["eventId"]  # a retry racing its original
    events[60]["subject"] = events[59]["subject"]
    crowd = [*events[:80], bad, *events[80:]]

    async def post_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=suite.url, timeout=60) as http:
            return await asyncio.gather(*(http.post("/v1/events", json=e, headers=headers) for e in crowd))

    answers = asyncio.run(post_all())
    calls_after, events_after = _events_per_call(suite)
    # The crowd went in fewer calls than requests: some calls carried several events.
    assert events_after - events_before == len(crowd)
    assert calls_after - calls_before < len(crowd)
    # The refused event is answered word for word as when it was sent alone.
    refused = answers[80]
    assert refused.status_code == 400
    assert refused.json() == alone.json()
    fields = {v["field"] for v in alone.json()["details"][1]["fieldViolations"]}
    assert "event.type" in fields and len(fields) == 2 and all(f.startswith("event.") for f in fields)
    for event, answer in zip(events, [*answers[:80], *answers[81:]], strict=True):
        assert answer.status_code == 200, answer.text
        assert answer.json()["receipt"]["eventId"] == event["eventId"]
    assert answers[60].json()["receipt"]["leafHash"] == answers[59].json()["receipt"]["leafHash"]


# --- GoPhish ---------------------------------------------------------------------------------


def _gophish(suite: UpSuite, body: bytes, signature: str | None) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if signature is not None:
        headers["X-Gophish-Signature"] = signature
    with httpx.Client(base_url=suite.url, timeout=30) as client:
        return client.post("/v1/integrations/gophish", content=body, headers=headers)


def _gophish_body() -> bytes:
    return json.dumps(
        {
            "campaign_id": 9,
            "email": f"target-{uuid.uuid4().hex[:8]}@example.org",
            "time": "2024-06-01T09:30:00Z",
            "message": "Clicked Link",
            "details": "{}",
        }
    ).encode()


def test_gophish_bad_signature_is_refused(suite: UpSuite) -> None:
    body = _gophish_body()
    assert _gophish(suite, body, None).status_code == 401
    assert _gophish(suite, body, gophish.sign(b"wrong-secret-0123456789abcdef", body)).status_code == 401


def test_gophish_good_signature_accepted_once_then_idempotent(suite: UpSuite) -> None:
    secret = (suite.data_dir / "gophish-webhook-secret").read_bytes().strip()
    body = _gophish_body()
    first = _gophish(suite, body, gophish.sign(secret, body))
    assert first.status_code == 202, first.text
    second = _gophish(suite, body, gophish.sign(secret, body))
    assert second.status_code == 202
    # One answer for a first delivery and a redelivery (it must not tell whether a person was erased).
    assert first.json() == second.json() == {"status": "accepted", "eventId": first.json()["eventId"]}


# --- RFC 3161 over HTTP with openssl -------------------------------------------------------------


@needs_curl
@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
def test_openssl_time_stamp_through_the_gateway_verifies(suite: UpSuite, tmp_path: Path) -> None:
    key = suite.create_key("auditor")
    data = tmp_path / "evidence.txt"
    data.write_text("evidence")
    query, reply = tmp_path / "q.tsq", tmp_path / "r.tsr"
    subprocess.run(
        ["openssl", "ts", "-query", "-data", str(data), "-sha256", "-cert", "-out", str(query)],
        check=True,
        timeout=30,
    )
    status, headers, body = _curl(
        "-X", "POST", f"{suite.url}/v1/timestamp", "-H", f"Authorization: Bearer {key}",
        "-H", "Content-Type: application/timestamp-query", "--data-binary", f"@{query}",
    )  # fmt: skip
    assert status == 200, body
    assert headers["content-type"] == "application/timestamp-reply"
    reply.write_bytes(body)
    status, _, keys_body = _curl(f"{suite.url}/v1/keys", "-H", f"Authorization: Bearer {key}")
    assert status == 200
    published = json.loads(keys_body)
    roots = tmp_path / "roots.pem"
    roots.write_text("".join(published["certificateChainPem"]))
    tsa = tmp_path / "tsa.pem"
    tsa.write_text(
        "".join(
            k["certificatePem"] for k in published["publicKeys"] if k["purpose"] == "KEY_PURPOSE_TIMESTAMP"
        )
    )
    verify = subprocess.run(
        ["openssl", "ts", "-verify", "-data", str(data), "-in", str(reply),
         "-CAfile", str(roots), "-untrusted", str(tsa)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "Verification: OK" in verify.stdout
    wrong_type, _, _ = _curl(
        "-X", "POST", f"{suite.url}/v1/timestamp", "-H", f"Authorization: Bearer {key}",
        "-H", "Content-Type: application/octet-stream", "--data-binary", f"@{query}",
    )  # fmt: skip
    assert wrong_type == 400


# --- personal data at rest: files, PostgreSQL's data directory and WAL, Redis -------------------


def test_personal_values_sent_through_the_gateway_are_nowhere_in_clear(
    suite: UpSuite, idp: IdentityProvider
) -> None:
    """Every byte the suite keeps is read back and searched for the values sent: the data
    directory (SQLite files, logs, keys) on either backend; on PostgreSQL also every file of the
    server after a CHECKPOINT (data files, WAL), a pg_dump, and every key and value in Redis.
    Values are unique to this run, because the PostgreSQL and Redis servers are shared."""
    marker = uuid.uuid4().hex[:12]
    values = {
        "subject": f"zoe.{marker}@corp.example",
        "summary": f"Zoë opened the lure {marker}-summary",
        "details": f"https://lure.example/{marker}-details",
        "note": f"Zoë fell for it again {marker}-note",
        "caller": f"erin.{marker}@idp.example",  # a JWT subject is a person too
    }
    key = suite.create_key("admin")
    event_id = str(uuid.uuid4())
    with httpx.Client(base_url=suite.url, timeout=30) as http:
        posted = http.post(
            "/v1/events",
            json={
                "eventId": event_id,
                "type": "phishing.clicked",
                "source": "plaintext-check",
                "subject": values["subject"],
                "occurredAt": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
                "severity": "SEVERITY_MEDIUM",
                "summary": values["summary"],
                "details": {"url": values["details"]},
            },
            headers={"Authorization": f"Bearer {idp.token(sub=values['caller'], roles=['admin'])}"},
        )
        assert posted.status_code == 200, posted.text
        labelled = http.post(
            f"/v1/events/{event_id}:label",
            json={"label": "LABEL_TRUE_POSITIVE", "note": values["note"]},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert labelled.status_code == 200, labelled.text
        read = http.get(f"/v1/events/{event_id}", headers={"Authorization": f"Bearer {key}"}).json()
        # Stored and readable, so the search below looks for something that was really kept.
        assert (read["subject"], read["summary"], read["details"], read["metadata"]["labelNote"]) == (
            values["subject"],
            values["summary"],
            {"url": values["details"]},
            values["note"],
        )

    wanted = needles(values.values())
    files = [path for path in sorted(suite.data_dir.rglob("*")) if path.is_file()]
    leaks = {f"data dir: {path.relative_to(suite.data_dir)}": scan_file(path, wanted) for path in files}
    if suite.backend.postgres:
        url = suite.backend.database_url
        dump = pg_dump(url)
        assert b"awareness_ingest" in dump and b"awareness_gdpr" in dump  # the dump covers the stores
        leaks["pg_dump"] = holding(dump, wanted)
        for path, found in postgres_files_holding(url, values.values()).items():
            leaks[f"postgres: {path}"] = found
        for name, found in redis_holding(suite.backend.redis_url, values.values()).items():
            leaks[f"redis: {name}"] = found
        # The gateway did keep its rate-limit state there, so Redis was really in the path.
        assert _redis_keys(suite.backend), "the gateway kept nothing in Redis"
    leaks = {where: found for where, found in leaks.items() if found}
    assert not leaks, leaks


def _redis_keys(backend: Backend) -> list[bytes]:
    import redis

    client = redis.Redis.from_url(backend.redis_url, socket_timeout=5)
    try:
        return list(client.scan_iter(match=f"{backend.redis_key_prefix}*", count=1000))
    finally:
        client.close()


# --- the OpenAPI contract under fuzzing ------------------------------------------------------


def test_schemathesis_finds_no_server_error_and_no_schema_violation(suite: UpSuite, tmp_path: Path) -> None:
    """Bounded run: a few examples per operation, a total time budget.

    Allowed statuses for `not_a_server_error`: every 2xx-4xx, and 501, which backends whose
    issue has not landed answer (UNIMPLEMENTED is a declared, honest response, not a crash).
    Every 500, 502, 503 and 504 still fails the run.

    Excluded: POST /v1/models:train, a synchronous, minutes-long CPU job (grid-searched
    training) that has nothing to fuzz beyond its validation and would spend the whole
    budget training on a 2-core runner; its validation is the scoring service's tests' job.

    Hypothesis's `filter_too_much` health check is off: it says the generator threw away
    most candidates for a path parameter (it failed GET /v1/keys/{key} in one run of several),
    which is about the generator, not the API; the operation is still called with what it made.
    """
    key = suite.create_key("admin")
    config = tmp_path / "schemathesis.toml"
    config.write_text('[checks.not_a_server_error]\nexpected-statuses = ["2XX", "3XX", "4XX", "501"]\n')
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "st"), "--config-file", str(config),
            "run", f"{suite.url}/openapi.json",
            "-H", f"Authorization: Bearer {key}",
            "--checks", "not_a_server_error,response_schema_conformance",
            "--phases", "examples,coverage,fuzzing",
            "--max-examples", "5", "--max-time", "150", "--workers", "1", "--seed", "20241",
            "--request-timeout", "20", "--no-color", "--exclude-path", "/v1/models:train",
            "--suppress-health-check", "filter_too_much",
        ],
        env={**suite.env, "SCHEMATHESIS_HOOKS": "tests.gateway.schemathesis_hooks"},
        capture_output=True, text=True, timeout=400, cwd=REPO,
    )  # fmt: skip
    failures = result.stdout.partition("= FAILURES =")[2].partition("= WARNINGS =")[0]
    assert result.returncode == 0, (failures or result.stdout[-8000:]) + result.stderr[-3000:] + suite.logs()
