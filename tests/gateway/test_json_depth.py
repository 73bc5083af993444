"""JSON nesting is bounded: a body too deep for the parser is a 400 with a field violation."""

from __future__ import annotations

from typing import Any

import pytest

from services.gateway.domain import gophish
from services.gateway.domain.transcode import MAX_JSON_DEPTH, RequestError, strict_json_loads
from tests.gateway.conftest import GOPHISH_SECRET, Harness, bearer, create_key, status_reason
from tests.gateway.routes import concrete_path

DEEP = b"[" * 100_000 + b"]" * 100_000  # json and protobuf raise RecursionError on this


def nested(levels: int) -> bytes:
    return b'{"a":' * (levels - 1) + b"{}" + b"}" * (levels - 1)


def test_the_depth_limit_is_exact_and_never_overflows_the_stack() -> None:
    assert strict_json_loads(nested(MAX_JSON_DEPTH))
    assert strict_json_loads(b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH) is not None
    for body in (nested(MAX_JSON_DEPTH + 1), b"[" * 65 + b"]" * 65, DEEP):
        with pytest.raises(RequestError) as refused:
            strict_json_loads(body)
        assert refused.value.field == "body"
    # Brackets inside strings are not nesting.
    assert strict_json_loads(b'{"a": "' + b"[" * 1000 + b'"}') == {"a": "[" * 1000}


def _assert_too_deep(response: Any) -> None:
    assert response.status_code == 400, (response.status_code, response.text[:200])
    body = response.json()
    assert body["code"] == 3  # INVALID_ARGUMENT
    assert status_reason(body) == "INVALID_REQUEST"
    violations = next(d for d in body["details"] if d["@type"].endswith("google.rpc.BadRequest"))
    assert violations["fieldViolations"][0]["field"] == "body"
    assert "nested deeper" in violations["fieldViolations"][0]["description"]


async def test_every_json_body_route_answers_400_to_a_body_too_deep_for_the_parser(
    gateway: Harness,
) -> None:
    state = gateway.app.state.gateway
    key = create_key(gateway.env, "admin")
    routes = [r for r in state.router.routes if r.body]
    assert routes, "the contracts declare routes with a JSON body"
    for route in routes:
        path = concrete_path(route, state.router)
        for body in (DEEP, nested(MAX_JSON_DEPTH + 1)):
            response = await gateway.client.request(
                route.http_method,
                path,
                content=body,
                headers={**bearer(key), "Content-Type": "application/json"},
            )
            _assert_too_deep(response)


async def test_the_gophish_webhook_answers_400_to_a_body_too_deep_for_the_parser(gateway: Harness) -> None:
    headers = {gophish.SIGNATURE_HEADER: gophish.sign(GOPHISH_SECRET.encode(), DEEP)}
    response = await gateway.client.post("/v1/integrations/gophish", content=DEEP, headers=headers)
    _assert_too_deep(response)
    assert not gateway.seen.requests  # nothing reached the backends
