"""The router's answers for every contract route, with and without its exact-path index."""

from __future__ import annotations

import dataclasses

from services.gateway.domain.templates import parse_template
from services.gateway.transcoder import RouteMatch, Router
from tests.gateway.routes import concrete_path, contract_routes


def _scanned(router: Router, method: str, path: str) -> RouteMatch | set[str] | None:
    """What the specificity-ordered scan alone answers (the index must never differ from it)."""
    allowed: set[str] = set()
    for route in router.routes:
        bindings = route.template.match(path)
        if bindings is None:
            continue
        if route.http_method == method:
            return RouteMatch(route=route, bindings=bindings)
        allowed.add(route.http_method)
    return allowed or None


def test_every_route_and_its_neighbours_match_as_the_scan_does() -> None:
    routes = contract_routes()
    router = Router(routes)
    literal = [r for r in routes if all(s.kind == "literal" for s in r.template.segments)]
    assert any(r.template.source == "/v1/events" and r.http_method == "POST" for r in literal)
    methods = sorted({r.http_method for r in routes})
    paths = {concrete_path(route, router) for route in routes}
    paths |= {p + "/" for p in paths} | {p.replace("/v1/", "/v1/%65") for p in paths} | {"/", "/v1"}
    for path in sorted(paths):
        for method in methods:
            assert router.match(method, path) == _scanned(router, method, path), (method, path)


def test_a_literal_route_behind_a_more_specific_match_is_not_indexed() -> None:
    routes = contract_routes()
    post_events = next(r for r in routes if r.template.source == "/v1/events" and r.http_method == "POST")
    # A route listed first whose variable also covers /v1/events: the scan picks it, so must match.
    shadowing = dataclasses.replace(
        post_events, rpc="/test.v1.Shadow/Any", template=parse_template("/v1/{name=*}")
    )
    router = Router([shadowing, post_events])
    found = router.match("POST", "/v1/events")
    assert isinstance(found, RouteMatch)
    assert found.route.rpc == "/test.v1.Shadow/Any"
    assert found.bindings == {"name": "events"}
    assert Router([post_events, shadowing]).match("POST", "/v1/events") == RouteMatch(post_events, {})
