"""What the protos say about a method: its required permission, the services that may call it,
its idempotency, and the action its access records name.

All are method options in the contracts, so the gateway and every service read one
source of truth instead of keeping their own tables.
"""

from __future__ import annotations

import functools

from google.protobuf import descriptor, descriptor_pb2, descriptor_pool

UNDECLARED = "undeclared"


def _ensure_loaded() -> None:
    # Importing the generated modules registers their descriptors in the default pool.
    from awareness.analytics.v1 import analytics_pb2  # noqa: F401
    from awareness.api.v1 import annotations_pb2  # noqa: F401
    from awareness.gdpr.v1 import gdpr_pb2  # noqa: F401
    from awareness.ingest.v1 import ingest_pb2  # noqa: F401
    from awareness.policy.v1 import policy_pb2  # noqa: F401
    from awareness.scoring.v1 import scoring_pb2  # noqa: F401
    from awareness.signing.v1 import signing_pb2  # noqa: F401


def find_method(method: str) -> descriptor.MethodDescriptor | None:
    """The descriptor of ``/package.Service/Method``, if the contracts define it."""
    _ensure_loaded()
    service_name, _, method_name = method.lstrip("/").rpartition("/")
    try:
        service = descriptor_pool.Default().FindServiceByName(service_name)
    except KeyError:
        return None
    found: descriptor.MethodDescriptor | None = service.methods_by_name.get(method_name)
    return found


@functools.lru_cache(maxsize=512)
def required_permission(method: str) -> str | None:
    """The declared permission; ``UNDECLARED`` for a contract method without one (fail closed)."""
    from awareness.api.v1 import annotations_pb2

    found = find_method(method)
    if found is None:
        return None
    options = found.GetOptions()
    if not options.HasExtension(annotations_pb2.required_permission):
        return UNDECLARED
    value: str = options.Extensions[annotations_pb2.required_permission]
    return value


@functools.lru_cache(maxsize=512)
def is_idempotent(method: str) -> bool:
    """True when the proto marks the method NO_SIDE_EFFECTS or IDEMPOTENT (safe to retry)."""
    found = find_method(method)
    if found is None:
        return False
    return found.GetOptions().idempotency_level in (
        descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS,
        descriptor_pb2.MethodOptions.IDEMPOTENT,
    )


@functools.lru_cache(maxsize=512)
def allowed_callers(method: str) -> frozenset[str] | None:
    """The services that may call the method directly; None when the method names none."""
    from awareness.api.v1 import annotations_pb2

    found = find_method(method)
    if found is None:
        return None
    names = list(found.GetOptions().Extensions[annotations_pb2.allowed_callers])
    return frozenset(names) if names else None


@functools.lru_cache(maxsize=512)
def audit_action(method: str) -> str | None:
    """The action an access record names for the method; None when the method is not audited."""
    from awareness.api.v1 import annotations_pb2

    found = find_method(method)
    if found is None:
        return None
    value: str = found.GetOptions().Extensions[annotations_pb2.audit_action]
    return value or None
