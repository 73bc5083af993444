"""The gateway app in process, in front of fake backends (one per service) on real gRPC ports."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import grpc
import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from services.gateway.domain import gophish
from tests.gateway.conftest import (
    EXPORT_CHUNKS,
    GOPHISH_SECRET,
    Backends,
    Harness,
    Seen,
    admin_get,
    bearer,
    create_key,
    run_cli,
    running_gateway,
    status_reason,
)

EVENT: dict[str, Any] = {
    "eventId": "0b7e7c0e-1111-4222-8333-944455556666",
    "type": "phishing.clicked",
    "source": "test",
    "subject": "alice@example.org",
    "occurredAt": "2024-05-01T12:00:00Z",
    "severity": "SEVERITY_HIGH",
    "details": {"campaign_id": "7"},
}


# --- authentication --------------------------------------------------------------------


async def test_missing_credentials_get_401_with_a_bearer_challenge(gateway: Harness) -> None:
    response = await gateway.client.get("/v1/events")
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    body = response.json()
    assert body["code"] == grpc.StatusCode.UNAUTHENTICATED.value[0]
    assert status_reason(body) == "NO_CREDENTIALS"


@pytest.mark.parametrize(
    "credential",
    ["awk_0123456789abcdef_not-the-secret", "awk_garbage", "not-a-key-at-all", "awk_0123456789ABCDEF_x"],
)
async def test_unknown_or_malformed_keys_get_401(gateway: Harness, credential: str) -> None:
    create_key(gateway.env, "admin")  # a real key exists; these are not it
    response = await gateway.client.get("/v1/events", headers=bearer(credential))
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


async def test_right_id_with_wrong_secret_gets_401(gateway: Harness) -> None:
    key = create_key(gateway.env, "admin")
    forged = key.rsplit("_", 1)[0] + "_" + "A" * 43
    response = await gateway.client.get("/v1/events", headers=bearer(forged))
    assert response.status_code == 401
    assert status_reason(response.json()) == "INVALID_CREDENTIALS"


async def test_revoked_key_gets_401(gateway: Harness) -> None:
    # Revoked before this gateway verified it, so no cached entry: refused at once.
    # (A cached key's revocation is covered in test_hotpath.py.)
    key = create_key(gateway.env, "analyst")
    assert run_cli(gateway.env, "keys", "revoke", key.split("_")[1])[0] == 0
    response = await gateway.client.get("/v1/events", headers=bearer(key))
    assert response.status_code == 401
    assert status_reason(response.json()) == "KEY_REVOKED"


async def test_expired_key_gets_401(gateway: Harness) -> None:
    key = create_key(gateway.env, "analyst", expires_in_days=1)
    assert (await gateway.client.get("/v1/events", headers=bearer(key))).status_code == 200
    from datetime import UTC, datetime, timedelta

    state = gateway.app.state.gateway
    state.admission.authenticator._clock = lambda: datetime.now(UTC) + timedelta(days=2)
    response = await gateway.client.get("/v1/events", headers=bearer(key))
    assert response.status_code == 401
    assert status_reason(response.json()) == "KEY_EXPIRED"


def _jwks(tmp_path: Path) -> tuple[Any, Path]:
    private = ec.generate_private_key(ec.SECP256R1())
    public_jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(private.public_key()))
    public_jwk.update({"kid": "test-key", "alg": "ES256", "use": "sig"})
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [public_jwk]}))
    return private, path


def _token(private: Any, **claims: Any) -> str:
    now = int(time.time())
    payload = {"iss": "https://idp.test", "aud": "awareness", "sub": "carol", "iat": now, "exp": now + 300}
    payload.update(claims)
    return jwt.encode(payload, private, algorithm="ES256", headers={"kid": "test-key"})


@pytest.fixture
async def jwt_gateway(tmp_path: Path, backend: Backends, seen: Seen) -> Any:
    private, path = _jwks(tmp_path)
    async with running_gateway(
        tmp_path,
        backend,
        seen,
        AWARENESS_GATEWAY_JWKS_FILE=str(path),
        AWARENESS_GATEWAY_JWT_ISSUER="https://idp.test",
        AWARENESS_GATEWAY_JWT_AUDIENCE="awareness",
    ) as harness:
        yield harness, private


async def test_jwt_with_roles_claim_is_accepted(jwt_gateway: tuple[Harness, Any]) -> None:
    harness, private = jwt_gateway
    response = await harness.client.get("/v1/events", headers=bearer(_token(private, roles=["analyst"])))
    assert response.status_code == 200
    assert harness.seen.principals[-1].subject == "jwt:carol"
    assert harness.seen.principals[-1].roles == frozenset({"analyst"})


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"aud": "someone-else"}, "BAD_AUDIENCE"),
        ({"iss": "https://evil.test"}, "BAD_ISSUER"),
        ({"exp": int(time.time()) - 3600}, "TOKEN_EXPIRED"),
    ],
)
async def test_jwt_with_wrong_audience_issuer_or_expiry_gets_401(
    jwt_gateway: tuple[Harness, Any], claims: dict[str, Any], reason: str
) -> None:
    harness, private = jwt_gateway
    response = await harness.client.get(
        "/v1/events", headers=bearer(_token(private, roles=["admin"], **claims))
    )
    assert response.status_code == 401
    assert status_reason(response.json()) == reason
    assert "invalid_token" in response.headers["www-authenticate"]


async def test_jwt_signed_by_another_key_gets_401(jwt_gateway: tuple[Harness, Any]) -> None:
    harness, _ = jwt_gateway
    stranger = ec.generate_private_key(ec.SECP256R1())
    response = await harness.client.get("/v1/events", headers=bearer(_token(stranger, roles=["admin"])))
    assert response.status_code == 401


async def test_jwt_cannot_claim_the_service_role(jwt_gateway: tuple[Harness, Any]) -> None:
    harness, private = jwt_gateway
    response = await harness.client.get("/v1/events", headers=bearer(_token(private, roles=["service"])))
    assert response.status_code == 403


# --- authorization and the principal reaching the service ---------------------------------


async def test_missing_permission_gets_403_naming_it(gateway: Harness) -> None:
    key = create_key(gateway.env, "auditor")  # can read events, cannot write them
    response = await gateway.client.post("/v1/events", json=EVENT, headers=bearer(key))
    assert response.status_code == 403
    body = response.json()
    assert status_reason(body) == "MISSING_PERMISSION"
    assert body["details"][0]["metadata"]["permission"] == "ingest:write"
    assert gateway.seen.requests == []  # refused before any backend call


async def test_principal_and_roles_travel_to_the_service(gateway: Harness) -> None:
    key = create_key(gateway.env, "integration")
    response = await gateway.client.post("/v1/events", json=EVENT, headers=bearer(key))
    assert response.status_code == 200, response.text
    principal = gateway.seen.principals[-1]
    assert principal.subject == f"apikey:{key.split('_')[1]}"
    assert principal.roles == frozenset({"integration"})


# --- transcoding ----------------------------------------------------------------------


async def test_body_field_mapping_and_proto3_json_response(gateway: Harness) -> None:
    key = create_key(gateway.env, "admin")
    response = await gateway.client.post("/v1/events", json=EVENT, headers=bearer(key))
    assert response.status_code == 200
    assert response.json() == {"receipt": {"eventId": EVENT["eventId"], "state": "STATE_ACCEPTED"}}
    stored = gateway.seen.events[EVENT["eventId"]]
    assert stored.severity == 4  # SEVERITY_HIGH, given by name
    assert stored.occurred_at.seconds == 1714564800
    assert dict(stored.details) == {"campaign_id": "7"}
    again = await gateway.client.post("/v1/events", json=EVENT, headers=bearer(key))
    assert again.json()["replayed"] is True


async def test_path_variable_and_not_found_status_with_details(gateway: Harness) -> None:
    key = create_key(gateway.env, "admin")
    await gateway.client.post("/v1/events", json=EVENT, headers=bearer(key))
    found = await gateway.client.get(f"/v1/events/{EVENT['eventId']}", headers=bearer(key))
    assert found.status_code == 200
    assert found.json()["name"] == f"events/{EVENT['eventId']}"
    missing = await gateway.client.get("/v1/events/nope", headers=bearer(key))
    assert missing.status_code == 404
    body = missing.json()
    assert body["code"] == 5
    assert status_reason(body) == "EVENT_NOT_FOUND"
    assert body["details"][0]["metadata"] == {"name": "events/nope"}


async def test_custom_verb_route_and_failed_precondition_maps_to_400_with_violations(
    gateway: Harness,
) -> None:
    key = create_key(gateway.env, "admin")
    response = await gateway.client.post("/v1/policies/p1:approve", json={"etag": "e1"}, headers=bearer(key))
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert status_reason(body) == "POLICY_NOT_IN_REVIEW"
    bad_request = next(d for d in body["details"] if d["@type"].endswith("BadRequest"))
    assert bad_request["fieldViolations"] == [{"field": "name", "description": "policy is a DRAFT"}]
    assert gateway.seen.requests[-1].name == "policies/p1"


async def test_nested_path_variable_patch(gateway: Harness) -> None:
    key = create_key(gateway.env, "admin")
    response = await gateway.client.patch(
        "/v1/policies/p9", json={"title": "New", "name": "policies/ignored"}, headers=bearer(key)
    )
    assert response.status_code == 200, response.text
    request = gateway.seen.requests[-1]
    assert request.policy.name == "policies/p9"  # the path wins over the body
    assert request.policy.title == "New"


async def test_query_parameters_enums_timestamps_and_optional_doubles(gateway: Harness) -> None:
    key = create_key(gateway.env, "admin")
    response = await gateway.client.get(
        "/v1/events",
        params={
            "pageSize": "5",
            "label": "LABEL_TRUE_POSITIVE",
            "start_time": "2024-01-01T00:00:00Z",
            "minRiskScore": "0.5",
        },
        headers=bearer(key),
    )
    assert response.status_code == 200, response.text
    request = gateway.seen.requests[-1]
    assert request.page_size == 5
    assert request.label == 1
    assert request.start_time.seconds == 1704067200
    assert request.HasField("min_risk_score") and request.min_risk_score == 0.5


@pytest.mark.parametrize(
    ("params", "field"),
    [({"pageSize": "many"}, "pageSize"), ({"label": "LABEL_NOPE"}, "label"), ({"color": "red"}, "color")],
)
async def test_bad_query_parameters_get_400_naming_the_field(
    gateway: Harness, params: dict[str, str], field: str
) -> None:
    key = create_key(gateway.env, "admin")
    response = await gateway.client.get("/v1/events", params=params, headers=bearer(key))
    assert response.status_code == 400
    violations = next(d for d in response.json()["details"] if d["@type"].endswith("BadRequest"))
    assert violations["fieldViolations"][0]["field"] == field


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"type": "a", "type": "b"}', "type"),
        (b'{"type": "a", "colour": "red"}', "event.colour"),
        (b'{"details": {"k": 1}}', "event.details"),
        (b'{"occurredAt": "yesterday"}', "event.occurredAt"),
    ],
)
async def test_strict_json_refuses_duplicates_unknown_fields_and_bad_values(
    gateway: Harness, body: bytes, field: str
) -> None:
    key = create_key(gateway.env, "admin")
    response = await gateway.client.post(
        "/v1/events", content=body, headers={**bearer(key), "Content-Type": "application/json"}
    )
    assert response.status_code == 400
    violations = next(d for d in response.json()["details"] if d["@type"].endswith("BadRequest"))
    assert violations["fieldViolations"][0]["field"] == field
    assert gateway.seen.requests == []


async def test_non_json_body_gets_415(gateway: Harness) -> None:
    key = create_key(gateway.env, "admin")
    response = await gateway.client.post("/v1/events", content=b"type=x", headers=bearer(key))
    assert response.status_code == 415


async def test_server_streaming_export_is_one_concatenated_document(gateway: Harness) -> None:
    key = create_key(gateway.env, "dpo")
    response = await gateway.client.post(
        "/v1/subjects:export", json={"subject": "alice@example.org"}, headers=bearer(key)
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.content == b"".join(EXPORT_CHUNKS)
    assert json.loads(response.content)["subject"] == "alice@example.org"
    missing = await gateway.client.post(
        "/v1/subjects:export", json={"subject": "nobody@example.org"}, headers=bearer(key)
    )
    assert missing.status_code == 404


async def test_unimplemented_backend_method_gets_501(gateway: Harness) -> None:
    key = create_key(gateway.env, "admin")
    response = await gateway.client.get("/v1/checkpoints/latest", headers=bearer(key))
    assert response.status_code == 501
    assert response.json()["code"] == grpc.StatusCode.UNIMPLEMENTED.value[0]


async def test_unknown_route_404_and_wrong_method_405(gateway: Harness) -> None:
    key = create_key(gateway.env, "admin")
    assert (await gateway.client.get("/v1/nothing-here", headers=bearer(key))).status_code == 404
    wrong = await gateway.client.delete("/v1/events", headers=bearer(key))
    assert wrong.status_code == 405
    assert set(wrong.headers["allow"].replace(" ", "").split(",")) == {"GET", "POST"}
    assert wrong.json()["code"] == 12


async def test_internal_methods_are_not_routed(gateway: Harness) -> None:
    key = create_key(gateway.env, "admin")
    paths = set(gateway.app.state.gateway.openapi["paths"])
    rpcs = {r.rpc for r in gateway.app.state.gateway.router.routes}
    assert "/awareness.gdpr.v1.GdprService/GetSubjectKeys" not in rpcs
    assert "/awareness.ingest.v1.IngestService/ListSubjectRecords" not in rpcs
    assert not any("SubjectKeys" in p for p in paths)
    response = await gateway.client.post("/v1/subjects:getKeys", json={}, headers=bearer(key))
    assert response.status_code == 404


async def test_backend_down_gives_503_then_breaker_open_503(tmp_path: Path, seen: Seen) -> None:
    from tests.conftest import free_port

    async with running_gateway(
        tmp_path,
        f"127.0.0.1:{free_port()}",
        seen,
        AWARENESS_BREAKER_FAIL_MAX="1",
        AWARENESS_CALL_TIMEOUT_SECONDS="1",
    ) as harness:
        key = create_key(harness.env, "admin")
        first = await harness.client.post("/v1/events", json=EVENT, headers=bearer(key))
        assert first.status_code == 503
        second = await harness.client.post("/v1/events", json=EVENT, headers=bearer(key))
        assert second.status_code == 503
        assert status_reason(second.json()) == "CIRCUIT_OPEN"


# --- hardening ------------------------------------------------------------------------


async def test_security_headers_and_no_server_banner(gateway: Harness) -> None:
    response = await gateway.client.get("/health/live")
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert "default-src 'none'" in response.headers["content-security-policy"]
    assert "server" not in response.headers
    api = await gateway.client.get("/v1/events")
    assert api.headers["cache-control"] == "no-store"
    assert (
        "access-control-allow-origin"
        not in (
            await gateway.client.options(
                "/v1/events", headers={"Origin": "https://x.test", "Access-Control-Request-Method": "GET"}
            )
        ).headers
    )


async def test_cors_only_for_configured_origins(tmp_path: Path, backend: Backends, seen: Seen) -> None:
    async with running_gateway(
        tmp_path, backend, seen, AWARENESS_GATEWAY_CORS_ORIGINS="https://ui.test"
    ) as harness:
        headers = {"Access-Control-Request-Method": "GET"}
        allowed = await harness.client.options("/v1/events", headers={"Origin": "https://ui.test", **headers})
        assert allowed.headers["access-control-allow-origin"] == "https://ui.test"
        refused = await harness.client.options(
            "/v1/events", headers={"Origin": "https://evil.test", **headers}
        )
        assert "access-control-allow-origin" not in refused.headers


async def test_body_over_the_limit_gets_413(tmp_path: Path, backend: Backends, seen: Seen) -> None:
    async with running_gateway(tmp_path, backend, seen, AWARENESS_GATEWAY_MAX_BODY_BYTES="1000") as harness:
        key = create_key(harness.env, "admin")
        big = {**EVENT, "summary": "x" * 2000}
        response = await harness.client.post("/v1/events", json=big, headers=bearer(key))
        assert response.status_code == 413
        assert status_reason(response.json()) == "BODY_TOO_LARGE"

        async def chunks() -> Any:  # no Content-Length: the limit is enforced while reading
            for _ in range(5):
                yield b" " * 400

        streamed = await harness.client.post(
            "/v1/events", content=chunks(), headers={**bearer(key), "Content-Type": "application/json"}
        )
        assert streamed.status_code == 413


async def test_unexpected_error_is_500_status_json_without_trace(gateway: Harness, monkeypatch: Any) -> None:
    key = create_key(gateway.env, "admin")

    def explode(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("secret internals")

    monkeypatch.setattr("services.gateway.app.parse_http_request", explode)
    response = await gateway.client.get("/v1/events", headers=bearer(key))
    assert response.status_code == 500
    body = response.json()
    assert body["code"] == 13
    assert "secret internals" not in response.text
    assert "Traceback" not in response.text
    assert "reference" in body["message"]


# --- time-stamping ----------------------------------------------------------------------


async def _post_timestamp(
    gateway: Harness,
    query: bytes,
    *,
    role: str = "auditor",
    content_type: str = "application/timestamp-query",
) -> httpx.Response:
    """POST /v1/timestamp with a new key of ``role``."""
    key = create_key(gateway.env, role)
    return await gateway.client.post(
        "/v1/timestamp", content=query, headers={**bearer(key), "Content-Type": content_type}
    )


async def test_timestamp_takes_and_returns_raw_der(gateway: Harness) -> None:
    response = await _post_timestamp(gateway, b"\x30\x03\x02\x01\x01")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/timestamp-reply"
    assert response.content == b"reply:\x30\x03\x02\x01\x01"


async def test_timestamp_with_wrong_content_type_gets_400(gateway: Harness) -> None:
    response = await _post_timestamp(gateway, b"\x30\x00", content_type="application/json")
    assert response.status_code == 400
    assert status_reason(response.json()) == "UNSUPPORTED_MEDIA_TYPE"


async def test_timestamp_needs_its_permission(gateway: Harness) -> None:
    response = await _post_timestamp(gateway, b"\x30\x00", role="policy_author")
    assert response.status_code == 403


@pytest.mark.skipif(
    subprocess.run(["which", "openssl"], capture_output=True).returncode != 0, reason="no openssl"
)
async def test_timestamp_accepts_an_openssl_query(gateway: Harness, tmp_path: Path) -> None:
    data = tmp_path / "data.txt"
    data.write_text("hello")
    query = subprocess.run(
        ["openssl", "ts", "-query", "-data", str(data), "-sha256", "-cert"],
        capture_output=True,
        check=True,
        timeout=30,
    ).stdout
    response = await _post_timestamp(gateway, query)
    assert response.status_code == 200
    assert gateway.seen.requests[-1].request == query


# --- GoPhish ----------------------------------------------------------------------------


def _gophish_body(message: str = "Clicked Link") -> bytes:
    return json.dumps(
        {
            "campaign_id": 42,
            "email": "bob@example.org",
            "time": "2024-05-01T10:00:00.123456789Z",
            "message": message,
            "details": '{"payload":{"rid":["abc"]}}',
        }
    ).encode()


async def test_gophish_good_signature_accepted_once_and_redelivery_is_idempotent(gateway: Harness) -> None:
    body = _gophish_body()
    headers = {
        "X-Gophish-Signature": gophish.sign(GOPHISH_SECRET.encode(), body),
        "Content-Type": "application/json",
    }
    first = await gateway.client.post("/v1/integrations/gophish", content=body, headers=headers)
    assert first.status_code == 202, first.text
    second = await gateway.client.post("/v1/integrations/gophish", content=body, headers=headers)
    assert second.status_code == 202
    # The same answer both times: the log holds the event once (below).
    assert second.json() == first.json() == {"status": "accepted", "eventId": first.json()["eventId"]}
    assert len(gateway.seen.events) == 1
    event = next(iter(gateway.seen.events.values()))
    assert (event.type, event.source, event.subject) == ("phishing.clicked", "gophish", "bob@example.org")
    assert gateway.seen.principals[-1].subject == "integration:gophish"
    assert gateway.seen.principals[-1].roles == frozenset({"integration"})


@pytest.mark.parametrize(
    "signature",
    [None, "", "sha256=" + "0" * 64, "sha1=abc", "sha256=zz"],
)
async def test_gophish_bad_signature_refused(gateway: Harness, signature: str | None) -> None:
    body = _gophish_body()
    headers = {"Content-Type": "application/json"}
    if signature is not None:
        headers["X-Gophish-Signature"] = signature
    response = await gateway.client.post("/v1/integrations/gophish", content=body, headers=headers)
    assert response.status_code == 401
    assert gateway.seen.events == {}


async def test_gophish_signature_over_another_body_refused(gateway: Harness) -> None:
    signed = _gophish_body("Email Opened")
    sent = _gophish_body("Submitted Data")
    headers = {"X-Gophish-Signature": gophish.sign(GOPHISH_SECRET.encode(), signed)}
    response = await gateway.client.post("/v1/integrations/gophish", content=sent, headers=headers)
    assert response.status_code == 401


async def test_gophish_unmapped_event_is_acknowledged_and_ignored(gateway: Harness) -> None:
    body = _gophish_body("Campaign Created")
    headers = {"X-Gophish-Signature": gophish.sign(GOPHISH_SECRET.encode(), body)}
    response = await gateway.client.post("/v1/integrations/gophish", content=body, headers=headers)
    assert response.status_code == 202
    assert response.json() == {"status": "ignored"}
    assert gateway.seen.events == {}


# --- health, metrics, OpenAPI -------------------------------------------------------------


async def test_health_endpoints_and_metrics(gateway: Harness) -> None:
    assert (await gateway.client.get("/health/live")).status_code == 200
    ready = await gateway.client.get("/health/ready")
    assert ready.status_code == 200, ready.text
    dependencies = (await admin_get(gateway, "/health/dependencies")).json()
    assert dependencies["ingest"] == {"health": "SERVING", "breaker": "closed"}
    assert dependencies["key_store"]["health"] == "SERVING"
    assert dependencies["rate_limiter"]["backend"] == "in-process"
    await gateway.client.get("/v1/events")
    text = (await admin_get(gateway, "/metrics")).text
    assert 'awareness_gateway_http_requests_total{method="GET",route="/v1/events",status="401"}' in text
    assert "awareness_gateway_http_request_duration_seconds_bucket" in text


async def test_ready_stays_200_when_a_backend_is_down_and_names_it(tmp_path: Path, seen: Seen) -> None:
    # One backend's outage must not take the whole API out of the load balancer.
    from tests.conftest import free_port

    async with running_gateway(tmp_path, f"127.0.0.1:{free_port()}", seen) as harness:
        response = await harness.client.get("/health/ready")
        assert response.status_code == 200
        assert "ingest" in response.json()["degraded_backends"]
        dependencies = (await admin_get(harness, "/health/dependencies")).json()
        assert dependencies["ingest"]["health"].startswith("UNREACHABLE")


async def test_openapi_is_served(gateway: Harness) -> None:
    document = (await gateway.client.get("/openapi.json")).json()
    assert document["openapi"].startswith("3.1")
    assert "/v1/events" in document["paths"]
