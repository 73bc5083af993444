"""Every label of every gateway metric comes from a closed set, whatever the request says."""

from __future__ import annotations

import uuid

from services.gateway.middleware import KNOWN_METHODS, OTHER_METHOD, UNMATCHED
from services.runtime import auth
from tests.gateway.conftest import Harness, bearer, create_key

# Routes the app marks besides the contract templates.
SPECIAL_ROUTES = {
    "/health/live",
    "/health/ready",
    "/health/dependencies",
    "/metrics",
    "/openapi.json",
    "/v1/timestamp",
    "/v1/integrations/gophish",
}


def _labels(harness: Harness) -> list[tuple[str, dict[str, str]]]:
    registry = harness.app.state.gateway.metrics.base.registry
    return [(sample.name, dict(sample.labels)) for family in registry.collect() for sample in family.samples]


async def test_no_label_value_is_derived_from_the_request(gateway: Harness) -> None:
    key = create_key(gateway.env, "admin")
    tokens = [uuid.uuid4().hex for _ in range(6)]
    a, b, c, d, e, f = tokens
    for headers in ({}, bearer(key), bearer(f"awk_{a}_{b}")):
        for method in ("FOO", f"X{c}".upper(), "GET", "POST", "PROPFIND"):
            for path in (
                f"/v1/events/{a}/x/{b}",
                f"/v1/events/{c}",
                f"/{d}",
                f"/health/live/{e}",
                "/v1/events",
            ):
                await gateway.client.request(method, path, headers=headers)
        await gateway.client.get(f"/v1/{f}:{a}", headers=headers)
    samples = _labels(gateway)
    assert any(name == "awareness_gateway_http_requests_total" for name, _ in samples)

    templates = {route.template.source for route in gateway.app.state.gateway.router.routes}
    allowed = {
        "method": KNOWN_METHODS | {OTHER_METHOD},
        "route": templates | SPECIAL_ROUTES | {UNMATCHED},
        "scope": {"principal", "ip", "global", "auth_failures"},
    }
    seen_methods = set()
    for name, labels in samples:
        for label, value in labels.items():
            assert "FOO" not in value and "PROPFIND" not in value, (name, label, value)
            assert not any(token in value.lower() for token in tokens), (name, label, value)
            if label in allowed and name.startswith("awareness_gateway_http_"):
                assert value in allowed[label], (name, label, value)
            if label == "method" and name.startswith("awareness_gateway_http_"):
                seen_methods.add(value)
    assert OTHER_METHOD in seen_methods  # FOO and PROPFIND were counted, as "other"
    routes = {labels["route"] for name, labels in samples if "route" in labels}
    assert UNMATCHED in routes and "/v1/events" in routes
    assert auth.ROLES  # roles are a closed set too; no label names a principal
    assert not any("apikey:" in value for _, labels in samples for value in labels.values())
