"""Concrete request paths for the gateway's routes, generated from the contracts."""

from __future__ import annotations

from services.gateway.domain.descriptors import (
    HttpRoute,
    build_routes,
    collect_comments,
    import_generated_modules,
    load_descriptor_set,
)
from services.gateway.transcoder import Router


def contract_routes() -> list[HttpRoute]:
    """Every google.api.http route the protos declare, as the gateway builds them."""
    import_generated_modules()
    descriptor_set = load_descriptor_set()
    return build_routes(descriptor_set, collect_comments(descriptor_set))


def concrete_path(route: HttpRoute, router: Router) -> str:
    """A path that ``router`` resolves to ``route`` itself (made-up ids in the variables)."""
    for placeholder in ("zz0", "zz0z"):
        parts = [s.text if s.kind == "literal" else placeholder for s in route.template.segments]
        path = "/" + "/".join(parts) + (f":{route.template.verb}" if route.template.verb else "")
        found = router.match(route.http_method, path)
        if not isinstance(found, set) and found is not None and found.route.rpc == route.rpc:
            return path
    raise AssertionError(f"no concrete path reaches {route.rpc} ({route.template.source})")
